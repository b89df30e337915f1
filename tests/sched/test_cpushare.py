"""sched.cpushare: weight/cap/pinning validation and the cgroup v1/v2 settings they become (pure, runs anywhere)."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from virtkit.core.errors import InvalidArgument
from virtkit.sched.cpushare import (
    CpuRequest,
    CpuSettings,
    format_cpu_list,
    parse_cpu_list,
    plan,
    validate_cap,
    validate_cpuset,
    validate_weight,
    weight_to_shares,
)

TWO = frozenset({0, 1})


def test_weight_to_shares_matches_the_kernels_scale():
    # v2 cpu.weight W is the CFS group weight W*1024/100: the default maps onto the default, ends clamp
    assert weight_to_shares(100) == 1024
    assert weight_to_shares(1) == 10
    assert weight_to_shares(10000) == 102400
    assert weight_to_shares(200) == 2048
    assert weight_to_shares(50) == 512


@given(st.integers(1, 5000))
def test_weight_ratios_survive_as_share_ratios(w):
    # what makes "weights 2:1 get 2:1" true on v1 as on v2
    assert abs(weight_to_shares(2 * w) / weight_to_shares(w) - 2) < 0.1


@pytest.mark.parametrize("value, message", [
    (0, "cpu_weight: must be between 1 and 10000"),
    (10001, "cpu_weight: must be between 1 and 10000"),
    (-5, "cpu_weight: must be between 1 and 10000"),
    ("x", "cpu_weight: must be an integer"),
    (1.5, "cpu_weight: must be an integer"),
    (True, "cpu_weight: must be an integer"),
])
def test_bad_weights_name_the_field(value, message):
    with pytest.raises(InvalidArgument, match=message):
        validate_weight(value)


def test_weight_accepts_numeric_strings():
    assert validate_weight("300") == 300


@pytest.mark.parametrize("value", [0, -1, 0.001, 2000, "nan", "x", None, True])
def test_bad_caps(value):
    with pytest.raises(InvalidArgument, match="cpus: "):
        validate_cap(value)


@pytest.mark.parametrize("text, cpus", [
    ("0", {0}), ("0-2,4", {0, 1, 2, 4}), (" 1 , 3-3 ", {1, 3}), ("5,1-2", {1, 2, 5}),
])
def test_parse_cpu_list(text, cpus):
    assert parse_cpu_list(text) == cpus


@pytest.mark.parametrize("text, message", [
    ("", "must be a list of CPUs"), ("a", "must be a list of CPUs"), ("-1", "must be a list of CPUs"),
    ("1-", "must be a list of CPUs"), ("3-1", "runs backwards"), ("0,,1", "must be a list of CPUs"),
    ("99999", "beyond any CPU number"),
])
def test_parse_cpu_list_refuses(text, message):
    with pytest.raises(InvalidArgument, match=f"cpuset_cpus: .*{message}"):
        parse_cpu_list(text)


@given(st.frozensets(st.integers(0, 64), min_size=1))
def test_format_and_parse_round_trip(cpus):
    assert parse_cpu_list(format_cpu_list(cpus)) == cpus


def test_format_is_the_shortest_kernel_form():
    assert format_cpu_list({0, 1, 2, 4, 6, 7}) == "0-2,4,6-7"


def test_cpuset_must_be_online_and_is_canonical():
    assert validate_cpuset("1,0", TWO) == "0-1"
    with pytest.raises(InvalidArgument, match=r"cpuset_cpus: CPU 2 not online on this host \(online: 0-1\)"):
        validate_cpuset("2", TWO)
    with pytest.raises(InvalidArgument, match="CPUs 2-3,7 not online"):
        validate_cpuset("0-3,7", TWO)


def test_nothing_asked_writes_nothing():
    settings = plan(CpuRequest(), TWO)
    assert settings == CpuSettings()
    assert settings.controls(1) == [] and settings.controls(2) == [] and settings.oci(1) == {}


def test_v1_files():
    s = plan(CpuRequest(weight=200, cap=0.25, cpuset="1"), TWO)
    assert s.controls(1) == [("cpu.shares", "2048", "cpu_weight"), ("cpu.cfs_period_us", "100000", "cpus"),
                             ("cpu.cfs_quota_us", "25000", "cpus"), ("cpuset.cpus", "1", "cpuset_cpus")]


def test_v2_files():
    s = plan(CpuRequest(weight=200, cap=1.5, cpuset="0-1"), TWO)
    assert s.controls(2) == [("cpu.weight", "200", "cpu_weight"), ("cpu.max", "150000 100000", "cpus"),
                             ("cpuset.cpus", "0-1", "cpuset_cpus")]


def test_small_caps_stay_above_the_kernels_minimum_quota():
    assert plan(CpuRequest(cap=0.01), TWO).quota_us == 1000


def test_oci_v1_uses_shares_and_v2_the_exact_weight():
    s = plan(CpuRequest(weight=300, cap=0.5, cpuset="0"), TWO)
    assert s.oci(1) == {"cpu": {"shares": 3072, "quota": 50000, "period": 100000, "cpus": "0"}}
    # on v2 the runtime would convert an OCI cpu.shares (crun's formula): the weight goes as it is instead
    assert s.oci(2) == {"unified": {"cpu.weight": "300"}, "cpu": {"quota": 50000, "period": 100000, "cpus": "0"}}


def test_reset_writes_the_defaults_for_what_is_not_asked():
    s = plan(CpuRequest(weight=50), TWO, reset=True)
    assert s.controls(1) == [("cpu.shares", "512", "cpu_weight"), ("cpu.cfs_period_us", "100000", "cpus"),
                             ("cpu.cfs_quota_us", "-1", "cpus"), ("cpuset.cpus", "0-1", "cpuset_cpus")]
    assert plan(CpuRequest(), TWO, reset=True).controls(2) == [
        ("cpu.weight", "100", "cpu_weight"), ("cpu.max", "max 100000", "cpus"), ("cpuset.cpus", "0-1", "cpuset_cpus")]


def test_plan_validates_what_it_is_given():
    with pytest.raises(InvalidArgument, match="cpuset_cpus: CPU 3 not online"):
        plan(CpuRequest(cpuset="3"), TWO)
    with pytest.raises(InvalidArgument, match="cpu_weight"):
        plan(CpuRequest(weight=0), TWO)
    # without the host's CPUs (checked at create already) only the form is checked
    assert plan(CpuRequest(cpuset="3"), None).cpus == "3"


def test_from_spec():
    assert CpuRequest.from_spec({"cpus": 0.5, "cpu_weight": 10, "cpuset_cpus": "1"}) == CpuRequest(10, 0.5, "1")
    assert CpuRequest.from_spec({}) == CpuRequest()
