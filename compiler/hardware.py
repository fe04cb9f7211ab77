"""Hardware discovery: what this machine has for inference.

``detect_cpu`` reads ``/proc/cpuinfo`` and ``/proc/meminfo``, ``detect_gpus`` asks NVML about
NVIDIA GPUs, and ``discover`` puts both together with the devices each target reports into one
:class:`~ai_vmm.runtime.devices.Inventory`. Nothing here raises because some hardware or library
is missing: the reason becomes a one-line note in the inventory instead.

No vendor SDK is imported at module level: ``pynvml`` is imported inside :func:`detect_gpus`, and
the targets' own discoverers (which import openvino, onnxruntime, ...) are passed in by the caller.
"""

from __future__ import annotations

import contextlib
import os
import platform
import threading
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from ai_vmm.runtime.devices import CpuInfo, Device, GpuInfo, Inventory

__all__ = [
    "ISA_FEATURES",
    "TargetDiscoverer",
    "clear_cache",
    "cpu_precisions",
    "detect_cpu",
    "detect_gpus",
    "discover",
    "format_inventory",
    "parse_cpuinfo",
]

ISA_FEATURES: tuple[str, ...] = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "f16c",
    "avx512f",
    "avx512bw",
    "avx512vl",
    "avx512_vnni",
    "avx_vnni",
    "avx512_bf16",
    "avx512_fp16",
    "amx_tile",
    "amx_int8",
    "amx_bf16",
)
"""Inference-relevant x86 features, in the order ``CpuInfo.isa`` lists them.

Each name is also the flag Linux prints for it in ``/proc/cpuinfo``.
"""

TargetDiscoverer = Callable[[CpuInfo], tuple[list[Device], "str | None", "str | None"]]
"""A target's discovery function: ``cpu -> (devices, library_version or None, note or None)``."""

_GIB = 1024**3


# --------------------------------------------------------------------------------------------
# CPU
# --------------------------------------------------------------------------------------------


def _cpuinfo_blocks(text: str) -> list[dict[str, str]]:
    """Split ``/proc/cpuinfo`` text into one ``key -> value`` dict per blank-line block."""
    blocks: list[dict[str, str]] = []
    current: dict[str, str] = {}
    for line in text.splitlines():
        if not line.strip():
            if current:
                blocks.append(current)
                current = {}
            continue
        key, sep, value = line.partition(":")
        if sep:
            current.setdefault(key.strip().lower(), value.strip())
    if current:
        blocks.append(current)
    return blocks


def _first(blocks: Iterable[dict[str, str]], *keys: str) -> str:
    """Return the first non-empty value of any of ``keys`` across ``blocks`` ('' if none)."""
    for block in blocks:
        for key in keys:
            value = block.get(key, "")
            if value:
                return value
    return ""


def _memory_from_meminfo(meminfo: str) -> int:
    """Return ``MemTotal`` from ``/proc/meminfo`` text in bytes (0 if absent)."""
    for line in meminfo.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() == "MemTotal":
            parts = value.split()
            if parts and parts[0].isdigit():
                unit = parts[1].lower() if len(parts) > 1 else "b"
                factor = {"b": 1, "kb": 1024, "mb": 1024**2, "gb": 1024**3}.get(unit, 1024)
                return int(parts[0]) * factor
    return 0


def _memory_from_sysconf() -> int:
    """Return physical memory in bytes from ``os.sysconf`` (0 where unsupported)."""
    try:
        pages = os.sysconf("SC_PHYS_PAGES")
        page_size = os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):
        return 0
    if pages > 0 and page_size > 0:
        return int(pages) * int(page_size)
    return 0


