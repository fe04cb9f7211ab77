"""Recipes: one named, flat list of fusion steps per architecture, chosen from the profile.

Each step is a fusion from :data:`ai_vmm.passes.fusion.FUSIONS` or a clean-up pass from
:data:`CLEANUP_STEPS`; one comment a step. :func:`apply_recipe` runs a recipe for one target:

* a step named in ``disabled`` is not run (``--disable-pass NAME``);
* a fusion whose replacement ops the target cannot run (``supported_ops(domain, op_type)``
  answers no, or the fusion is meant for other targets, like com.microsoft ops outside the
  onnxruntime target) is not applied: the report says which and why, and how often it would
  have fired. A fusion never makes a compile fail;
* a fusion that needs a newer ONNX opset (``Attention``, ``RMSNormalization`` and
  ``RotaryEmbedding`` are opset 23, ``Gelu`` opset 20) raises the model's opset with
  onnxscript's version converter first, and only when it would fire;
* every application is counted per onnxscript rule, node counts are recorded after every step,
  and with ``trace`` the near misses of every fusion step (pattern matched, check declined,
  with the check's reason).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir
import onnx_ir.passes.common as common
from onnxscript import version_converter

from ai_vmm.passes.canonicalize import STEP_NAMES as CANONICALIZE_STEPS
from ai_vmm.passes.canonicalize import count_nodes
from ai_vmm.passes.fusion import FUSIONS, FusionRule, NearMiss, apply_fusion, count_matches
from ai_vmm.passes.fusion.core import trace_near_misses

SupportedOps = Callable[[str, str], bool]

# Clean-up after the fusions: rewrites leave dead producers, duplicate shape arithmetic (each
# rotary rewrite builds its own cache shape), and unsorted new nodes.
CLEANUP_STEPS: dict[str, Callable[[], ir.passes.PassBase]] = {
    "cleanup": lambda: ir.passes.Sequential(
        common.RemoveUnusedNodesPass(),
        common.CommonSubexpressionEliminationPass(),
        common.RemoveUnusedNodesPass(),
        common.RemoveUnusedOpsetsPass(),
        common.NameFixPass(),
        common.TopologicalSortPass(),
    ),
}

_CNN = [
    "conv_bn",  # BatchNormalization folded into the Conv before it
    "conv_transpose_bn",  # ... and into ConvTranspose
    "conv_add_bias",  # a per-channel Add after a Conv becomes its bias
    "gemm_bn",  # BatchNormalization after the classifier's Gemm
    "hardswish",  # Clip(x+3,0,6)/6 -> HardSigmoid, x*HardSigmoid(x) -> HardSwish
    "min_max_to_clip",  # Min(Max(x, a), b) -> Clip
    "relu_clip_merge",  # Relu/Clip chains merged
    "matmul_add_to_gemm",  # a 2-D classifier MatMul + bias -> Gemm
    "fused_conv",  # onnxruntime: activation(Conv) -> FusedConv
    "fused_gemm",  # onnxruntime: activation(Gemm) -> FusedGemm
]

_MLP = [
    "matmul_add_to_gemm",  # 2-D MatMul + bias -> Gemm
    "gemm_bn",  # BatchNormalization after a Gemm folded into it
    "relu_clip_merge",  # Relu/Clip chains merged
    "fused_gemm",  # onnxruntime: activation(Gemm) -> FusedGemm
]

_TRANSFORMER = [
    "layer_norm",  # decomposed LayerNorm -> LayerNormalization
    "gelu_erf",  # 0.5x(1+erf(x/sqrt2)) -> Gelu
    "gelu_tanh",  # tanh-approximated GELU -> Gelu(approximate="tanh")
    "attention",  # MatMul-Softmax-MatMul (torch SDPA, NaN-guarded) -> Attention (opset 23)
    "attention_unguarded",  # the same core without the guard (eager attention)
    "matmul_add_to_gemm",  # 2-D projections (pooler, classifier head) -> Gemm
    "skip_layer_norm",  # onnxruntime: LayerNorm(x + residual) -> SkipLayerNormalization
    "bias_gelu",  # onnxruntime: Gelu(x + b) -> BiasGelu
    "fused_matmul",  # onnxruntime: MatMul with transposes/scales -> FusedMatMul
]

RECIPES: dict[str, list[str]] = {
    "default": [
        *_CNN[:4],  # conv_bn, conv_transpose_bn, conv_add_bias, gemm_bn
        "matmul_add_to_gemm",  # 2-D MatMul + bias -> Gemm
        "layer_norm",  # decomposed LayerNorm -> LayerNormalization
        "rms_norm",  # decomposed RMSNorm -> RMSNormalization (opset 23)
        "gelu_erf",  # erf GELU -> Gelu
        "gelu_tanh",  # tanh GELU -> Gelu(approximate="tanh")
        "rotary",  # rotate-half RoPE -> RotaryEmbedding (opset 23)
        "attention",  # attention core -> Attention (opset 23)
        "attention_unguarded",  # the same core without a NaN guard (eager attention)
        "attention_gqa",  # repeat_kv folded into Attention's KV heads
        "cleanup",  # dead nodes, duplicates, order
    ],
    "cnn": [*_CNN, "cleanup"],
    # A detector's backbone is a CNN; box decoding and NMS have nothing to fuse.
    "detector": [*_CNN, "cleanup"],
    "mlp": [*_MLP, "cleanup"],
    # Embedding lookups and the feature interaction stay as they are; the MLPs get fused.
    "recommender": [*_MLP, "cleanup"],
    # LSTM/GRU/RNN are already single ops; the heads around them are Gemms.
    "rnn": [*_MLP, "cleanup"],
    "cnn-rnn": [*_CNN, "cleanup"],
    "transformer": [*_TRANSFORMER, "cleanup"],
    "vision-transformer": [
        "conv_add_bias",  # the patch embedding Conv keeps its bias inside
        *_TRANSFORMER,
        "cleanup",
    ],
    "decoder": [
        "layer_norm",  # GPT-style LayerNorm -> LayerNormalization
        "rms_norm",  # Llama-style RMSNorm -> RMSNormalization (opset 23)
        "gelu_erf",  # erf GELU -> Gelu
        "gelu_tanh",  # GPT-2's tanh GELU -> Gelu(approximate="tanh")
        "rotary",  # rotate-half RoPE -> RotaryEmbedding (before attention: it feeds Q and K)
        "rotary_partial",  # RoPE on part of the head -> rotary_embedding_dim
        "attention",  # attention core -> Attention (opset 23)
        "attention_unguarded",  # the same core without a NaN guard (eager attention)
        "attention_gqa",  # repeat_kv folded into Attention's KV heads
        "matmul_add_to_gemm",  # 2-D projections -> Gemm
        "skip_layer_norm",  # onnxruntime: LayerNorm(x + residual) -> SkipLayerNormalization
        "bias_gelu",  # onnxruntime: Gelu(x + b) -> BiasGelu
        "fused_matmul",  # onnxruntime: MatMul with transposes/scales -> FusedMatMul
        "cleanup",
    ],
    "encoder-decoder": [
        "layer_norm",  # LayerNorm -> LayerNormalization
        "rms_norm",  # T5-style RMSNorm -> RMSNormalization (opset 23)
        "gelu_erf",  # erf GELU -> Gelu
        "gelu_tanh",  # tanh GELU -> Gelu(approximate="tanh")
        "attention",  # self- and cross-attention cores -> Attention (opset 23)
        "attention_unguarded",  # T5's eager cores (no NaN guard)
        "attention_gqa",  # repeat_kv folded into Attention's KV heads
        "matmul_add_to_gemm",  # 2-D projections -> Gemm
        "skip_layer_norm",  # onnxruntime: LayerNorm(x + residual) -> SkipLayerNormalization
        "bias_gelu",  # onnxruntime: Gelu(x + b) -> BiasGelu
        "fused_matmul",  # onnxruntime: MatMul with transposes/scales -> FusedMatMul
        "cleanup",
    ],
    # Nothing but the clean-up: what --recipe none gives.
    "none": ["cleanup"],
}

# The recipe for each architecture label of ai_vmm.passes.analyze.
RECIPE_FOR_LABEL: dict[str, str] = {
    "cnn": "cnn",
    "detector": "detector",
    "mlp": "mlp",
    "recommender": "recommender",
    "rnn": "rnn",
    "cnn-rnn": "cnn-rnn",
    "transformer-encoder": "transformer",
    "vision-transformer": "vision-transformer",
    "causal-decoder": "decoder",
    "encoder-decoder": "encoder-decoder",
}

STEP_NAMES: tuple[str, ...] = (*FUSIONS, *CLEANUP_STEPS)


@dataclass
class StepReport:
    """What one recipe step did.

    Attributes:
        name: the step name.
        status: ``applied`` (fired at least once), ``no match``, ``skipped`` (target awareness
            or an opset that could not be raised), ``disabled`` or ``ran`` (clean-up passes).
        count: applications (0 unless applied).
        per_rule: applications per onnxscript rule.
        nodes_after: nodes in the model (subgraphs included) after the step.
        reason: why a step was skipped or disabled.
        would_fire: for a skipped fusion, how often its pattern matched and passed its checks.
        near_misses: with ``trace``, matches whose check declined, with the reason.
    """

    name: str
    status: str
    count: int = 0
    per_rule: dict[str, int] = field(default_factory=dict)
    nodes_after: int = 0
    reason: str = ""
    would_fire: int = 0
    near_misses: list[NearMiss] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"name": self.name, "status": self.status, "count": self.count}
        if self.per_rule:
            out["per_rule"] = dict(self.per_rule)
        out["nodes_after"] = self.nodes_after
        if self.reason:
            out["reason"] = self.reason
        if self.would_fire:
            out["would_fire"] = self.would_fire
        if self.near_misses:
            out["near_misses"] = [m.to_json() for m in self.near_misses]
        return out


@dataclass
class RecipeReport:
    """A recipe run: per-step results, node counts, opset change, skipped fusions."""

    recipe: str
    target: str
    opset_before: int
    opset_after: int = 0
    nodes_before: int = 0
    steps: list[StepReport] = field(default_factory=list)

    @property
    def rule_counts(self) -> dict[str, int]:
        """Applications per ``step/onnxscript-rule`` (only rules that fired)."""
        return {
            f"{step.name}/{rule}": count
            for step in self.steps
            for rule, count in step.per_rule.items()
        }

    @property
    def fusion_counts(self) -> dict[str, int]:
        """Applications per fusion step (only steps that fired)."""
        return {step.name: step.count for step in self.steps if step.count}

    @property
    def node_counts(self) -> list[tuple[str, int]]:
        """``(step, nodes after it)`` starting with the input."""
        return [("input", self.nodes_before), *((s.name, s.nodes_after) for s in self.steps)]

    @property
    def skipped(self) -> dict[str, str]:
        """Steps not run, with the reason (target awareness, opset, disabled)."""
        return {s.name: s.reason for s in self.steps if s.status in ("skipped", "disabled")}

    @property
    def near_misses(self) -> list[NearMiss]:
        return [miss for step in self.steps for miss in step.near_misses]

    def to_json(self) -> dict[str, Any]:
        return {
            "recipe": self.recipe,
            "target": self.target,
            "opset": {"before": self.opset_before, "after": self.opset_after},
            "fusion_counts": self.fusion_counts,
            "rule_counts": self.rule_counts,
            "node_counts": [list(item) for item in self.node_counts],
            "skipped": self.skipped,
            "steps": [step.to_json() for step in self.steps],
        }


def choose_recipe(profile: Any) -> str:
    """The recipe for a :class:`~ai_vmm.passes.analyze.ModelProfile`'s top label.

    Args:
        profile: a ``ModelProfile`` (anything with ``primary_label``).

    Returns:
        A key of :data:`RECIPES`; ``"default"`` when the model has no confident label.
    """
    label = getattr(profile, "primary_label", None)
    return RECIPE_FOR_LABEL.get(label or "", "default")


def onnx_opset(model: ir.Model) -> int:
    """The model's standard-domain opset (0 when it imports none)."""
    return int(model.opset_imports.get("", model.opset_imports.get("ai.onnx", 0)) or 0)


