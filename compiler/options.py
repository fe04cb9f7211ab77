"""What the user asked a compile for: ``CompileOptions`` and their validation.

Its own module so that every stage (candidates, partitioning, quantization, fusion) can import
it without importing the driver that runs them.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ai_vmm.inputs import Tolerance
from ai_vmm.passes.canonicalize import STEP_NAMES
from ai_vmm.passes.recipes import RECIPES
from ai_vmm.passes.recipes import STEP_NAMES as RECIPE_STEPS
from ai_vmm.quantize import QuantizationOptions, validate_quantization
from ai_vmm.runtime.errors import CompileError
from ai_vmm.samples import Samples

PRECISIONS = ("fp32", "fp16", "bf16")
OBJECTIVES = ("latency", "throughput")


@dataclass(frozen=True)
class CompileOptions:
    """What the user asked for. ``to_json`` is what the manifest and the cache key record."""

    target: str = "auto"
    input_shapes: tuple[str, ...] = ()
    tune: bool = True
    verify: bool = True
    tolerance: Tolerance = field(default_factory=Tolerance)
    precision: str = "fp32"
    disabled_passes: tuple[str, ...] = ()
    tune_budget_s: float = 1.0
    hardware: str | None = None
    """A hardware profile (shipped name or JSON path): plan for that machine, not this one."""
    recipe: str | None = None
    """A fusion recipe by name; ``None``: chosen from the architecture profile."""
    trace_rules: bool = False
    """Record fusion near misses (pattern matched, check declined) in the report."""
    quantization: QuantizationOptions = field(default_factory=QuantizationOptions)
    """INT8 / weight-only / reduced precision, behind the gates of ``ai_vmm.quantize``."""
    samples: Samples | None = None
    """Real inputs: verification and timing run on them, at their shapes (``--sample``)."""
    objective: str = "latency"
    """What a partitioned plan minimizes: ``latency`` (one request at a time) or ``throughput``
    (requests pipelined through the partitions: the busiest device per request)."""

    def to_json(self) -> dict[str, Any]:
        quantization = (
            {"quantization": self.quantization.to_json()}
            if self.quantization.active(self.precision)
            else {}
        )
        samples = {"samples": samples_digest(self.samples)} if self.samples is not None else {}
        return (
            quantization
            | samples
            | {
                "target": self.target,
                "input_shapes": list(self.input_shapes),
                "tune": self.tune,
                "verify": self.verify,
                "tolerance": self.tolerance.to_json(),
                "precision": self.precision,
                "disabled_passes": sorted(self.disabled_passes),
                "tune_seconds": self.tune_budget_s,
                "hardware": self.hardware,
                "recipe": self.recipe,
                "trace_rules": self.trace_rules,
            }
            | ({"objective": self.objective} if self.objective != "latency" else {})
        )


def samples_digest(samples: Samples) -> str:
    """The sha256 of the samples' names, dtypes, shapes and bytes (never a local path)."""
    digest = hashlib.sha256()
    for sample in samples.items:
        for name in sorted(sample):
            array = np.ascontiguousarray(sample[name])
            digest.update(f"{name}|{array.dtype}|{array.shape}|".encode())
            raw = array.tobytes() if array.dtype.kind not in "OUS" else repr(array).encode()
            digest.update(raw)
    return digest.hexdigest()


def validate_options(options: CompileOptions) -> None:
    """Refuse bad options before any work is done.

    Raises:
        CompileError: naming the option and the accepted values.
    """
    if options.precision not in PRECISIONS:
        raise CompileError(
            f"unknown precision '{options.precision}' (choose from {', '.join(PRECISIONS)})"
        )
    validate_quantization(options.quantization)
    passes = (*STEP_NAMES, *RECIPE_STEPS)
    unknown = sorted(set(options.disabled_passes) - set(passes))
    if unknown:
        raise CompileError(
            f"unknown pass {', '.join(unknown)} for --disable-pass (passes: {', '.join(passes)})"
        )
    if options.recipe is not None and options.recipe not in RECIPES:
        raise CompileError(
            f"unknown recipe '{options.recipe}' (recipes: {', '.join(sorted(RECIPES))})"
        )
    if options.objective not in OBJECTIVES:
        raise CompileError(
            f"unknown objective '{options.objective}' (choose from {', '.join(OBJECTIVES)})"
        )
    if options.tune_budget_s <= 0:
        raise CompileError("the tuning budget must be positive")
    if options.tolerance.rtol < 0 or options.tolerance.atol < 0:
        raise CompileError("tolerances must not be negative")
