"""Model analysis: architecture labels with evidence, FLOPs, parameters, activation memory.

``analyze(model, dims)`` never changes ``model``. It works on a copy whose symbolic input
dimensions take the sizes in ``dims`` (the shapes the compile runs on) or, where ``dims`` says
nothing, a documented default (batch 1, sequence 128, spatial 224; see
``ai_vmm.passes.concrete_shapes``), with constants folded and shapes inferred: every tensor then
has a concrete shape and FLOPs can be counted. The profile records each size and where it came
from. The work is split in three modules:

- ``concrete_shapes``: the sizes of symbolic dims and the concrete copy;
- ``flops``: FLOPs per node and op class, parameters, activation memory (the cost model uses the
  same per-node count);
- ``classify``: match-only patterns, evidence and the labels' confidence formulas.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from ai_vmm.passes.classify import Label, collect_evidence, score_labels
from ai_vmm.passes.concrete_shapes import (
    BATCH_SIZE,
    SEQUENCE_SIZE,
    SPATIAL_SIZE,
    concrete_copy,
    dims_from_shapes,
    nodes,
)
from ai_vmm.passes.flops import count_flops, count_params, node_flops, peak_activation_bytes

OTHER_DIM_SIZE = SEQUENCE_SIZE
"""The default of a symbolic dim that is neither batch nor spatial (kept for older callers)."""

__all__ = [
    "BATCH_SIZE",
    "OTHER_DIM_SIZE",
    "SEQUENCE_SIZE",
    "SPATIAL_SIZE",
    "Label",
    "ModelProfile",
    "analyze",
    "dims_from_shapes",
    "format_profile",
    "node_flops",
]


@dataclass
class ModelProfile:
    """What ``analyze`` found. ``labels`` is sorted by confidence, the first is the primary.

    FLOPs, activation memory and shapes are evaluated at ``assumed_dims`` (see
    ``dim_sources`` and ``shape_note``); ``flops`` counts a multiply-add as 2.
    """

    labels: list[Label] = field(default_factory=list)
    flops: dict[str, int] = field(default_factory=dict)
    total_flops: int = 0
    params: int = 0
    param_bytes: int = 0
    params_in_constant_nodes: int = 0
    activation_bytes: int = 0
    op_histogram: dict[str, int] = field(default_factory=dict)
    dynamic_dims: dict[str, list[int | str | None]] = field(default_factory=dict)
    assumed_dims: dict[str, int] = field(default_factory=dict)
    """The size every symbolic input dimension had for the counts."""
    dim_sources: dict[str, str] = field(default_factory=dict)
    """Per dim of ``assumed_dims``: ``given`` (by the caller) or its default's role."""
    patterns: dict[str, int] = field(default_factory=dict)
    nodes: int = 0
    opset: int = 0
    shape_note: str = ""
    notes: list[str] = field(default_factory=list)

    @property
    def primary_label(self) -> str | None:
        """The most confident label, or None when nothing passed the threshold."""
        return self.labels[0].label if self.labels else None

    @property
    def flop_share(self) -> dict[str, float]:
        """Each op class's fraction of ``total_flops``."""
        total = self.total_flops or 1
        return {k: round(v / total, 4) for k, v in self.flops.items()}

    def to_json(self) -> dict[str, Any]:
        """The profile for ``report.json`` (``vmmc inspect`` reads ``primary_label`` there)."""
        return {
            "primary_label": self.primary_label,
            "labels": [label.to_json() for label in self.labels],
            "flops": {"total": self.total_flops, "by_class": dict(self.flops)},
            "flop_share": self.flop_share,
            "params": self.params,
            "param_bytes": self.param_bytes,
            "params_in_constant_nodes": self.params_in_constant_nodes,
            "activation_bytes": self.activation_bytes,
            "op_histogram": dict(self.op_histogram),
            "dynamic_dims": {k: list(v) for k, v in self.dynamic_dims.items()},
            "assumed_dims": dict(self.assumed_dims),
            "dim_sources": dict(self.dim_sources),
            "shape_note": self.shape_note,
            "patterns": dict(self.patterns),
            "nodes": self.nodes,
            "opset": self.opset,
            "notes": list(self.notes),
        }


