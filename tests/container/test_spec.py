"""config.json validation: each bad field is named with the reason (no root needed)."""

from __future__ import annotations

import copy
import json

import pytest

from virtkit.container.spec import default_spec, load_bundle, validate
from virtkit.core.errors import InvalidArgument, NotFound


def _bad(mutate, match: str) -> None:
    spec = default_spec()
    mutate(spec)
    with pytest.raises(InvalidArgument, match=match):
        validate(spec)


def test_default_spec_is_valid_and_rootless_variant_too():
    validate(default_spec())
    rl = default_spec(rootless=True, args=["echo", "hi"], terminal=True)
    validate(rl)
    assert rl["process"]["args"] == ["echo", "hi"] and rl["process"]["terminal"] is True
    assert {"type": "network"} not in rl["linux"]["namespaces"]


@pytest.mark.parametrize("mutate, match", [
    (lambda s: s.pop("ociVersion"), "ociVersion: missing"),
    (lambda s: s.update(ociVersion="2.0.0"), "ociVersion: unsupported"),
    (lambda s: s.pop("process"), "process: missing"),
    (lambda s: s.pop("root"), "root: missing"),
    (lambda s: s["process"].update(args=[]), r"process.args: must be a non-empty list"),
    (lambda s: s["linux"]["namespaces"].append({"type": "foo"}),
     r"linux.namespaces\[6\].type: unknown namespace type 'foo'"),
    (lambda s: s["linux"]["namespaces"].append({"type": "pid"}), r"linux.namespaces\[6\].type: duplicate"),
    (lambda s: s["linux"]["namespaces"].append({"type": "user"}), "linux.uidMappings: a new user namespace"),
    (lambda s: s["linux"].update(uidMappings=[{"containerID": 0, "hostID": 1, "size": 1}]),
     "linux.uidMappings: set but there is no user namespace"),
    (lambda s: s["process"]["rlimits"].append({"type": "RLIMIT_BOGUS", "soft": 1, "hard": 1}),
     r"process.rlimits\[1\].type: unknown rlimit"),
    (lambda s: s["process"]["rlimits"].append({"type": "RLIMIT_CORE", "soft": 2, "hard": 1}),
     "soft limit is above the hard limit"),
    (lambda s: s["mounts"].append({"destination": "relative/path", "type": "tmpfs"}),
     r"mounts\[7\].destination: must be an absolute path"),
    (lambda s: s["process"].update(cwd="relative"), "process.cwd: must be an absolute path"),
    (lambda s: s["process"].update(env=["NOEQUALS"]), r"process.env\[0\]: must be KEY=VALUE"),
    (lambda s: s["process"]["user"].update(uid=-1), "process.user.uid"),
    (lambda s: s.update(hooks={"prestart": [{"path": "rel"}]}), r"hooks.prestart\[0\].path: must be an absolute"),
    (lambda s: s.update(hooks={"bogus": []}), "hooks.bogus: unknown hook kind"),
    (lambda s: s["linux"].update(rootfsPropagation="sideways"), "linux.rootfsPropagation"),
    (lambda s: s["linux"]["maskedPaths"].append("proc/x"), r"linux.maskedPaths\[10\]: must be an absolute"),
])
def test_validate_names_the_field(mutate, match):
    _bad(mutate, match)


def test_overlapping_id_mappings_rejected():
    spec = default_spec()
    spec["linux"]["namespaces"].append({"type": "user"})
    spec["linux"]["uidMappings"] = [{"containerID": 0, "hostID": 1000, "size": 10},
                                    {"containerID": 5, "hostID": 5000, "size": 10}]
    spec["linux"]["gidMappings"] = copy.deepcopy(spec["linux"]["uidMappings"][:1])
    with pytest.raises(InvalidArgument, match="linux.uidMappings: container ID ranges overlap"):
        validate(spec)


def test_load_bundle(tmp_path):
    with pytest.raises(NotFound):
        load_bundle(str(tmp_path))
    (tmp_path / "config.json").write_text("{oops")
    with pytest.raises(InvalidArgument, match="config.json: malformed JSON"):
        load_bundle(str(tmp_path))
    (tmp_path / "config.json").write_text(json.dumps(default_spec()))
    with pytest.raises(InvalidArgument, match="root.path: .* is not a directory"):
        load_bundle(str(tmp_path))
    (tmp_path / "rootfs").mkdir()
    spec = load_bundle(str(tmp_path))
    assert spec["root"]["path"] == str(tmp_path / "rootfs")


def test_parse_mount_options():
    from virtkit.container import rootfs
    from virtkit.container import syscalls as sc

    flags, prop, data = rootfs.parse_options(["rbind", "ro", "nosuid", "rslave", "mode=755", "size=1k"])
    assert flags == sc.MS_BIND | sc.MS_REC | sc.MS_RDONLY | sc.MS_NOSUID
    assert prop == [sc.MS_SLAVE | sc.MS_REC]
    assert data == "mode=755,size=1k"
    assert rootfs.parse_options(["ro", "rw"])[0] == 0
