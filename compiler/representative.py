"""Representative inputs: what verification and timing run on, and the reference's outputs.

In this order: the user's samples (``--sample``), the held-out calibration samples (``--calib``),
or synthetic inputs at shapes the reference runs at (``ai_vmm.shapes``), with timing buckets.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir

from ai_vmm.calibration import split_samples
from ai_vmm.inputs import input_domains
from ai_vmm.options import CompileOptions
from ai_vmm.reference import Reference
from ai_vmm.runtime.errors import VmmError
from ai_vmm.samples import MAX_VERIFY, check_samples, shape_groups
from ai_vmm.shapes import Bucket, ShapeChoice, Variable, choose_shapes, dynamic_variables

Progress = Callable[[str], None]
Sample = dict[str, np.ndarray]


@dataclass
class Inputs:
    """The representative inputs: samples to verify on, buckets to time at, and their source."""

    verify: list[Sample] = field(default_factory=list)
    buckets: list[Bucket] = field(default_factory=list)
    variables: list[Variable] = field(default_factory=list)
    description: str = ""
    report: dict[str, Any] = field(default_factory=dict)
    failure: str | None = None

    @property
    def primary(self) -> Sample | None:
        return self.buckets[0].sample if self.buckets else None


def representative_inputs(
    model: ir.Model,
    signature: tuple[Any, ...],
    reference: Reference,
    options: CompileOptions,
    say: Progress,
) -> Inputs:
    """The user's samples; else the calibration data's; else synthetic shapes (``shapes``)."""
    variables = dynamic_variables(signature)
    inputs = Inputs(variables=variables)
    data = options.quantization.calibration
    if options.samples is not None:
        check_samples(options.samples, signature)
        items = list(options.samples.items)
        inputs.description = f"the given samples ({options.samples.description})"
        inputs.report = {
            **options.samples.to_json(),
            "source": "samples",
            "from": options.samples.description,
        }
    elif data is not None and not data.is_random:
        split = split_samples(data, signature, options.quantization.calib_samples, model)
        items = list(split.held_out or split.calibration)
        inputs.description = f"held-out calibration samples ({data.description})"
        inputs.report = {"source": "calibration", "count": len(items)}
    else:
        needs_reference = reference.runs and (options.verify or options.tune)
        say("choosing representative input shapes")
        shapes: ShapeChoice = choose_shapes(
            signature,
            input_domains(model),
            reference.try_run if needs_reference else None,
            dict(model.metadata_props),
        )
        inputs.report = {"source": shapes.source, **shapes.to_json()}
        inputs.failure = shapes.failure
        if shapes.primary is None:
            if shapes.failure:
                say(f"WARNING: {shapes.failure}")
            return inputs
        inputs.buckets = [shapes.primary, *shapes.buckets]
        inputs.verify = [b.sample for b in inputs.buckets]
        inputs.description = "synthetic (seed 0) at " + "; ".join(
            f"{b.name} {b.sizes}" for b in inputs.buckets
        )
        return inputs
    groups = shape_groups(items)
    for index, group in enumerate(groups):
        sizes = {
            v.name: int(np.shape(group[0][v.axes[0][0]])[v.axes[0][1]])
            for v in variables
            if v.axes[0][0] in group[0]
        }
        name = "primary" if index == 0 else f"shape {index}"
        inputs.buckets.append(Bucket(name, sizes, group[0]))
    inputs.verify = items[:MAX_VERIFY]
    return inputs


def reference_outputs(
    inputs: Inputs, reference: Reference, options: CompileOptions, say: Progress
) -> tuple[list[dict[str, Any]] | None, str]:
    """The reference outputs for every verification sample, or why there are none."""
    if not options.verify:
        return None, "disabled by --no-verify"
    if not reference.comparable:
        return None, reference.note
    if not inputs.verify:
        return None, inputs.failure or "no input could be made for the model"
    say(f"running the reference on {len(inputs.verify)} sample(s)")
    expected = []
    for index, sample in enumerate(inputs.verify):
        try:
            expected.append(reference.outputs(sample))
        except VmmError as exc:
            note = (
                f"ONNX Runtime cannot run the original model on {inputs.description}, "
                f"sample {index}: {exc}"
            )
            inputs.failure = note
            return None, note
    return expected, ""
