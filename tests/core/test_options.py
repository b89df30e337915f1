"""Validation of create requests: sizes, limits, volumes, capability names, env (no syscalls)."""

import pytest

from virtkit.core.capabilities import effective_set, normalise_caps
from virtkit.core.errors import InvalidArgument
from virtkit.core.options import parse_size, validate_create


def test_sizes():
    assert parse_size("64M", "memory") == 64 << 20
    assert parse_size("1g", "memory") == 1 << 30
    assert parse_size("512MiB", "memory") == 512 << 20
    assert parse_size(4096, "memory") == 4096
    with pytest.raises(InvalidArgument, match="memory: cannot parse size 'lots'"):
        parse_size("lots", "memory")


@pytest.mark.parametrize("req, message", [
    ({"image": "b", "memory": "1M"}, "memory: must be between"),
    ({"image": "b", "cpus": -1}, "cpus: must be between"),
    ({"image": "b", "cpus": "x"}, "cpus: not a number"),
    ({"image": "b", "pids": 0}, "pids: must be between"),
    ({"image": "b", "volumes": ["/tmp:rel"]}, "container path must be absolute"),
    ({"image": "b", "volumes": ["/tmp:/x:rx"]}, "mode must be ro or rw"),
    ({"image": "b", "env": ["=x"]}, "NAME=VALUE"),
    ({"image": "b", "workdir": "rel"}, "workdir: must be an absolute path"),
    ({"image": "b", "name": "-bad"}, "invalid name"),
    ({}, "image: required"),
])
def test_bad_requests(req, message):
    with pytest.raises(InvalidArgument, match=message):
        validate_create(req)


def test_good_request_is_normalised():
    spec = validate_create({"image": "busybox", "memory": "64M", "cpus": "0.5", "volumes": ["/tmp:/data:ro"],
                            "cap_add": ["net_raw"], "command": ["sh"]})
    assert spec["memory"] == 64 << 20 and spec["cpus"] == 0.5
    assert spec["volumes"] == [{"source": "/tmp", "target": "/data", "readonly": True}]
    assert spec["cap_add"] == ["CAP_NET_RAW"]


def test_capability_names_and_docker_rule():
    assert normalise_caps(["net_raw", "CAP_KILL", "all"], "cap_add") == ["CAP_NET_RAW", "CAP_KILL", "ALL"]
    with pytest.raises(InvalidArgument, match="cap_add: unknown capability 'NOPE'"):
        normalise_caps(["NOPE"], "cap_add")
    assert effective_set(["CAP_CHOWN", "CAP_KILL"], ["CAP_NET_RAW"], ["CAP_KILL"]) == ["CAP_CHOWN", "CAP_NET_RAW"]
    assert effective_set(["CAP_CHOWN"], [], ["ALL"]) == []
