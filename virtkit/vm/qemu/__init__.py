"""The QEMU engine: accelerator choice, guest kernel and initramfs, QEMU command line, QMP, the VM driver.

The driver is `virtkit.vm.qemu.driver.QemuDriver` (not imported here: the per-VM waiter imports this package
and should stay small).
"""