def analyze(model: ir.Model, dims: Mapping[str, int] | None = None) -> ModelProfile:
    """Profile ``model`` (unchanged): labels with evidence, FLOPs, parameters, memory.

    Args:
        model: the model; best canonicalized first (constants lifted, shapes inferred), but any
            valid model works.
        dims: the size of each symbolic input dimension, by name (``{"batch": 8,
            "sequence": 384}``; an unnamed one as ``"input_ids[1]"``), e.g. the shapes of the
            inputs the compile runs on (``dims_from_shapes``). Dims it leaves out take the
            defaults of ``ai_vmm.passes.concrete_shapes`` (batch 1, sequence 128, spatial 224).

    Returns:
        The profile. FLOPs and activation memory are evaluated at ``profile.assumed_dims``
        (``profile.dim_sources`` says which were given and which defaulted).

    Raises:
        InputError: a size in ``dims`` is not a positive integer.
    """
    concrete = concrete_copy(model, dims)
    copy = concrete.model
    evidence = collect_evidence(copy)
    flops = count_flops(concrete, frozenset(evidence.attention_matmuls))
    notes = list(concrete.notes)
    if flops.uncounted:
        notes.append(f"{flops.uncounted} compute nodes have unknown shapes: their FLOPs count as 0")
    params, param_bytes, in_nodes = count_params(model)
    profile = ModelProfile(
        flops=flops.by_class,
        total_flops=flops.total,
        params=params,
        param_bytes=param_bytes,
        params_in_constant_nodes=in_nodes,
        activation_bytes=peak_activation_bytes(copy),
        op_histogram=dict(
            sorted(
                Counter(
                    f"{n.domain}::{n.op_type}" if n.domain not in ("", "ai.onnx") else n.op_type
                    for n in nodes(model.graph)
                ).items(),
                key=lambda item: (-item[1], item[0]),
            )
        ),
        dynamic_dims={
            v.name or f"input{i}": [
                d if isinstance(d, int) else (str(d) if d.value is not None else None)
                for d in v.shape
            ]
            for i, v in enumerate(model.graph.inputs)
            if v.shape is not None and not v.shape.is_static()
        },
        assumed_dims=dict(concrete.dims.sizes),
        dim_sources=dict(concrete.dims.sources),
        patterns={k: v for k, v in sorted(evidence.patterns.items()) if v},
        nodes=sum(1 for _ in nodes(model.graph)),
        opset=int(model.opset_imports.get("", 0) or 0),
        shape_note=concrete.dims.note(),
        notes=notes,
    )
    profile.labels = score_labels(evidence, profile.flop_share)
    return profile


def _human(count: float, unit: str = "") -> str:
    for scale, suffix in ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(count) >= scale:
            return f"{count / scale:.2f} {suffix}{unit}"
    return f"{count:.0f} {unit}".rstrip()


def format_profile(profile: ModelProfile, *, top_ops: int = 12) -> str:
    """The profile as text for ``vmmc inspect``."""
    lines = []
    if profile.labels:
        lines.append("architecture:")
        for label in profile.labels:
            patterns = ", ".join(f"{k}={v}" for k, v in label.evidence["patterns"].items())
            lines.append(f"  {label.label:20} {label.confidence:.2f}  {patterns}")
    else:
        lines.append("architecture: unknown (no label passed the threshold)")
    lines.append(f"FLOPs:      {_human(profile.total_flops, 'FLOP')} ({profile.shape_note})")
    for op_class, share in sorted(profile.flop_share.items(), key=lambda item: -item[1]):
        lines.append(f"  {op_class:14} {share * 100:5.1f}%  {_human(profile.flops[op_class])}")
    lines.append(
        f"parameters: {_human(profile.params)} ({_human(profile.param_bytes, 'B')}"
        + (
            f", {_human(profile.params_in_constant_nodes)} in Constant nodes)"
            if profile.params_in_constant_nodes
            else ")"
        )
    )
    lines.append(f"activations (peak estimate): {_human(profile.activation_bytes, 'B')}")
    if profile.dynamic_dims:
        dims = "; ".join(f"{k} {v}" for k, v in profile.dynamic_dims.items())
        lines.append(f"dynamic inputs: {dims}")
    lines.append(f"nodes: {profile.nodes} (opset {profile.opset})")
    ops = list(profile.op_histogram.items())
    shown = ", ".join(f"{op} {n}" for op, n in ops[:top_ops])
    more = f", ... ({len(ops) - top_ops} more)" if len(ops) > top_ops else ""
    lines.append(f"ops: {shown}{more}")
    if profile.patterns:
        lines.append("patterns: " + ", ".join(f"{k}={v}" for k, v in profile.patterns.items()))
    lines.extend(f"note: {note}" for note in profile.notes)
    return "\n".join(lines)
