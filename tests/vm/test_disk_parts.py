"""VM disk options and the guest's disk parameters, without QEMU or root."""

from __future__ import annotations

import base64

import pytest

from virtkit.core.errors import InvalidArgument
from virtkit.core.options import validate_create
from virtkit.vm.qemu import guestroot
from virtkit.vm.qemu.disks import VmDisks
from virtkit.vm.qemu.initramfs import init_script


def test_disk_size_is_for_qemu_vms_and_rounded_to_whole_mib() -> None:
    assert validate_create({"image": "x", "type": "vm", "disk_size": "2G"})["disk_size"] == 2 << 30
    assert validate_create({"image": "x", "type": "vm", "disk_size": 1_500_000})["disk_size"] == 2 << 20
    with pytest.raises(InvalidArgument, match="disk_size: only for VMs"):
        validate_create({"image": "x", "disk_size": "2G"})
    with pytest.raises(InvalidArgument, match="disk_size: cannot parse"):
        validate_create({"image": "x", "type": "vm", "disk_size": "lots"})
    with pytest.raises(InvalidArgument, match="disk_size: must be between"):
        validate_create({"image": "x", "type": "vm", "disk_size": "0"})


def test_vm_volumes_are_named_volumes_only(tmp_path: object) -> None:
    spec = validate_create({"image": "x", "type": "vm", "volumes": ["data:/data:ro"]})
    assert spec["volumes"] == [{"volume": "data", "source": None, "target": "/data", "readonly": True}]
    with pytest.raises(InvalidArgument, match="host directory is not supported for VMs"):
        validate_create({"image": "x", "type": "vm", "volumes": [f"{tmp_path}:/x"]})


@pytest.mark.parametrize("volumes, message", [
    ([{"volume": "a", "target": "/a"}], "named ext4 volumes only"),                  # no image: not ext4
    ([{"volume": "a", "image": "/v/a", "target": "/a"}] * 2, "'a' is given twice"),
    ([{"volume": f"v{i}", "image": f"/v/{i}", "target": f"/{i}"} for i in range(9)], "at most 8 volumes"),
])
def test_bad_vm_volume_plans_are_refused(volumes: list[dict[str, object]], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        VmDisks._plan_volumes(volumes)


def test_the_guest_learns_its_disks_from_the_kernel_command_line() -> None:
    params = guestroot.kernel_params([("virtkit-vol0", "/srv/my data", True), ("virtkit-vol1", "/b", False)])
    assert params[0] == "virtkit.root=virtkit-root"
    assert all(" " not in p for p in params)
    lines = base64.b64decode(params[1].split("=", 1)[1]).decode()
    assert lines == "virtkit-vol0 ro /srv/my data\nvirtkit-vol1 rw /b\n"
    assert guestroot.kernel_params([]) == ["virtkit.root=virtkit-root"]
    init = init_script()
    assert f". /{guestroot.SCRIPT_PATH}\n" in init and 'setsid $chroot /bin/sh -c "$cmd"' in init
