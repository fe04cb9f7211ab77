"""Canonicalization: the cleanup every model gets before analysis and codegen.

A flat, named list of onnx_ir / onnxscript passes, one comment a step. Each step's node count
lands in the report. Shape inference is best-effort: a model whose shapes ONNX cannot infer is
still compiled (the backends infer shapes themselves), and the report says why it was skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript.optimizer._constant_folding import FoldConstantsPass

# Large constants stay initializers rather than being folded into bigger ones (memory, file size).
_FOLD_INPUT_LIMIT = 1 << 20
_FOLD_OUTPUT_LIMIT = 1 << 22


def _steps() -> list[tuple[str, Callable[[], ir.passes.PassBase]]]:
    return [
        # Drop nodes whose outputs nobody reads, and initializers nobody uses.
        ("remove_unused", common.RemoveUnusedNodesPass),
        # Identity nodes are pure renames; keep the ones that name graph outputs.
        ("identity_elimination", common.IdentityEliminationPass),
        # Evaluate subgraphs whose inputs are all constants (shape arithmetic, reshapes of weights).
        (
            "constant_folding",
            lambda: FoldConstantsPass(
                shape_inference=False,
                input_size_limit=_FOLD_INPUT_LIMIT,
                output_size_limit=_FOLD_OUTPUT_LIMIT,
            ),
        ),
        # Folding leaves dead producers behind.
        ("remove_unused_after_folding", common.RemoveUnusedNodesPass),
        # The same op on the same inputs computed twice: keep one.
        ("common_subexpression_elimination", common.CommonSubexpressionEliminationPass),
        # Constant nodes become initializers, so every target sees weights the same way.
        (
            "lift_constants",
            lambda: common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        ),
        # A graph output that is an input or an initializer gets an Identity (targets need a node).
        ("output_fix", common.OutputFixPass),
        # Every node and value gets a unique name: partitions and reports refer to nodes by name.
        ("name_fix", common.NameFixPass),
        ("topological_sort", common.TopologicalSortPass),
    ]


STEP_NAMES: tuple[str, ...] = (*[name for name, _ in _steps()], "shape_inference")


@dataclass
class CanonicalizeReport:
    """Node counts per step, and the steps that were skipped with their reason."""

    node_counts: list[tuple[str, int]] = field(default_factory=list)
    """``(step, nodes after it)`` in the order the steps ran, starting with the input."""
    modified: dict[str, bool] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {
            "node_counts": [list(item) for item in self.node_counts],
            "modified": self.modified,
            "skipped": self.skipped,
        }


def count_nodes(model: ir.Model) -> int:
    """Nodes in the main graph and every subgraph (If / Loop / Scan bodies)."""
    return sum(1 for _ in ir.traversal.RecursiveGraphIterator(model.graph))


def canonicalize(model: ir.Model, disabled: frozenset[str] = frozenset()) -> CanonicalizeReport:
    """Run the canonicalization steps on ``model`` in place; ``disabled`` names steps to skip."""
    report = CanonicalizeReport()
    report.node_counts.append(("input", count_nodes(model)))
    for name, make in _steps():
        if name in disabled:
            report.skipped[name] = "disabled by option"
            continue
        result = make()(model)
        report.modified[name] = bool(result.modified)
        report.node_counts.append((name, count_nodes(model)))
    if "shape_inference" in disabled:
        report.skipped["shape_inference"] = "disabled by option"
    else:
        try:
            result = common.ShapeInferencePass(strict_mode=False)(model)
            report.modified["shape_inference"] = bool(result.modified)
        except Exception as exc:
            report.skipped["shape_inference"] = " ".join(str(exc).split())[:200]
    return report
