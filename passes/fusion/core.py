"""The fusion contract: a named group of onnxscript rewrite rules, and how it is applied.

A :class:`FusionRule` is one step of a recipe. It bundles the onnxscript ``RewriteRule``\\ s that
implement one fusion (their commuted variants included), and states what the replacement needs
from a target: the ops it produces (``(domain, op_type)``), the ONNX opset those ops need, and,
for vendor-specific fusions, the only targets it is meant for. :func:`apply_fusion` counts every
application per onnxscript rule, and with ``trace=True`` records the near misses: matches whose
``check`` declined, with the check's reason.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_ir as ir
import onnx_ir.passes.common as common_passes
from onnxscript.rewriter import _ir_utils, pattern
from onnxscript.rewriter._basics import MatchingTracer, MatchResult, MatchStatus
from onnxscript.rewriter._rewrite_rule import RewriteRule, RewriteRuleSet

# The matcher's reason when a pattern matched structurally but an intermediate value is read
# outside the match: a near miss as real as a failed check.
_OTHER_USES = "Matched nodes have other uses preventing replacement."
_MAX_NEAR_MISSES = 50


@dataclass(frozen=True)
class FusionRule:
    """One fusion step: onnxscript rules tried together, and what their replacement needs.

    Attributes:
        name: the step name used by recipes, ``--disable-pass`` and the report.
        family: the module (rule family) it comes from, e.g. ``"normalization"``.
        rules: the onnxscript rules, in priority order.
        produces: ``(domain, op_type)`` of every op the replacements create; the target must
            support all of them (``""`` is the standard ONNX domain).
        min_opset: the standard-domain opset the replacement ops need (0: any).
        targets: the only targets the fusion is meant for (``None``: every target).
        origin: ``"onnxscript"`` for rules onnxscript ships, ``"ai-vmm"`` for our own.
        summary: one line for reports and docs.
        requires: op types every match contains; a model without one of them is not searched
            (matching dozens of rule variants against every node of a large model costs
            seconds).
        avoid_on: targets that run the fusion's output but were measured slower on it, with
            the reason; the recipe skips the fusion for them.
    """

    name: str
    family: str
    rules: tuple[RewriteRule, ...]
    produces: tuple[tuple[str, str], ...]
    min_opset: int = 0
    targets: frozenset[str] | None = None
    origin: str = "ai-vmm"
    summary: str = ""
    requires: frozenset[str] = frozenset()
    avoid_on: Mapping[str, str] = field(default_factory=dict)

    def could_match(self, model: ir.Model) -> bool:
        """False when the model lacks an op type every match needs."""
        if not self.requires:
            return True
        present = {node.op_type for node in ir.traversal.RecursiveGraphIterator(model.graph)}
        return self.requires <= present

    def rule_set(self) -> RewriteRuleSet:
        """All rules as one onnxscript rule set (used for match-only tracing)."""
        return RewriteRuleSet(list(self.rules))


@dataclass(frozen=True)
class NearMiss:
    """A pattern that matched but was not rewritten, and why."""

    rule: str
    node: str
    op_type: str
    reason: str

    def to_json(self) -> dict[str, str]:
        return {
            "rule": self.rule,
            "node": self.node,
            "op_type": self.op_type,
            "reason": self.reason,
        }


@dataclass
class FusionResult:
    """What one :func:`apply_fusion` call did."""

    count: int = 0
    per_rule: dict[str, int] = field(default_factory=dict)
    near_misses: list[NearMiss] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return {
            "count": self.count,
            "per_rule": dict(self.per_rule),
            "near_misses": [m.to_json() for m in self.near_misses],
        }


class NearMissTracer(MatchingTracer):
    """Keeps every declined match (onnxscript's own tracer keeps only the best-scoring one)."""

    def __init__(self) -> None:
        super().__init__()
        self.near_misses: list[NearMiss] = []
        self.successes = 0

    def log(
        self,
        rule: RewriteRule,
        container: ir.Graph | ir.Function,
        node: ir.Node,
        match_result: MatchResult,
        status: MatchStatus,
    ) -> None:
        if status == MatchStatus.SUCCESS:
            self.successes += 1
            return
        declined = status in (MatchStatus.CONDITION_FAILED, MatchStatus.REPLACEMENT_FAILED)
        if not declined and match_result.reason != _OTHER_USES:
            return
        reason = match_result.reason or status.name
        self.near_misses.append(
            NearMiss(
                rule=str(rule),
                node=node.name or "",
                op_type=node.op_type,
                reason=" ".join(reason.split())[:300],
            )
        )


def _groups(rules: Sequence[RewriteRule]) -> list[tuple[str, list[RewriteRule]]]:
    """Rules grouped by name, in first-seen order (commuted variants share their rule's name)."""
    groups: dict[str, list[RewriteRule]] = {}
    for index, rule in enumerate(rules):
        groups.setdefault(rule.name or f"rule{index}", []).append(rule)
    return list(groups.items())


def count_matches(model: ir.Model, fusion: FusionRule) -> int:
    """How many times ``fusion`` would fire now, without changing ``model``."""
    if not fusion.could_match(model):
        return 0
    tracer = NearMissTracer()
    fusion.rule_set().apply_to_model(model, tracer=tracer)
    return tracer.successes


def trace_near_misses(model: ir.Model, fusion: FusionRule) -> list[NearMiss]:
    """The matches of ``fusion`` whose check declined (or that other uses blocked), unchanged."""
    if not fusion.could_match(model):
        return []
    tracer = NearMissTracer()
    fusion.rule_set().apply_to_model(model, tracer=tracer)
    unique = list(dict.fromkeys(tracer.near_misses))
    return unique[:_MAX_NEAR_MISSES]


def apply_fusion(model: ir.Model, fusion: FusionRule, *, trace: bool = False) -> FusionResult:
    """Apply ``fusion`` to ``model`` in place, counting applications per onnxscript rule.

    Args:
        model: the model to rewrite.
        fusion: the fusion step.
        trace: afterwards, also record the matches that did not fire and why.

    Returns:
        Total and per-rule application counts, and near misses when ``trace`` is set.
    """
    result = FusionResult()
    if not fusion.could_match(model):
        return result
    for name, rules in _groups(fusion.rules):
        applied = RewriteRuleSet(rules).apply_to_model(model)
        if applied:
            result.per_rule[name] = result.per_rule.get(name, 0) + applied
            result.count += applied
    if result.count:
        # Replaced nodes leave their now-unread inputs' producers behind; a later fusion's
        # matcher would see those as "other uses" of values it wants to replace.
        common_passes.RemoveUnusedNodesPass()(model)
    if trace:
        result.near_misses = trace_near_misses(model, fusion)
    return result


def constant_array(value: ir.Value | None) -> np.ndarray | None:
    """The value's constant contents, or None (a graph input is never constant: callers feed it)."""
    if value is None or value.is_graph_input():
        return None
    return _ir_utils.get_numpy_value(value)


def constant_scalar(value: ir.Value | None) -> float | None:
    """The single element of a constant value as a float, or None."""
    array = constant_array(value)
    if array is None or array.size != 1:
        return None
    return float(array.reshape(()))


def rule_class(cls: type[pattern.RewriteRuleClassBase], *args: Any, **kwargs: Any) -> RewriteRule:
    """``cls.rule(...)`` typed for mypy (onnxscript's classmethod is untyped)."""
    rule: RewriteRule = cls.rule(*args, **kwargs)
    return rule
