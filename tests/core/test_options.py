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
    ({"image": "b", "memory_swappiness": 101}, "memory_swappiness: must be between 0 and 100"),
    ({"image": "b", "memory_swappiness": "lots"}, "memory_swappiness: not an integer"),
    ({"image": "b", "memory_swappiness": True}, "memory_swappiness: not an integer"),
    ({"image": "b", "oom_kill_disable": "yes"}, "oom_kill_disable: must be true or false"),
    ({"image": "b", "oom_kill_disable": True}, "oom_kill_disable: needs a memory limit"),
    ({"image": "b", "type": "vm", "memory_swappiness": 5}, "memory_swappiness: not supported for VMs"),
    ({"image": "b", "interactive": "yes"}, "interactive: must be true or false"),
    ({"image": "b", "tty": 1}, "tty: must be true or false"),
    ({"image": "b", "tty": True, "console_size": [24]}, r"console_size: must be \[rows, columns\]"),
    ({"image": "b", "tty": True, "console_size": [24, -1]}, "console_size"),
    ({"image": "b", "tty": True, "console_size": [True, 80]}, "console_size"),
    ({"image": "b", "type": "vm", "tty": True}, "tty: not supported for VMs"),
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


def test_memory_tuning_reaches_the_oci_resources():
    from virtkit.container.bundle import resources

    spec = validate_create({"image": "b", "memory": "64M", "memory_swappiness": 0, "oom_kill_disable": True})
    assert resources(spec)["memory"] == {"limit": 64 << 20, "swap": 64 << 20, "swappiness": 0,
                                         "disableOOMKiller": True}
    spec = validate_create({"image": "b", "memory_swappiness": 30, "oom_kill_disable": False})
    assert resources(spec) == {"memory": {"swappiness": 30}}
    assert "memory" not in resources(validate_create({"image": "b"}))


def test_terminal_options_reach_the_oci_process():
    from virtkit.container.bundle import build_config

    spec = validate_create({"image": "b", "interactive": True, "tty": True, "console_size": [30, 100]})
    assert spec["interactive"] and spec["tty"] and spec["console_size"] == [30, 100]
    config = build_config(instance_id="i", hostname="h", image_config={"config": {"Cmd": ["sh"]}}, spec=spec,
                          lowerdirs=[], instance_dir="/x", cgroup_path="/virtkit-t/i")
    assert config["process"]["terminal"] is True
    assert config["process"]["consoleSize"] == {"height": 30, "width": 100}
    assert "TERM=xterm" in config["process"]["env"]
    plain = validate_create({"image": "b", "console_size": [30, 100]})     # a size without -t is not kept
    assert "console_size" not in plain and "tty" not in plain
    config = build_config(instance_id="i", hostname="h", image_config={"config": {"Cmd": ["sh"]}}, spec=plain,
                          lowerdirs=[], instance_dir="/x", cgroup_path="/virtkit-t/i")
    assert config["process"]["terminal"] is False and "consoleSize" not in config["process"]
