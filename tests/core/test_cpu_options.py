"""CPU sharing options of create and update: --cpu-weight, --cpus, --cpuset-cpus (validation, OCI resources)."""

from __future__ import annotations

import pytest

from virtkit.container.bundle import resources
from virtkit.core import options
from virtkit.core.errors import InvalidArgument
from virtkit.core.options import validate_cpu_update, validate_create


@pytest.fixture(autouse=True)
def _two_cpus(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(options, "online_cpus", lambda: frozenset({0, 1}))


def test_create_keeps_weight_and_canonical_pinning():
    spec = validate_create({"image": "b", "cpu_weight": 300, "cpuset_cpus": "1,0", "cpus": 0.5})
    assert (spec["cpu_weight"], spec["cpuset_cpus"], spec["cpus"]) == (300, "0-1", 0.5)
    assert "cpu_weight" not in validate_create({"image": "b"})


@pytest.mark.parametrize("req, message", [
    ({"cpu_weight": 0}, "cpu_weight: must be between 1 and 10000"),
    ({"cpu_weight": "heavy"}, "cpu_weight: must be an integer"),
    ({"cpuset_cpus": "2"}, r"cpuset_cpus: CPU 2 not online on this host \(online: 0-1\)"),
    ({"cpuset_cpus": ""}, "cpuset_cpus: must be a list of CPUs"),
    ({"cpus": -1}, "cpus: must be between 0.01 and 1024"),
    ({"type": "vm", "cpu_weight": 0}, "cpu_weight"),
])
def test_create_refuses(req, message):
    with pytest.raises(InvalidArgument, match=message):
        validate_create({"image": "b", **req})


def test_the_oci_resources_on_each_cgroup_version():
    spec = validate_create({"image": "b", "cpu_weight": 200, "cpuset_cpus": "1", "cpus": 0.25})
    assert resources(spec, 1)["cpu"] == {"shares": 2048, "quota": 25000, "period": 100000, "cpus": "1"}
    v2 = resources(spec, 2)
    assert v2["unified"] == {"cpu.weight": "200"} and "shares" not in v2["cpu"]
    assert "cpu" not in resources(validate_create({"image": "b"}), 1)


def test_update_changes_only_what_is_given():
    spec = {"command": [], "cpus": 0.5, "cpuset_cpus": "1"}
    new = validate_cpu_update(spec, {"cpu_weight": 50, "cpus": None})
    assert new == {**spec, "cpu_weight": 50} and spec == {"command": [], "cpus": 0.5, "cpuset_cpus": "1"}


def test_update_zero_cap_and_empty_pinning_remove_them():
    new = validate_cpu_update({"cpus": 0.5, "cpuset_cpus": "1"}, {"cpus": 0, "cpuset_cpus": ""})
    assert new == {}


@pytest.mark.parametrize("changes, message", [
    ({}, "update: nothing to change"),
    ({"memory": "1G"}, "memory: cannot be changed on an existing instance"),
    ({"cpus": -2}, "cpus: must be between"),
    ({"cpuset_cpus": "0-5"}, "CPUs 2-5 not online"),
    ({"cpu_weight": 99999}, "cpu_weight: must be between"),
])
def test_update_refuses(changes, message):
    with pytest.raises(InvalidArgument, match=message):
        validate_cpu_update({}, changes)
