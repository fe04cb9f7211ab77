"""The fusion stage: a fused copy of the model, shaped by the ops its target(s) run.

Used by the single-target candidates (``ai_vmm.candidates``, one fusion per target) and by the
driver's partitioned builds (one fusion every candidate's target runs).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import onnx_ir as ir
from onnx_ir.passes.common import NameFixPass

from ai_vmm import registry
from ai_vmm.options import CompileOptions
from ai_vmm.passes.recipes import apply_recipe
from ai_vmm.runtime.devices import Device


def fuse_for_all(
    model: ir.Model, recipe: str, devices: list[Device], options: CompileOptions
) -> tuple[ir.Model, dict[str, Any]]:
    """Fuse a copy of ``model`` with only the ops every candidate's target runs."""
    targets = [registry.get_target(t) for t in sorted({d.target for d in devices})]
    return fuse(
        model,
        recipe,
        options,
        "+".join(t.name for t in targets),
        lambda domain, op: all(t.supports_op(domain, op) for t in targets),
    )


def fuse(
    model: ir.Model,
    recipe: str,
    options: CompileOptions,
    target: str,
    supported_ops: Callable[[str, str], bool],
) -> tuple[ir.Model, dict[str, Any]]:
    """A fused copy of ``model``; if a fusion breaks, the unfused model and the reason.

    Fusion is an optimization: it must never be why a compile fails.
    """
    fused = model.clone()
    try:
        report = apply_recipe(
            fused,
            recipe,
            target=target,
            supported_ops=supported_ops,
            disabled=frozenset(options.disabled_passes),
            trace=options.trace_rules,
        )
    except Exception as exc:
        return model.clone(), {"recipe": recipe, "target": target, "error": one_line(exc)}
    # Rewrites create nodes without names; capability and partition plans key nodes by name.
    NameFixPass()(fused)
    return fused, report.to_json()


def one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text[:300]}" if text else exc.__class__.__name__
