"""CPUID policy: what the guest sees, from KVM's supported set through a JSON policy into KVM_SET_CPUID2."""

from __future__ import annotations

from virtkit.vm.kvm import abi
from virtkit.vm.kvm.errors import ConfigError, VmmError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing, json, dataclasses stay out of virtkit-vmm's start
    from typing import Any

EAX, EBX, ECX, EDX = "eax", "ebx", "ecx", "edx"

# (leaf, subleaf, register, bit) of each feature, named as /proc/cpuinfo names it.
_LEAF1_EDX = ["fpu", "vme", "de", "pse", "tsc", "msr", "pae", "mce", "cx8", "apic", "", "sep", "mtrr", "pge", "mca",
              "cmov", "pat", "pse36", "pn", "clflush", "", "dts", "acpi", "mmx", "fxsr", "sse", "sse2", "ss", "ht",
              "tm", "ia64", "pbe"]
_LEAF1_ECX = ["pni", "pclmulqdq", "dtes64", "monitor", "ds_cpl", "vmx", "smx", "est", "tm2", "ssse3", "cid",
              "sdbg", "fma", "cx16", "xtpr", "pdcm", "", "pcid", "dca", "sse4_1", "sse4_2", "x2apic", "movbe",
              "popcnt", "tsc_deadline_timer", "aes", "xsave", "", "avx", "f16c", "rdrand", "hypervisor"]
_LEAF7_EBX = ["fsgsbase", "tsc_adjust", "sgx", "bmi1", "hle", "avx2", "", "smep", "bmi2", "erms", "invpcid", "rtm",
              "cqm", "", "mpx", "rdt_a", "avx512f", "avx512dq", "rdseed", "adx", "smap", "avx512ifma", "",
              "clflushopt", "clwb", "intel_pt", "avx512pf", "avx512er", "avx512cd", "sha_ni", "avx512bw",
              "avx512vl"]
_LEAF7_ECX = ["", "avx512vbmi", "umip", "pku", "ospke", "waitpkg", "avx512_vbmi2", "", "gfni", "vaes",
              "vpclmulqdq", "avx512_vnni", "avx512_bitalg", "tme", "avx512_vpopcntdq", "", "la57", "", "", "", "",
              "", "rdpid", "", "bus_lock_detect", "cldemote", "", "movdiri", "movdir64b", "enqcmd", "sgx_lc", ""]
_LEAF7_EDX = ["", "", "avx512_4vnniw", "avx512_4fmaps", "fsrm", "", "", "", "avx512_vp2intersect", "", "md_clear",
              "", "", "", "serialize", "", "tsxldtrk", "", "pconfig", "", "ibt", "", "amx_bf16", "avx512_fp16",
              "amx_tile", "amx_int8", "spec_ctrl", "intel_stibp", "flush_l1d", "arch_capabilities",
              "core_capabilities", "ssbd"]
_EXT1_ECX = ["lahf_lm", "cmp_legacy", "svm", "extapic", "cr8_legacy", "abm", "sse4a", "misalignsse",
             "3dnowprefetch", "osvw", "ibs", "xop", "skinit", "wdt", "", "lwp", "fma4", "tce", "", "nodeid_msr", "",
             "tbm", "topoext", "perfctr_core", "perfctr_nb", "", "bpext", "ptsc", "perfctr_llc", "mwaitx", "", ""]
_EXT1_EDX = {11: "syscall", 20: "nx", 22: "mmxext", 25: "fxsr_opt", 26: "pdpe1gb", 27: "rdtscp", 29: "lm",
             30: "3dnowext", 31: "3dnow"}

FEATURES: dict[str, tuple[int, int, str, int]] = {}
for _leaf, _sub, _reg, _names in ((1, 0, EDX, _LEAF1_EDX), (1, 0, ECX, _LEAF1_ECX), (7, 0, EBX, _LEAF7_EBX),
                                  (7, 0, ECX, _LEAF7_ECX), (7, 0, EDX, _LEAF7_EDX),
                                  (0x80000001, 0, ECX, _EXT1_ECX)):
    for _bit, _name in enumerate(_names):
        if _name:
            FEATURES[_name] = (_leaf, _sub, _reg, _bit)
for _bit, _name in _EXT1_EDX.items():
    FEATURES[_name] = (0x80000001, 0, EDX, _bit)
# the guest cannot run without these in long mode; removing them is refused rather than producing a dead guest
ESSENTIAL = {"lm", "pae", "msr", "apic", "fpu", "cx8", "tsc", "fxsr", "sse", "sse2", "pse", "pge", "cmov"}

HYPERVISOR_LEAF = 0x40000000


def _regs(text: str) -> tuple[int, int, int]:
    raw = text.encode("ascii")
    return (int.from_bytes(raw[0:4], "little"), int.from_bytes(raw[4:8], "little"), int.from_bytes(raw[8:12], "little"))