def parse_cpuinfo(text: str, meminfo: str | None) -> CpuInfo:
    """Build a :class:`CpuInfo` from the text of ``/proc/cpuinfo`` and ``/proc/meminfo``.

    Missing fields fall back to the ``platform`` and ``os`` modules, so any text (even an empty
    one) gives a usable result.

    Args:
        text: The content of ``/proc/cpuinfo``.
        meminfo: The content of ``/proc/meminfo``, or ``None`` to ask ``os.sysconf`` instead.

    Returns:
        The CPU description. ``isa`` lists the features of :data:`ISA_FEATURES` found in the
        first processor's flags, in that order.
    """
    blocks = _cpuinfo_blocks(text)
    processors = [block for block in blocks if "processor" in block] or blocks

    model = (
        _first(processors, "model name", "hardware", "cpu model", "processor name")
        or platform.processor()
        or platform.machine()
        or "unknown"
    )
    vendor = _first(processors, "vendor_id", "vendor", "cpu implementer") or "unknown"
    flags = set(_first(processors, "flags", "features").split())
    isa = tuple(feature for feature in ISA_FEATURES if feature in flags)

    logical = sum(1 for block in blocks if block.get("processor", "").isdigit())
    logical = logical or os.cpu_count() or 1

    # One physical core per distinct (socket, core) pair; SMT siblings share a pair.
    pairs = {
        (block.get("physical id", "0"), block["core id"]) for block in blocks if "core id" in block
    }
    physical = min(len(pairs), logical) if pairs else logical

    memory = _memory_from_meminfo(meminfo) if meminfo is not None else 0
    memory = memory or _memory_from_sysconf()

    return CpuInfo(
        model=model,
        vendor=vendor,
        arch=platform.machine() or "unknown",
        physical_cores=physical,
        logical_cores=logical,
        isa=isa,
        memory_bytes=memory,
    )


def _read_text(path: str) -> str | None:
    """Return the content of ``path``, or ``None`` if it cannot be read."""
    try:
        with open(path, encoding="utf-8", errors="replace") as handle:
            return handle.read()
    except OSError:
        return None


def detect_cpu() -> CpuInfo:
    """Describe the host CPU from ``/proc/cpuinfo`` and ``/proc/meminfo``.

    Falls back to the ``platform`` and ``os`` modules where ``/proc`` is missing (not Linux) or
    unreadable. Never raises.

    Returns:
        The CPU description of this machine.
    """
    try:
        return parse_cpuinfo(_read_text("/proc/cpuinfo") or "", _read_text("/proc/meminfo"))
    except Exception:  # never crash discovery on an odd /proc
        count = os.cpu_count() or 1
        return CpuInfo(
            model=platform.processor() or platform.machine() or "unknown",
            vendor="unknown",
            arch=platform.machine() or "unknown",
            physical_cores=count,
            logical_cores=count,
            isa=(),
            memory_bytes=_memory_from_sysconf(),
        )


def cpu_precisions(cpu: CpuInfo) -> list[str]:
    """Return the precisions the CPU accelerates natively.

    Args:
        cpu: The CPU description.

    Returns:
        ``"fp32"`` always, then ``"int8-vnni"`` (AVX512-VNNI or AVX-VNNI), ``"bf16"``
        (AVX512-BF16 or AMX-BF16), ``"int8-amx"`` (AMX-INT8) and ``"fp16"`` (AVX512-FP16) where
        the ISA has them, in that order.
    """
    isa = set(cpu.isa)
    precisions = ["fp32"]
    if isa & {"avx512_vnni", "avx_vnni"}:
        precisions.append("int8-vnni")
    if isa & {"avx512_bf16", "amx_bf16"}:
        precisions.append("bf16")
    if "amx_int8" in isa:
        precisions.append("int8-amx")
    if "avx512_fp16" in isa:
        precisions.append("fp16")
    return precisions


# --------------------------------------------------------------------------------------------
# NVIDIA GPUs
# --------------------------------------------------------------------------------------------


def _nvml_reason(pynvml: Any, exc: BaseException) -> str:
    """Turn an exception from ``nvmlInit`` into a short reason."""
    code = getattr(exc, "value", None)
    if code is not None and code == getattr(pynvml, "NVML_ERROR_LIBRARY_NOT_FOUND", object()):
        return "libnvidia-ml.so.1 not found (no NVIDIA driver installed)"
    if code is not None and code == getattr(pynvml, "NVML_ERROR_DRIVER_NOT_LOADED", object()):
        return "NVIDIA driver not loaded"
    if code is not None and code == getattr(pynvml, "NVML_ERROR_NO_PERMISSION", object()):
        return "no permission to access the NVIDIA driver"
    return " ".join(str(exc).split()) or type(exc).__name__


