"""Canonicalization: the cleanup every model gets before analysis and codegen.

A flat, named list of onnx_ir / onnxscript passes, one comment a step. Each step's node count
lands in the report. Shape inference is best-effort: a model whose shapes ONNX cannot infer is
still compiled (the backends infer shapes themselves), and the report says why it was skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_ir as ir
import onnx_ir.passes.common as common
from onnx_ir.passes.common import _c_api_utils
from onnxscript.optimizer._constant_folding import FoldConstantsPass

# Large constants stay initializers rather than being folded into bigger ones (memory, file size).
_FOLD_INPUT_LIMIT = 1 << 20
_FOLD_OUTPUT_LIMIT = 1 << 22
_SMALL_FILL = 1024
"""Largest ``ConstantOfShape`` (elements) folded too (see :func:`_fold_small_fills`)."""


def _fold_small_fills(node: ir.Node) -> bool | None:
    """onnxscript never folds ``ConstantOfShape`` (so that a fill does not grow the file), and
    everything computed from one stays unfolded with it: ``F.pad``'s exported pads are
    Concat/Reshape/Slice/Transpose of a ConstantOfShape of 2 zeros (Silero VAD). A small fill is
    folded; ``None`` leaves every other node to onnxscript's own rules."""
    if node.op_type != "ConstantOfShape" or not node.inputs or node.inputs[0] is None:
        return None
    shape = node.inputs[0].const_value
    if shape is None:
        return None
    return int(np.prod(shape.numpy())) <= _SMALL_FILL or None


class ScopedIdentityEliminationPass(common.IdentityEliminationPass):
    """onnx_ir's Identity elimination, keeping the Identity nodes that name a graph output when
    their input belongs to another scope or already names an output.

    onnx_ir 1.1 removes ``y = Identity(x)`` where ``y`` is an ``If``/``Loop`` branch output and
    ``x`` an outer-scope value, then renames ``x`` to ``y``: the branch returns an outer value
    directly (ONNX Runtime: "invalid model. Subgraph output ... is not produced by any node") and
    the main graph's value loses its name. With two outputs ``Identity(x)``, one name is lost.
    """

    def _try_eliminate_identity_node(self, node: ir.Node) -> bool:
        if node.op_type == "Identity" and node.domain == "" and len(node.inputs) == 1:
            source, output = node.inputs[0], node.outputs[0]
            if source is not None and output.is_graph_output():
                producer = source.producer()
                if producer is None or producer.graph is not node.graph:
                    return False
                if source.is_graph_output():
                    return False
        eliminated: bool = super()._try_eliminate_identity_node(node)
        return eliminated


class TolerantFoldConstantsPass(FoldConstantsPass):
    """onnxscript's constant folding, except that a folding rule that crashes on one node leaves
    that node as it is instead of failing the whole model.

    onnxscript 0.7's ``SplitToSequence`` rule, for one, reads the value of a ``split`` input that
    is a scalar graph input (``'NoneType' object has no attribute 'ndim'``). Before the rule runs,
    ``process_node`` only merges value types, so skipping the node leaves the graph unchanged.
    """

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.unfolded: list[str] = []
        """``op_type: error`` of each node whose folding rule raised."""
        self.modified = False

    def process_node(self, node: ir.Node, is_function: bool) -> Any:
        try:
            return super().process_node(node, is_function)
        except RuntimeError as exc:
            if not str(exc).startswith("Error during constant folding"):
                raise
            cause = exc.__cause__ or exc
            self.unfolded.append(f"{node.op_type}: {type(cause).__name__}: {cause}"[:200])
            return None


