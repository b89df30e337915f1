"""Virtual machines: each instance its own kernel. Engines: `qemu` (QEMU over QMP) and `native` (virtkit-vmm on
/dev/kvm); virtkit.vm.engines picks one per instance."""
