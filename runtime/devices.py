"""Descriptions of the hardware a model can run on, shared by every layer.

The compiler fills these in (hardware discovery) and the runtime reads them (to check that an
artifact's devices are present). They are plain data: no vendor SDK is imported here.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any


@dataclass(frozen=True)
class CpuInfo:
    """The host CPU as far as inference cares."""

    model: str
    vendor: str
    arch: str
    physical_cores: int
    logical_cores: int
    isa: tuple[str, ...]
    """Inference-relevant ISA features found, e.g. ``("avx2", "fma", "avx512f", "avx512_vnni")``."""
    memory_bytes: int


@dataclass(frozen=True)
class Device:
    """One device a target can place work on.

    ``target`` is the backend that drives it (``openvino``, ``onnxruntime``, ``cuda``) and
    ``name`` the backend's own device name (``CPU``, ``GPU.0``, ``NPU``, ``CUDAExecutionProvider``).
    """

    target: str
    name: str
    kind: str
    """``cpu``, ``gpu``, ``npu`` or ``other``."""
    full_name: str = ""
    properties: dict[str, Any] = field(default_factory=dict)

    @property
    def key(self) -> str:
        """The ``target:name`` form used on the command line and in manifests."""
        return f"{self.target}:{self.name}"


@dataclass(frozen=True)
class GpuInfo:
    """An NVIDIA GPU seen through NVML."""

    index: int
    name: str
    memory_bytes: int
    compute_capability: str
    power_limit_w: float | None = None


@dataclass(frozen=True)
class Inventory:
    """Everything hardware discovery found: what this machine has for inference."""

    cpu: CpuInfo
    devices: tuple[Device, ...]
    gpus: tuple[GpuInfo, ...] = ()
    libraries: dict[str, str] = field(default_factory=dict)
    """Versions of the inference libraries found (``openvino``, ``onnxruntime``, ...)."""
    notes: tuple[str, ...] = ()
    """Why something was not found (a library missing, NVML absent), one line each."""

    def find(self, target: str, name: str | None = None) -> Device | None:
        """Return the device of ``target`` called ``name`` (or the target's first device)."""
        for device in self.devices:
            if device.target == target and (name is None or device.name == name):
                return device
        return None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready form (``vmmc devices --json``)."""
        return asdict(self)
