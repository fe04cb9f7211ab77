"""Hardware in the seed's vocabulary: which classes this machine has, which targets drive them.

The compiler's discovery (``ai_vmm.hardware.discover``, what ``vmmc devices`` prints) lists
devices per target (``openvino:CPU``, ``cuda:0`` ...). A deployment talks about hardware
classes instead: ``INTEL_CPU``, ``INTEL_GPU``, ``INTEL_NPU``, ``NVIDIA_GPU``, ``AMD_GPU``,
``QUALCOMM_NPU``, ``APPLE_SILICON`` (the seed's names), plus ``AMD_CPU`` and ``ARM_CPU`` for
host CPUs the seed's list has no name for. ``classify`` maps every target device to its class
and says, for each class that is absent, why.
"""

from __future__ import annotations

import os
import platform
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from ai_vmm.runtime.devices import CpuInfo, Device, Inventory

SEED_NAMES = (
    "INTEL_CPU",
    "INTEL_GPU",
    "INTEL_NPU",
    "NVIDIA_GPU",
    "AMD_GPU",
    "QUALCOMM_NPU",
    "APPLE_SILICON",
)
HARDWARE_NAMES = (*SEED_NAMES, "AMD_CPU", "ARM_CPU")
CPU_ALIAS = "CPU"
"""In ``preferred_hardware``: the host CPU, whichever vendor made it."""


@dataclass(frozen=True)
class Hardware:
    """One hardware class and what drives it here.

    Attributes:
        name: the class (``NVIDIA_GPU``, ``INTEL_CPU`` ...).
        present: whether a target can run models on it on this machine.
        devices: the target devices that drive it (``cuda:0``, ``openvino:CPU`` ...).
        detail: what was found (``NVIDIA H200, 141 GB``), or ``""``.
        why: for an absent class, why it is absent (one line).
    """

    name: str
    present: bool
    devices: tuple[Device, ...] = ()
    detail: str = ""
    why: str = ""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "present": self.present,
            "devices": [d.key for d in self.devices],
            "detail": self.detail,
            "why": self.why,
        }


def normalise_hardware(value: Any) -> str | None:
    """``"nvidia_gpu"`` -> ``"NVIDIA_GPU"``; ``"cpu"`` -> ``"CPU"``; unknown -> ``None``."""
    if not isinstance(value, str):
        return None
    name = value.strip().upper().replace("-", "_").replace(" ", "_")
    return name if name in HARDWARE_NAMES or name == CPU_ALIAS else None


def cpu_class(cpu: CpuInfo, system: str | None = None) -> str:
    """The class of the host CPU: by vendor on x86, by platform on ARM."""
    system = system or platform.system()
    arch = cpu.arch.lower()
    if arch in ("arm64", "aarch64") or arch.startswith("arm"):
        return "APPLE_SILICON" if system == "Darwin" else "ARM_CPU"
    vendor = cpu.vendor.lower()
    if "intel" in vendor:
        return "INTEL_CPU"
    if "amd" in vendor or "hygon" in vendor:
        return "AMD_CPU"
    return "INTEL_CPU" if "intel" in cpu.model.lower() else "AMD_CPU"


def device_class(device: Device, cpu: CpuInfo, system: str | None = None) -> str:
    """The hardware class a target device runs on."""
    if device.kind == "cpu":
        return cpu_class(cpu, system)
    if device.target in ("cuda", "tensorrt") or (
        device.target == "onnxruntime" and device.name.upper().startswith("CUDA")
    ):
        return "NVIDIA_GPU"
    if device.target == "openvino" and device.kind == "gpu":
        return "INTEL_GPU"  # OpenVINO's GPU plugin drives Intel GPUs only
    if device.target == "openvino" and device.kind == "npu":
        return "INTEL_NPU"
    return device.kind.upper()