def _target_veto(
    fusion: FusionRule, target: str, supported_ops: SupportedOps | None, max_opset: int | None
) -> str | None:
    """Why ``target`` must not get ``fusion``'s replacement ops, or None."""
    if fusion.targets is not None and target not in fusion.targets:
        return f"only for {', '.join(sorted(fusion.targets))} (target is {target})"
    if target in fusion.avoid_on:
        return fusion.avoid_on[target]
    if max_opset is not None and fusion.min_opset > max_opset:
        return f"needs opset {fusion.min_opset}; target {target} reads opset <= {max_opset}"
    if supported_ops is None:
        return None
    missing = [
        f"{domain or 'ai.onnx'}::{op_type}"
        for domain, op_type in fusion.produces
        if not supported_ops(domain, op_type)
    ]
    if missing:
        return f"target {target} cannot run {', '.join(missing)}"
    return None


def raise_opset(model: ir.Model, version: int) -> str | None:
    """Convert ``model`` in place to standard opset ``version``; the failure reason, or None."""
    before = onnx_opset(model)
    if before >= version:
        return None
    # Below opset 18 onnxscript hands over to onnx's C-API converter and logs a warning about it.
    converter_log = logging.getLogger("onnxscript.version_converter")
    level = converter_log.level
    converter_log.setLevel(logging.ERROR)
    try:
        version_converter.ConvertVersionPass(target_version=version, fallback=True)(model)
    except Exception as exc:  # the converter raises its own and onnx's errors
        return f"cannot raise the opset {before} -> {version}: {' '.join(str(exc).split())[:200]}"
    finally:
        converter_log.setLevel(level)
    if onnx_opset(model) != version:
        return f"cannot raise the opset {before} -> {version} (the converter left it unchanged)"
    return None