class CpuidPolicy:
    """vendor (leaf 0), hypervisor_signature (leaf 0x40000000), remove_features (by /proc/cpuinfo name)."""

    def __init__(self, vendor: str | None = None, hypervisor_signature: str | None = None,
                 remove_features: list[str] | None = None) -> None:
        self.vendor = vendor
        self.hypervisor_signature = hypervisor_signature
        self.remove_features = list(remove_features or [])

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CpuidPolicy:
        if not isinstance(data, dict):
            raise ConfigError("CPUID policy: expected a JSON object")
        unknown = set(data) - {"vendor", "hypervisor_signature", "remove_features"}
        if unknown:
            raise ConfigError(f"CPUID policy: unknown key(s) {', '.join(sorted(unknown))}")
        policy = cls(data.get("vendor"), data.get("hypervisor_signature"), list(data.get("remove_features", [])))
        policy.validate()
        return policy

    @classmethod
    def from_file(cls, path: str) -> CpuidPolicy:
        import json

        try:
            with open(path) as f:
                data = json.load(f)
        except FileNotFoundError:
            raise ConfigError(f"CPUID policy {path}: no such file") from None
        except (ValueError, UnicodeDecodeError) as exc:
            raise ConfigError(f"CPUID policy {path}: not valid JSON ({exc})") from None
        return cls.from_dict(data)

    def validate(self) -> None:
        for key in ("vendor", "hypervisor_signature"):
            value = getattr(self, key)
            if value is None:
                continue
            if not isinstance(value, str) or len(value) != 12 or not value.isascii():
                raise ConfigError(f"CPUID policy: {key} must be exactly 12 ASCII characters, got {value!r}")
        for name in self.remove_features:
            if name not in FEATURES:
                raise ConfigError(f"CPUID policy: unknown feature {name!r} in remove_features "
                               "(use the names /proc/cpuinfo shows)")
            if name in ESSENTIAL:
                raise ConfigError(f"CPUID policy: feature {name!r} cannot be removed: a 64-bit guest needs it")

    def to_dict(self) -> dict[str, Any]:
        return {"vendor": self.vendor, "hypervisor_signature": self.hypervisor_signature,
                "remove_features": list(self.remove_features)}


def guest_cpuid(supported: list[abi.CpuidEntry2], policy: CpuidPolicy | None, *, cpu_index: int,
                cpu_count: int) -> list[abi.CpuidEntry2]:
    """The CPUID table of one vCPU: KVM's supported set, then topology, then the policy."""
    entries = [abi.CpuidEntry2.from_buffer_copy(bytes(e)) for e in supported]
    by_key = {(e.function, e.index): e for e in entries}
    leaf1 = by_key.get((1, 0))
    if leaf1 is not None:
        # initial APIC ID and logical processor count; HTT when there is more than one
        leaf1.ebx = (leaf1.ebx & 0x0000FFFF) | (cpu_count << 16) | (cpu_index << 24)
        leaf1.edx = leaf1.edx | (1 << 28) if cpu_count > 1 else leaf1.edx & ~(1 << 28)
        leaf1.ecx |= 1 << 31  # hypervisor present
    for entry in entries:
        if entry.function == 0xB:  # x2APIC topology: every vCPU is its own core
            entry.edx = cpu_index
            if entry.index == 0:
                entry.ebx = 1
            elif entry.index == 1:
                entry.ebx = cpu_count
    if policy is None:
        return entries
    if policy.vendor is not None:
        leaf0 = by_key.get((0, 0))
        if leaf0 is None:
            raise VmmError("KVM reports no CPUID leaf 0")
        leaf0.ebx, leaf0.edx, leaf0.ecx = _regs(policy.vendor)
    if policy.hypervisor_signature is not None:
        found = by_key.get((HYPERVISOR_LEAF, 0))
        if found is None:
            hv = abi.CpuidEntry2(function=HYPERVISOR_LEAF, eax=HYPERVISOR_LEAF)
            entries.append(hv)
        else:
            hv = found
        hv.ebx, hv.ecx, hv.edx = _regs(policy.hypervisor_signature)
    for name in policy.remove_features:
        leaf, sub, reg, bit = FEATURES[name]
        target = by_key.get((leaf, sub))
        if target is not None:
            setattr(target, reg, getattr(target, reg) & ~(1 << bit))
    return entries


def check_applied(policy: CpuidPolicy, seen: list[abi.CpuidEntry2]) -> None:
    """Refuse a vCPU whose CPUID differs from the policy after KVM_SET_CPUID2: some KVMs (PVM) put host features
    back, and a guest that sees a feature its policy removed is worse than a clear error."""
    by_key = {(e.function, e.index): e for e in seen}
    kept = []
    for name in policy.remove_features:
        leaf, sub, reg, bit = FEATURES[name]
        entry = by_key.get((leaf, sub))
        if entry is not None and getattr(entry, reg) >> bit & 1:
            kept.append(name)
    if kept:
        raise ConfigError(f"CPUID policy: this host's KVM does not let {', '.join(kept)} be removed "
                          "(it reports them to the guest anyway)")
    leaf0 = by_key.get((0, 0))
    if policy.vendor is not None and leaf0 is not None and (leaf0.ebx, leaf0.edx, leaf0.ecx) != _regs(policy.vendor):
        raise ConfigError(f"CPUID policy: this host's KVM does not let the vendor be set to {policy.vendor!r}")
