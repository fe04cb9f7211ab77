"""Tests of hardware discovery (``ai_vmm.hardware``)."""

from __future__ import annotations

import platform
from collections.abc import Iterator

import pytest

from ai_vmm import hardware
from ai_vmm.hardware import (
    clear_cache,
    cpu_precisions,
    detect_cpu,
    detect_gpus,
    discover,
    format_inventory,
    parse_cpuinfo,
)
from ai_vmm.runtime.devices import CpuInfo, Device

_SPR_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush dts acpi "
    "mmx fxsr sse sse2 ss ht tm pbe syscall nx pdpe1gb rdtscp lm constant_tsc pni pclmulqdq "
    "ssse3 fma cx16 sse4_1 sse4_2 x2apic movbe popcnt aes xsave avx f16c rdrand lahf_lm abm "
    "3dnowprefetch avx2 smep bmi2 erms invpcid avx512f avx512dq rdseed adx smap avx512ifma "
    "clflushopt clwb avx512cd sha_ni avx512bw avx512vl xsaveopt xsavec xgetbv1 xsaves avx_vnni "
    "avx512_bf16 wbnoinvd avx512vbmi umip pku ospke waitpkg avx512_vbmi2 gfni vaes vpclmulqdq "
    "avx512_vnni avx512_bitalg tme avx512_vpopcntdq la57 rdpid bus_lock_detect cldemote "
    "movdiri movdir64b enqcmd fsrm md_clear serialize tsxldtrk pconfig arch_lbr ibt "
    "amx_bf16 avx512_fp16 amx_tile amx_int8 flush_l1d arch_capabilities"
)

_AMD_FLAGS = (
    "fpu vme de pse tsc msr pae mce cx8 apic sep mtrr pge mca cmov pat pse36 clflush mmx fxsr "
    "sse sse2 ht syscall nx mmxext fxsr_opt pdpe1gb rdtscp lm constant_tsc rep_good nopl "
    "xtopology nonstop_tsc cpuid extd_apicid tsc_known_freq pni pclmulqdq ssse3 fma cx16 sse4_1 "
    "sse4_2 x2apic movbe popcnt tsc_deadline_timer aes xsave avx f16c rdrand hypervisor lahf_lm "
    "cmp_legacy cr8_legacy abm sse4a misalignsse 3dnowprefetch osvw topoext ssbd ibpb vmmcall "
    "fsgsbase tsc_adjust bmi1 avx2 smep bmi2 rdseed adx smap clflushopt sha_ni xsaveopt xsavec "
    "xgetbv1 clzero xsaveerptr virt_ssbd arat"
)


def _block(processor: int, vendor: str, model: str, physical: int, core: int, flags: str) -> str:
    return (
        f"processor\t: {processor}\n"
        f"vendor_id\t: {vendor}\n"
        f"model name\t: {model}\n"
        f"physical id\t: {physical}\n"
        f"core id\t\t: {core}\n"
        f"flags\t\t: {flags}\n"
    )


# Two sockets, two cores each, two threads per core: 8 logical, 4 physical.
SAPPHIRE_RAPIDS = "\n".join(
    _block(
        index,
        "GenuineIntel",
        "Intel(R) Xeon(R) Platinum 8480+",
        index // 4,
        (index // 2) % 2,
        _SPR_FLAGS,
    )
    for index in range(8)
)

# One socket, two cores, no SMT.
EPYC_AVX2 = "\n".join(
    _block(index, "AuthenticAMD", "AMD EPYC 7B12", 0, index, _AMD_FLAGS) for index in range(2)
)

MEMINFO = "MemTotal:       24683656 kB\nMemFree:        23946800 kB\n"


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    clear_cache()
    yield
    clear_cache()


@pytest.mark.skipif(
    platform.system() != "Linux" or platform.machine() not in ("x86_64", "AMD64"),
    reason="asserts what is true of any x86-64 Linux",
)
def test_detect_cpu_on_this_machine() -> None:
    cpu = detect_cpu()
    assert "sse4_2" in cpu.isa
    assert cpu.physical_cores >= 1
    assert cpu.logical_cores >= cpu.physical_cores
    assert cpu.memory_bytes > 0
    assert cpu.model and cpu.arch
    assert "fp32" in cpu_precisions(cpu)


def test_parse_sapphire_rapids() -> None:
    cpu = parse_cpuinfo(SAPPHIRE_RAPIDS, MEMINFO)
    assert cpu.vendor == "GenuineIntel"
    assert cpu.model == "Intel(R) Xeon(R) Platinum 8480+"
    assert cpu.logical_cores == 8
    assert cpu.physical_cores == 4
    assert cpu.memory_bytes == 24683656 * 1024
    assert cpu.isa == hardware.ISA_FEATURES  # every feature of interest, in the fixed order
    precisions = cpu_precisions(cpu)
    assert precisions == ["fp32", "int8-vnni", "bf16", "int8-amx", "fp16"]
    assert "bf16" in precisions and "int8-amx" in precisions


def test_parse_epyc_avx2_only() -> None:
    cpu = parse_cpuinfo(EPYC_AVX2, MEMINFO)
    assert cpu.vendor == "AuthenticAMD"
    assert cpu.logical_cores == 2
    assert cpu.physical_cores == 2
    assert cpu.isa == ("sse4_2", "avx", "avx2", "fma", "f16c")
    assert "avx512f" not in cpu.isa
    assert cpu_precisions(cpu) == ["fp32"]


def test_parse_empty_text_does_not_crash() -> None:
    cpu = parse_cpuinfo("", None)
    assert cpu.isa == ()
    assert cpu.physical_cores >= 1 and cpu.logical_cores >= 1
    assert cpu.model


def test_detect_gpus_never_raises() -> None:
    gpus, note = detect_gpus()
    assert isinstance(gpus, tuple)
    if gpus:
        for gpu in gpus:
            assert gpu.name and gpu.memory_bytes > 0
        return
    assert note is not None and "\n" not in note


def test_discoverer_that_raises_becomes_a_note() -> None:
    def broken(cpu: CpuInfo) -> tuple[list[Device], str | None, str | None]:
        raise RuntimeError("library exploded")

    inv = discover({"broken": broken})
    assert "broken: library exploded" in inv.notes
    assert inv.devices == ()
    assert "broken" not in inv.libraries


def test_discoverer_device_appears_in_inventory() -> None:
    seen: list[CpuInfo] = []

    def fake(cpu: CpuInfo) -> tuple[list[Device], str | None, str | None]:
        seen.append(cpu)
        return [Device("fake", "CPU", "cpu", full_name=cpu.model)], "1.2.3", None

    def missing(cpu: CpuInfo) -> tuple[list[Device], str | None, str | None]:
        return [], None, "not installed"

    inv = discover({"fake": fake, "missing": missing})
    device = inv.find("fake", "CPU")
    assert device is not None and device.key == "fake:CPU"
    assert inv.libraries == {"fake": "1.2.3"}
    assert "missing: not installed" in inv.notes
    assert seen == [inv.cpu]

    text = format_inventory(inv)
    assert "fake:CPU" in text and "1.2.3" in text and "missing: not installed" in text
    assert "GiB" in text


def test_discover_is_cached_until_cleared() -> None:
    calls: list[int] = []

    def counting(cpu: CpuInfo) -> tuple[list[Device], str | None, str | None]:
        calls.append(1)
        return [], None, None

    first = discover({"counting": counting})
    assert discover({"counting": counting}) is first
    assert len(calls) == 1
    assert discover({"counting": counting}, refresh=True) is not first
    clear_cache()
    discover({"counting": counting})
    assert len(calls) == 3