def apply_recipe(
    model: ir.Model,
    name: str,
    *,
    target: str,
    supported_ops: SupportedOps | None = None,
    disabled: frozenset[str] = frozenset(),
    trace: bool = False,
    max_opset: int | None = None,
) -> RecipeReport:
    """Run recipe ``name`` on ``model`` in place, for ``target``.

    Args:
        model: a canonicalized model (shapes inferred: the attention and rotary checks read
            them).
        name: a key of :data:`RECIPES`.
        target: the target name (``openvino``, ``onnxruntime``, ...).
        supported_ops: ``supported_ops(domain, op_type)``: whether the target runs that op
            (``""`` is the standard domain). ``None``: only the fusions' own target lists apply.
        disabled: step names not to run (canonicalization step names are accepted and
            ignored, so the driver can pass ``--disable-pass`` through as it is).
        trace: record near misses (matches whose check declined) for every fusion step.
        max_opset: the newest standard opset the target reads (``None``: any); a fusion that
            would need a newer one is skipped rather than raising the model's opset past it.

    Returns:
        The per-step report.

    Raises:
        ValueError: ``name`` is not a recipe, or ``disabled`` names an unknown step.
    """
    if name not in RECIPES:
        raise ValueError(f"unknown recipe {name!r} (recipes: {', '.join(RECIPES)})")
    # --disable-pass also names canonicalization steps: those are not ours to run or reject.
    unknown = sorted(set(disabled) - set(STEP_NAMES) - set(CANONICALIZE_STEPS))
    if unknown:
        raise ValueError(f"unknown pass {', '.join(unknown)} (passes: {', '.join(STEP_NAMES)})")
    report = RecipeReport(
        recipe=name, target=target, opset_before=onnx_opset(model), nodes_before=count_nodes(model)
    )
    for step_name in RECIPES[name]:
        step = StepReport(step_name, status="ran")
        if step_name in disabled:
            step.status, step.reason = "disabled", "disabled by option"
        elif step_name in CLEANUP_STEPS:
            CLEANUP_STEPS[step_name]()(model)
        else:
            fusion = FUSIONS[step_name]
            _run_fusion(
                model, fusion, step, _target_veto(fusion, target, supported_ops, max_opset), trace
            )
        step.nodes_after = count_nodes(model)
        report.steps.append(step)
    report.opset_after = onnx_opset(model)
    return report


def _run_fusion(
    model: ir.Model, fusion: FusionRule, step: StepReport, veto: str | None, trace: bool
) -> None:
    needs_opset = fusion.min_opset > onnx_opset(model)
    if veto is not None or needs_opset:
        matches = count_matches(model, fusion)
        if matches == 0:
            step.status = "no match"
            if trace:
                step.near_misses = trace_near_misses(model, fusion)
            return
        if veto is not None:
            step.status, step.reason, step.would_fire = "skipped", veto, matches
            return
        failure = raise_opset(model, fusion.min_opset)
        if failure is not None:
            step.status, step.reason, step.would_fire = "skipped", failure, matches
            return
    result = apply_fusion(model, fusion, trace=trace)
    step.status = "applied" if result.count else "no match"
    step.count, step.per_rule, step.near_misses = result.count, result.per_rule, result.near_misses