class TypeSafeShapeInferencePass(common.ShapeInferencePass):
    """onnx_ir's ONNX shape inference, merged back by whole type instead of by element type.

    onnx_ir 1.1 merges the inferred ``dtype`` into each value: for an untyped sequence or
    optional value (a ``SequenceConstruct`` in an ``If`` branch) that makes it a *tensor* of the
    element type, and ONNX Runtime then rejects the model ("Type (tensor(float)) of output arg
    ... does not match expected type (seq(tensor(float)))").
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        def infer(proto: onnx.ModelProto) -> onnx.ModelProto:
            return onnx.shape_inference.infer_shapes(
                proto,
                check_type=self.check_type,
                strict_mode=self.strict_mode,
                data_prop=self.data_prop,
            )

        try:
            inferred = ir.serde.deserialize_model(_c_api_utils.call_onnx_api(infer, model))
        except Exception:  # the model stays as it was, like onnx_ir's own pass
            return ir.passes.PassResult(model, False)
        modified = False
        for graph, inferred_graph in zip(model.graphs(), inferred.graphs(), strict=False):
            found = ir.convenience.create_value_mapping(inferred_graph)
            for name, value in ir.convenience.create_value_mapping(graph).items():
                new = found.get(name)
                if new is None or new.type is None:
                    continue
                if value.type is not None and not isinstance(value.type, type(new.type)):
                    continue  # never turn a sequence into a tensor or back
                if value.type != new.type:
                    value.type = new.type
                    modified = True
                if new.shape is not None and value.shape != new.shape:
                    value.shape = new.shape
                    modified = True
        return ir.passes.PassResult(model, modified)


def _steps() -> list[tuple[str, Callable[[], ir.passes.PassBase]]]:
    return [
        # Drop nodes whose outputs nobody reads, and initializers nobody uses.
        ("remove_unused", common.RemoveUnusedNodesPass),
        # Identity nodes are pure renames; keep the ones that name graph outputs.
        ("identity_elimination", ScopedIdentityEliminationPass),
        # Evaluate subgraphs whose inputs are all constants (shape arithmetic, reshapes of weights).
        (
            "constant_folding",
            lambda: TolerantFoldConstantsPass(
                shape_inference=False,
                input_size_limit=_FOLD_INPUT_LIMIT,
                output_size_limit=_FOLD_OUTPUT_LIMIT,
                should_fold=_fold_small_fills,
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
    notes: list[str] = field(default_factory=list)
    """What a step did not do that it normally would (e.g. a node it could not fold)."""

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "node_counts": [list(item) for item in self.node_counts],
            "modified": self.modified,
            "skipped": self.skipped,
        }
        if self.notes:
            data["notes"] = self.notes
        return data


def _fold_on_clone(step: TolerantFoldConstantsPass, model: ir.Model) -> str | None:
    """Fold a clone of ``model`` and adopt its graph; on failure leave ``model`` unfolded.

    The clone shares every tensor, so this costs graph bookkeeping only. It is needed because
    onnxscript's folding can fail half-way through a rewrite, after it has already changed the
    graph: inlining an ``If`` whose branch returns an initializer (the AffineGrid function body)
    raises "is already an output of a different graph" with the branch emptied.

    Returns:
        ``None`` when folding succeeded, else why the step was skipped.
    """
    trial = model.clone()
    try:
        result = step(trial)
    except Exception as exc:  # any library error: the unfolded model is still correct
        return (
            "failed, model left unfolded: " + " ".join(f"{type(exc).__name__}: {exc}".split())[:200]
        )
    step.modified = bool(result.modified)
    if step.modified:
        model.graph = trial.graph
        model.functions.clear()
        model.functions.update(trial.functions)
    return None


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
        step = make()
        if isinstance(step, TolerantFoldConstantsPass):
            failure = _fold_on_clone(step, model)
            if failure is not None:
                report.skipped[name] = failure
                report.node_counts.append((name, count_nodes(model)))
                continue
            report.modified[name] = step.modified
        else:
            report.modified[name] = bool(step(model).modified)
        if isinstance(step, TolerantFoldConstantsPass) and step.unfolded:
            report.notes.append(f"{name} left nodes as they were: {'; '.join(step.unfolded)}")
        report.node_counts.append((name, count_nodes(model)))
    if "shape_inference" in disabled:
        report.skipped["shape_inference"] = "disabled by option"
    else:
        try:
            result = TypeSafeShapeInferencePass(strict_mode=False)(model)
            report.modified["shape_inference"] = bool(result.modified)
        except Exception as exc:
            report.skipped["shape_inference"] = " ".join(str(exc).split())[:200]
    return report
