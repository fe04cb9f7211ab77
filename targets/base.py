"""The Target contract: one same-shaped module per backend.

A target says which devices it has (``discover`` / ``available``), which nodes it can run and why
not (``capability``), lowers the model for itself (``prepare``) and writes its payload
(``codegen``). The driver in ``ai_vmm`` is the only code that knows every target.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import onnx_ir as ir

from ai_vmm.runtime.devices import CpuInfo, Device, Inventory


@dataclass(frozen=True)
class NodeSupport:
    """Whether a target can run one node on one device, and why not."""

    supported: bool
    reason: str = ""


def axis_symbol(value: ir.Value, axis: int, dim: Any) -> str:
    """The name of a dynamic axis in ``TargetOptions.extra``'s ``sample_dims`` /
    ``sample_sizes``: the dimension's own name, or ``INPUT_AXIS`` for an anonymous one."""
    return str(dim.value) if getattr(dim, "value", None) else f"{value.name}_{axis}"


@dataclass(frozen=True)
class TargetOptions:
    """Options every target understands; a target ignores what does not apply to it."""

    precision: str = "fp32"
    """``fp32`` (default: results comparable with the float reference), ``fp16`` or ``bf16``."""
    performance_hint: str = "LATENCY"
    num_threads: int = 0
    """0: the backend's default thread count."""
    extra: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Payload:
    """What ``codegen`` wrote: files relative to its output directory and the executor config."""

    entry: str
    files: tuple[str, ...]
    config: dict[str, Any]


Sample = dict[str, Any]
"""One set of model inputs by name (numpy arrays)."""

AccuracyScore = Callable[[Sequence[Sample], Sequence[int]], float]
"""Outputs of a candidate for the held-out samples at ``indices`` -> normalized accuracy drop:
0 is identical to float, 1 is exactly at the user's limit, above 1 is over it."""


@dataclass(frozen=True)
class AccuracyCheck:
    """Held-out samples and the compiler's accuracy gate, for accuracy-controlled quantization."""

    samples: tuple[Sample, ...]
    score: AccuracyScore
    output_names: tuple[str, ...]


@dataclass(frozen=True)
class QuantizationRequest:
    """What the compiler asks a target to quantize (target-neutral; each target maps it).

    Attributes:
        activations: ``"int8"`` (static, calibrated), ``"int8-dynamic"`` or ``None``.
        weights: weight-only compression, ``"int8"`` / ``"int4"`` or ``None``.
        precision: ``fp32``, ``fp16`` or ``bf16`` for what stays float.
        group_size: INT4 group size (``None``: the target's default).
        ratio: share of weights in INT4, the rest INT8 (``None``: the target's default).
        transformer: the model is a transformer (the architecture profile's verdict).
        ignored_nodes: ONNX node names (and their output tensor names, for backends that name
            ops after the tensor they produce) to keep in float, with the reason for each.
        calibration: calibration samples (static INT8; optional for weight-only).
        accuracy: when set, keep the most sensitive layers in float until the gate passes.
        host_isa: the host CPU's inference ISA features (VNNI changes the best INT8 recipe).
    """

    activations: str | None = None
    weights: str | None = None
    precision: str = "fp32"
    group_size: int | None = None
    ratio: float | None = None
    transformer: bool = False
    ignored_nodes: tuple[tuple[str, str], ...] = ()
    calibration: tuple[Sample, ...] = ()
    accuracy: AccuracyCheck | None = None
    host_isa: tuple[str, ...] = ()


@dataclass(frozen=True)
class QuantizedPayload:
    """What ``quantize`` wrote, and what it did: quantized layers, float layers and why."""

    payload: Payload
    quantized: tuple[str, ...]
    """Layers (weighted ops, by name) that run in low precision."""
    kept_float: dict[str, str]
    """Layers left in float -> why (ignored scope, accuracy restoration, unsupported)."""
    method: str
    """The library and algorithm used, e.g. ``nncf.quantize (preset: transformer)``."""
    notes: tuple[str, ...] = ()


class QuantizingTarget(Protocol):
    """A target that can also quantize (the optional part of the contract)."""

    def quantize(
        self,
        model: ir.Model,
        device: Device,
        options: TargetOptions,
        request: QuantizationRequest,
        out_dir: Path,
    ) -> QuantizedPayload:
        """Write a low-precision payload for ``device`` into ``out_dir`` (exists, empty)."""
        ...


