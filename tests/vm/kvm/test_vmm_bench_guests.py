"""The bench/vmm guests do what the benchmark times, on virtkit-vmm (flat and PVH ELF) and on QEMU (PVH ELF)."""

from __future__ import annotations

import json
import shutil
import subprocess

import pytest

from tests.vm.kvm.conftest import needs_kvm, run_vmm

ITERATIONS = 1000


def last_json_line(stderr: bytes) -> dict:
    return json.loads(stderr.decode().strip().splitlines()[-1])


@needs_kvm
@pytest.mark.parametrize(("fmt", "kernel_format"), [("flat", "flat"), ("pvh", "elf")])
def test_first_byte_guest(guest, fmt, kernel_format):
    done = run_vmm(["--kernel", str(guest("bench_first_byte", fmt=fmt)), "--kernel-format", kernel_format,
                    "--memory", "16M"])
    assert (done.returncode, done.stdout) == (0, b"!"), done


@needs_kvm
@pytest.mark.parametrize(("fmt", "kernel_format"), [("flat", "flat"), ("pvh", "elf")])
def test_exit_loop_guest_makes_one_handled_exit_per_iteration(guest, fmt, kernel_format):
    kernel = guest("bench_exit_loop", fmt=fmt, ITERATIONS=ITERATIONS)
    done = run_vmm(["--kernel", str(kernel), "--kernel-format", kernel_format, "--memory", "16M", "--stats"])
    assert (done.returncode, done.stdout) == (0, b"SE\n"), done
    stats = last_json_line(done.stderr)
    assert stats["post_port_writes"] == ITERATIONS, stats


@pytest.mark.skipif(shutil.which("qemu-system-x86_64") is None, reason="qemu-system-x86_64 is not installed")
@pytest.mark.parametrize("name", ["bench_first_byte", "bench_exit_loop"])
def test_pvh_guests_boot_on_qemu(guest, name):
    kernel = guest(name, fmt="pvh", ITERATIONS=ITERATIONS) if name == "bench_exit_loop" else guest(name, fmt="pvh")
    # TCG: this must work on any host; the benchmark picks the accelerator
    done = subprocess.run(["qemu-system-x86_64", "-M", "microvm", "-accel", "tcg", "-m", "32M", "-nodefaults",
                           "-no-user-config", "-display", "none", "-no-reboot", "-serial", "stdio",
                           "-device", "isa-debug-exit,iobase=0xf4,iosize=4", "-kernel", str(kernel)],
                          capture_output=True, timeout=60, stdin=subprocess.DEVNULL)
    # isa-debug-exit turns the guest's 0 into (0 << 1) | 1
    assert done.returncode == 1, done
    assert done.stdout == (b"!" if name == "bench_first_byte" else b"SE\n"), done