def _as_str(value: Any) -> str:
    """Decode NVML strings (bytes in older nvidia-ml-py releases)."""
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return str(value)


def _gpu_info(pynvml: Any, index: int) -> GpuInfo:
    """Query one GPU through NVML (optional fields become ``None``/'' when unsupported)."""
    handle = pynvml.nvmlDeviceGetHandleByIndex(index)
    name = _as_str(pynvml.nvmlDeviceGetName(handle))
    memory = int(pynvml.nvmlDeviceGetMemoryInfo(handle).total)
    try:
        major, minor = pynvml.nvmlDeviceGetCudaComputeCapability(handle)
        capability = f"{int(major)}.{int(minor)}"
    except Exception:
        capability = ""
    power: float | None
    try:
        power = float(pynvml.nvmlDeviceGetEnforcedPowerLimit(handle)) / 1000.0  # mW -> W
    except Exception:
        try:
            power = float(pynvml.nvmlDeviceGetPowerManagementLimit(handle)) / 1000.0
        except Exception:
            power = None
    return GpuInfo(
        index=index,
        name=name,
        memory_bytes=memory,
        compute_capability=capability,
        power_limit_w=power,
    )


def detect_gpus() -> tuple[tuple[GpuInfo, ...], str | None]:
    """List the NVIDIA GPUs through NVML (``nvidia-ml-py``). Never raises.

    Returns:
        ``(gpus, note)``: the GPUs found, and a one-line reason when there are none because
        NVML is missing, has no driver, or sees no device (``None`` when GPUs were found and
        every one could be queried).
    """
    try:
        import pynvml  # lazily: nvidia-ml-py is an optional dependency
    except Exception as exc:  # ImportError, or a broken install
        return (), f"NVML not available: nvidia-ml-py not importable ({type(exc).__name__})"

    try:
        pynvml.nvmlInit()
    except Exception as exc:
        return (), f"NVML not available: {_nvml_reason(pynvml, exc)}"

    gpus: list[GpuInfo] = []
    note: str | None = None
    try:
        count = int(pynvml.nvmlDeviceGetCount())
        failed: list[str] = []
        for index in range(count):
            try:
                gpus.append(_gpu_info(pynvml, index))
            except Exception as exc:
                failed.append(f"GPU {index}: {' '.join(str(exc).split()) or type(exc).__name__}")
        if failed:
            note = "NVML could not query " + "; ".join(failed)
        elif count == 0:
            note = "NVML: no NVIDIA GPU found"
    except Exception as exc:
        note = f"NVML error: {' '.join(str(exc).split()) or type(exc).__name__}"
    finally:
        with contextlib.suppress(Exception):
            pynvml.nvmlShutdown()
    return tuple(gpus), note


# --------------------------------------------------------------------------------------------
# Inventory
# --------------------------------------------------------------------------------------------

_cache: dict[tuple[str, ...], Inventory] = {}
_cache_lock = threading.Lock()


def clear_cache() -> None:
    """Forget every inventory :func:`discover` has cached in this process."""
    with _cache_lock:
        _cache.clear()


def _one_line(text: str) -> str:
    """Collapse whitespace (newlines included) so a note stays on one line."""
    return " ".join(text.split())


def _run_discoverer(
    name: str, discoverer: TargetDiscoverer, cpu: CpuInfo
) -> tuple[list[Device], str | None, str | None]:
    """Call one target discoverer, turning any exception into a note."""
    try:
        devices, version, note = discoverer(cpu)
        checked = list(devices)
        for device in checked:
            if not isinstance(device, Device):
                raise TypeError(f"discoverer returned a {type(device).__name__}, not a Device")
    except Exception as exc:
        return [], None, f"{name}: {_one_line(str(exc)) or type(exc).__name__}"
    if note:
        note = _one_line(str(note))
        if not note.startswith(name):
            note = f"{name}: {note}"
    return checked, (str(version) if version else None), (note or None)