class Target:
    """A backend: capability, lowering, codegen. Every target subclasses this.

    Required (each target implements them): ``name``, ``discover``, ``available``,
    ``capability``, ``prepare``, ``codegen``, ``supports_op``, ``tuning_space``.
    Optional, with the defaults below (the compiler asks these, never a target's name):
    ``package`` (the library whose version shapes the payload: the manifest's toolchain),
    ``builds_on_device_only`` (payloads can only be built on the device: a plan for an absent
    one writes the partition as a deferred ONNX subgraph), ``keeps_outputs_on_device`` (tensors
    read only by partitions on the same device stay there between partitions), ``raw_config``
    (the executor config that runs a plain ONNX model, for micro-benchmarks), ``quantize``
    (see ``QuantizingTarget``; ``can_quantize`` says whether it is offered),
    ``measure_figures`` (its own cost-model micro-benchmark), ``estimate`` (a latency
    estimate before building, so ``auto`` can skip a candidate that cannot win) and
    ``alternative_options`` (another build route to try once when verification fails).
    """

    name: str = ""
    package: str = ""
    builds_on_device_only: bool = False
    keeps_outputs_on_device: bool = False
    raw_config: dict[str, Any] = {}  # noqa: RUF012 - read-only class default

    def discover(self, cpu: CpuInfo) -> tuple[list[Device], str | None, str | None]:
        """Devices this backend sees here, its library version, and a note when it has none."""
        raise NotImplementedError

    def available(self, inventory: Inventory) -> list[Device]:
        """This target's devices in ``inventory``."""
        return devices_of(self.name, inventory)

    def capability(self, model: ir.Model, device: Device) -> dict[str, NodeSupport]:
        """For each node (by name) of the main graph: can it run on ``device``, and if not why."""
        raise NotImplementedError

    def capability_anywhere(self, model: ir.Model) -> dict[str, NodeSupport] | None:
        """The same answer for a device that is not here (a plan for ``--hardware``), when it
        does not depend on the device (an op mapping); ``None`` when only a device can say."""
        return None

    def prepare(self, model: ir.Model, options: TargetOptions) -> ir.Model:
        """Target-specific lowering; returns the model to hand to ``codegen``."""
        return model

    def codegen(
        self, model: ir.Model, device: Device, options: TargetOptions, out_dir: Path
    ) -> Payload:
        """Write the payload for ``device`` into ``out_dir`` (which exists and is empty)."""
        raise NotImplementedError

    def supports_op(self, domain: str, op_type: str) -> bool:
        """Whether a fusion may produce ``domain::op_type`` for this target."""
        raise NotImplementedError

    def tuning_space(
        self, device: Device, config: Mapping[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Executor config overrides worth timing against the payload's own ``config``."""
        return []

    @property
    def can_quantize(self) -> bool:
        """Whether this target implements ``quantize``."""
        return type(self).quantize is not Target.quantize

    def quantize(
        self,
        model: ir.Model,
        device: Device,
        options: TargetOptions,
        request: QuantizationRequest,
        out_dir: Path,
    ) -> QuantizedPayload:
        """Write a low-precision payload for ``device`` into ``out_dir`` (exists, empty)."""
        raise NotImplementedError(f"target {self.name} does not offer quantization")

    def measure_figures(self, device: Device) -> dict[str, Any] | None:
        """Its own cost-model micro-benchmark (``None``: the compiler's generic one)."""
        return None

    def estimate(self, model: ir.Model, device: Device, dims: dict[str, int]) -> float | None:
        """Estimated seconds for one call of ``model`` at ``dims`` (``None``: no estimate)."""
        return None

    def alternative_options(self, options: TargetOptions) -> TargetOptions | None:
        """Options for another build route, tried once when a payload fails verification
        (cuda: the ONNX route after the torch program's); ``None``: there is none."""
        return None


def devices_of(target: str, inventory: Inventory) -> list[Device]:
    """The devices of ``target`` in ``inventory`` (the usual ``available`` implementation)."""
    return [device for device in inventory.devices if device.target == target]


def save_onnx(model: ir.Model, path: Path) -> None:
    """Serialize an IR model to ``path``.

    Tensors go to one external data file beside it (``<name>.data``) when the model is past
    1.8 GB or when its tensors already live in external files elsewhere (``ir.save`` would keep
    pointing at those files, relative to a directory the new model is not in).
    """
    total = 0
    external = False
    for value in model.graph.initializers.values():
        tensor = value.const_value
        if tensor is None:
            continue
        total += tensor.nbytes
        external = external or isinstance(tensor, ir.ExternalTensor)
    if external or total > 1_800_000_000:
        ir.save(model, path, external_data=path.name + ".data")
    else:
        ir.save(model, path)
