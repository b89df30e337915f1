"""Bad arguments to virtkit-vmm: exit status 2, one clear line naming the problem, nothing left behind."""

from __future__ import annotations

import json

import pytest

from tests.vm.kvm.conftest import needs_kvm, run_vmm

pytestmark = [needs_kvm, pytest.mark.root]

USAGE = 2


@pytest.fixture
def workdir(tmp_path):
    """An empty directory the VMM runs in: whatever it leaves there after a refusal is a leak."""
    path = tmp_path / "work"
    path.mkdir()
    return path


def refuse(args: list[str], workdir, *expected: str) -> str:
    """Run in `workdir`; assert status 2, a message containing `expected`, no traceback, an empty workdir."""
    done = run_vmm(args, cwd=workdir)
    message = done.stderr.decode()
    assert done.returncode == USAGE, done
    for text in expected:
        assert text in message, f"{text!r} missing from {message!r}"
    assert "Traceback" not in message
    assert done.stdout == b""
    assert_empty(workdir)
    return message


def assert_empty(workdir) -> None:
    left = sorted(p.name for p in workdir.iterdir())
    assert left == [], f"a refused start left {left} behind"


def test_missing_kernel_file(workdir, tmp_path):
    missing = tmp_path / "no-such-kernel.bin"
    refuse(["--kernel", str(missing), "--kernel-format", "flat"], workdir, str(missing), "no such file")


def test_memory_too_small_for_the_image(workdir, tmp_path):
    image = tmp_path / "big.bin"
    image.write_bytes(b"\xf4" * (3 << 20))  # 3 MiB at 1 MiB needs 4 MiB of RAM
    message = refuse(["--kernel", str(image), "--kernel-format", "flat", "--memory", "2M"], workdir, "too small")
    assert "memory" in message.lower()


def test_memory_below_the_minimum(workdir, guest):
    refuse(["--kernel", str(guest("hello")), "--kernel-format", "flat", "--memory", "1M"], workdir,
           "too small")


def test_unknown_kernel_format(workdir, guest):
    message = refuse(["--kernel", str(guest("hello")), "--kernel-format", "bogus"], workdir, "--kernel-format",
                     "'bogus'")
    for known in ("bzimage", "elf", "flat"):
        assert known in message


def test_flat_image_without_flat_format_is_not_guessed(workdir, guest):
    refuse(["--kernel", str(guest("hello"))], workdir, "flat")


def test_no_kernel_at_all(workdir):
    refuse([], workdir, "--kernel")


def test_missing_disk_file(workdir, guest, tmp_path):
    missing = tmp_path / "nodisk.raw"
    refuse(["--kernel", str(guest("hello")), "--kernel-format", "flat", "--disk", str(missing)], workdir,
           str(missing))


def test_cpuid_policy_with_an_unknown_feature(workdir, guest, tmp_path):
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({"remove_features": ["no_such_feature"]}))
    refuse(["--kernel", str(guest("hello")), "--kernel-format", "flat", "--cpuid-policy", str(policy)], workdir,
           "no_such_feature")


@pytest.mark.parametrize("case", ["missing-kernel", "memory-too-small"])
def test_refusal_leaves_no_serial_file(workdir, tmp_path, case):
    """--serial FILE names an output of the run: a run refused before it starts must not leave it behind."""
    image = tmp_path / "big.bin"
    image.write_bytes(b"\xf4" * (3 << 20))
    kernel = str(tmp_path / "no-such-kernel.bin") if case == "missing-kernel" else str(image)
    done = run_vmm(["--kernel", kernel, "--kernel-format", "flat", "--memory", "2M", "--serial", "serial.log"],
                   cwd=workdir)
    assert done.returncode == USAGE, done
    assert_empty(workdir)