def classify(
    inventory: Inventory,
    *,
    system: str | None = None,
    exists: Callable[[str], bool] = os.path.exists,
) -> list[Hardware]:
    """Every class of the vocabulary, present or absent (with why), in ``HARDWARE_NAMES`` order.

    Args:
        inventory: what ``ai_vmm.hardware.discover`` found.
        system: ``platform.system()`` (a parameter for tests).
        exists: ``os.path.exists`` (a parameter for tests: device nodes such as ``/dev/kfd``).
    """
    system = system or platform.system()
    by_class: dict[str, list[Device]] = {}
    for device in inventory.devices:
        by_class.setdefault(device_class(device, inventory.cpu, system), []).append(device)
    host = cpu_class(inventory.cpu, system)
    found: list[Hardware] = []
    for name in HARDWARE_NAMES:
        devices = tuple(by_class.get(name, ()))
        if devices:
            found.append(Hardware(name, True, devices, _detail(name, devices, inventory)))
        else:
            found.append(
                Hardware(name, False, why=_why_absent(name, host, inventory, system, exists))
            )
    return found


def _detail(name: str, devices: tuple[Device, ...], inventory: Inventory) -> str:
    cpu = inventory.cpu
    if name == cpu_class(cpu):
        return f"{cpu.model}, {cpu.physical_cores} cores, {' '.join(cpu.isa) or 'no SIMD of note'}"
    if name == "NVIDIA_GPU" and inventory.gpus:
        return ", ".join(
            f"{g.name} ({g.memory_bytes / 1024**3:.0f} GiB"
            + (f", limit {g.power_limit_w:.0f} W" if g.power_limit_w else "")
            + ")"
            for g in inventory.gpus
        )
    names = sorted({d.full_name or d.key for d in devices})
    return ", ".join(names)


def _notes(inventory: Inventory, *prefixes: str) -> list[str]:
    return [n for n in inventory.notes if n.lower().startswith(prefixes)]


def _why_absent(
    name: str,
    host: str,
    inventory: Inventory,
    system: str,
    exists: Callable[[str], bool],
) -> str:
    cpu = inventory.cpu
    machine = f"{system} {cpu.arch}"
    if name in ("INTEL_CPU", "AMD_CPU", "ARM_CPU") or (
        name == "APPLE_SILICON" and host != "APPLE_SILICON"
    ):
        if name == "APPLE_SILICON":
            return f"not an Apple Silicon Mac (this host is {machine})"
        if host == name:
            return "no target can run on the host CPU: " + "; ".join(inventory.notes)
        return f"the host CPU is {cpu.model} ({cpu.vendor}, {cpu.arch}): {host}"
    if name == "APPLE_SILICON":
        return "ai-vmm has no Core ML / Metal target; the CPU runs through openvino/onnxruntime"
    if name in ("INTEL_GPU", "INTEL_NPU"):
        kind = name.split("_")[1]
        openvino = inventory.find("openvino")
        if openvino is None and "openvino" not in inventory.libraries:
            why = "; ".join(_notes(inventory, "openvino")) or "OpenVINO is not installed"
            return f"OpenVINO is needed to drive an Intel {kind}: {why}"
        listed = sorted(d.name for d in inventory.devices if d.target == "openvino")
        return f"OpenVINO lists no {kind} device (its devices: {', '.join(listed) or 'none'})"
    if name == "NVIDIA_GPU":
        if inventory.gpus:
            names = ", ".join(g.name for g in inventory.gpus)
            targets = "; ".join(_notes(inventory, "cuda", "tensorrt")) or "no cuda target"
            return f"NVML sees {names} but no target can drive it: {targets}"
        return "; ".join(_notes(inventory, "nvml", "cuda")) or "no NVIDIA GPU found"
    if name == "AMD_GPU":
        driver = " (an AMD GPU driver is present: /dev/kfd)" if exists("/dev/kfd") else ""
        return (
            "ai-vmm has no ROCm / MIGraphX target, and none of its targets reports an AMD GPU"
            + driver
        )
    if name == "QUALCOMM_NPU":
        return f"ai-vmm has no QNN target, and this host ({machine}) is not a Snapdragon system"
    return "unknown hardware class"


def present_names(hardware: list[Hardware]) -> list[str]:
    """The names of the classes that are present, in vocabulary order."""
    return [h.name for h in hardware if h.present]


def format_hardware(hardware: list[Hardware]) -> str:
    """A text table: each class, present (with its devices) or absent (with why)."""
    width = max(len(h.name) for h in hardware)
    lines = []
    for h in hardware:
        if h.present:
            devices = ", ".join(d.key for d in h.devices)
            lines.append(f"{h.name:<{width}}  present  {devices}  ({h.detail})")
        else:
            lines.append(f"{h.name:<{width}}  absent   {h.why}")
    return "\n".join(lines)