def discover(
    target_discoverers: Mapping[str, TargetDiscoverer], *, refresh: bool = False
) -> Inventory:
    """Find the CPU, the NVIDIA GPUs and every target's devices.

    The result is cached per process, keyed by the discoverer names (in order); pass
    ``refresh=True`` or call :func:`clear_cache` to look again.

    Args:
        target_discoverers: Target name -> discoverer, called with the CPU description and
            returning ``(devices, library_version or None, note or None)``. An exception from a
            discoverer becomes the note ``"<target>: <message>"``; it never propagates.
        refresh: Ignore (and replace) a cached inventory.

    Returns:
        The inventory: devices in discoverer order, ``libraries`` mapping each target that
        reported a version to it, and the notes of GPU discovery and of every target.
    """
    key = tuple(target_discoverers)
    with _cache_lock:
        cached = None if refresh else _cache.get(key)
    if cached is not None:
        return cached

    cpu = detect_cpu()
    devices: list[Device] = []
    libraries: dict[str, str] = {}
    notes: list[str] = []

    gpus, gpu_note = detect_gpus()
    if gpu_note:
        notes.append(_one_line(gpu_note))

    for name, discoverer in target_discoverers.items():
        found, version, note = _run_discoverer(name, discoverer, cpu)
        devices.extend(found)
        if version:
            libraries[name] = version
        if note:
            notes.append(note)

    inventory = Inventory(
        cpu=cpu,
        devices=tuple(devices),
        gpus=gpus,
        libraries=libraries,
        notes=tuple(notes),
    )
    with _cache_lock:
        _cache[key] = inventory
    return inventory


def _gib(size: int) -> str:
    """Format a byte count in GiB with one decimal."""
    return f"{size / _GIB:.1f} GiB"


def format_inventory(inv: Inventory) -> str:
    """Render an inventory as plain text for ``vmmc devices``.

    Args:
        inv: The inventory to show.

    Returns:
        Multi-line text (no trailing newline): the CPU with its cores, ISA and native
        precisions, memory, each device as ``target:name  kind  full_name``, the NVIDIA GPUs,
        the library versions and the notes.
    """
    cpu = inv.cpu
    lines = [
        f"CPU        {cpu.model} ({cpu.vendor}, {cpu.arch}), "
        f"{cpu.physical_cores} cores / {cpu.logical_cores} threads",
        f"ISA        {' '.join(cpu.isa) if cpu.isa else '(none of interest)'}",
        f"Precisions {' '.join(cpu_precisions(cpu))}",
        f"Memory     {_gib(cpu.memory_bytes) if cpu.memory_bytes else 'unknown'}",
        "",
        "Devices",
    ]
    if inv.devices:
        key_width = max(len(device.key) for device in inv.devices)
        kind_width = max(len(device.kind) for device in inv.devices)
        for device in inv.devices:
            row = f"  {device.key:<{key_width}}  {device.kind:<{kind_width}}  {device.full_name}"
            lines.append(row.rstrip())
    else:
        lines.append("  (none)")

    lines += ["", "GPUs"]
    if inv.gpus:
        for gpu in inv.gpus:
            parts = [f"  {gpu.index}: {gpu.name}", _gib(gpu.memory_bytes)]
            if gpu.compute_capability:
                parts.append(f"compute {gpu.compute_capability}")
            if gpu.power_limit_w is not None:
                parts.append(f"{gpu.power_limit_w:.0f} W")
            lines.append("  ".join(parts))
    else:
        lines.append("  (none)")

    lines += ["", "Libraries"]
    if inv.libraries:
        width = max(len(name) for name in inv.libraries)
        lines += [f"  {name:<{width}}  {version}" for name, version in inv.libraries.items()]
    else:
        lines.append("  (none)")

    if inv.notes:
        lines += ["", "Notes"]
        lines += [f"  - {note}" for note in inv.notes]
    return "\n".join(lines)
