"""Model zoo: small random-weight models, exported to ONNX by code.

Every entry is a seeded (deterministic) ``torch.nn.Module`` of a few MB at most, covering one
architecture family the compiler classifies and optimises. ``build`` exports it with
``torch.onnx.export`` (the dynamo exporter where it works, else the TorchScript exporter), with a
dynamic batch dimension and, for sequence models, a dynamic sequence length. Each export is
checked with ``onnx.checker`` and run once in ONNX Runtime against torch eager on inputs of a
*different* batch size and sequence length than the export example, so a dimension that was
silently specialised during export fails the check.

Usage::

    python models/zoo.py OUT_DIR [NAME ...]   # build the named entries (default: all)
    python models/zoo.py --bundle             # rewrite models/bundled/tiny_cnn.onnx (+ input)
    python models/zoo.py --list               # print the entries

``models/`` is not an installed package: import this file by path (``importlib``) or put
``models/`` on ``sys.path``. ``transformers`` is imported only by the builders that need it.

Export notes (torch 2.13, transformers 5.x, onnxscript 0.7); every entry of the brief exports:

- The dynamo exporter at opset 18 for all entries but the RNNs. Its clean-up runs without the
  BatchNorm-into-Conv folding, so the CNN graphs keep their BatchNormalization nodes.
- ``lstm``, ``gru``, ``ocr_crnn`` use the TorchScript exporter (``dynamo=False``), which emits
  ONNX LSTM/GRU ops with a dynamic time axis in well under a second. ``torch.export`` refuses a
  dynamic time axis for nn.LSTM/nn.GRU (the decomposition unrolls over time); torch.onnx's
  fallback capture got it dynamic in a fresh process, but in a process that had exported the
  CRNN before, the LSTM's ``seq`` axis came out fixed to the example's 8 without an error. The
  TorchScript exporter folds the CRNN's BatchNorm into its Conv.
- ``t5`` uses ``attn_implementation="eager"``: with SDPA the dynamo export fails in
  decomposition ("Cannot view a tensor with shape torch.Size([s11, s53, 2, 32]) and strides
  (64*s53, 32, 32*s53, 1) as a tensor with shape (s11, s53, 64)!"). It is the slowest export
  (about 20 s of CPU).
"""

import argparse
import logging
import os
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

Architecture = Literal[
    "cnn",
    "transformer-encoder",
    "causal-decoder",
    "vision-transformer",
    "encoder-decoder",
    "rnn",
    "recommender",
    "mlp",
    "cnn-rnn",
]

SEED = 0
OPSET = 18
ATOL = 1e-4
RTOL = 1e-4
VOCAB = 1000
NUM_CLASSES = 10
BUNDLE_DIR = Path(__file__).resolve().parent / "bundled"
BUNDLED_MODEL = "small_cnn"

# Sizes of the named dimensions. A dynamic export traces DYNAMIC_EXPORT_DIMS (batch 2: torch.export
# specialises dimensions of size 0 or 1) and is checked on CHECK_DIMS, which it never saw, so a
# dimension specialised during export fails the check. A static export has STATIC_DIMS.
DEFAULT_DIMS = {"seq": 16, "dec_seq": 8, "width": 128}
DYNAMIC_EXPORT_DIMS = {"batch": 2, "seq": 8, "dec_seq": 6, "width": 32}
CHECK_DIMS = {"batch": 3, "seq": 11, "dec_seq": 7, "width": 96}
STATIC_DIMS = {"batch": 1, **DEFAULT_DIMS}
MAX_DIM = 4096


@dataclass(frozen=True)
class TensorSpec:
    """One model input: ONNX name, shape (``str`` entries are named dynamic dims) and dtype.

    Integer inputs are drawn uniformly from ``[0, high)``; ``fill`` makes a constant tensor
    (an all-ones attention mask).
    """

    name: str
    shape: tuple[int | str, ...]
    dtype: Literal["float32", "int64"] = "float32"
    high: int = VOCAB
    fill: float | None = None

    def concrete_shape(self, dims: dict[str, int]) -> tuple[int, ...]:
        """The shape with every named dimension replaced by its size in ``dims``."""
        return tuple(dims[d] if isinstance(d, str) else d for d in self.shape)

    def sample(self, dims: dict[str, int], rng: np.random.Generator) -> np.ndarray:
        """A random (or constant) array of this spec's dtype and concrete shape."""
        shape = self.concrete_shape(dims)
        if self.fill is not None:
            return np.full(shape, self.fill, dtype=self.dtype)
        if self.dtype == "int64":
            return rng.integers(0, self.high, size=shape, dtype=np.int64)
        return rng.standard_normal(shape).astype(np.float32)


@dataclass(frozen=True)
class ZooEntry:
    """A zoo model: how to build it and what its ONNX signature is.

    Attributes:
        name: zoo name and ONNX file stem.
        architecture: the architecture family the compiler should classify it as.
        description: one line about the model.
        builder: returns a fresh torch module (``build_module`` seeds torch first and sets eval
            mode) whose ``forward`` takes the ``inputs`` positionally, in order, and returns
            the ``outputs`` (a tensor, or a tuple in that order).
        inputs: ONNX inputs, in order.
        outputs: ONNX output names, in order.
        dynamo: export with the dynamo exporter; ``False`` uses the TorchScript exporter.
        export_note: why the entry leaves the default export path, if it does.
        output_axes: names of dynamic output axes the TorchScript exporter would otherwise
            name after a node (the dynamo exporter derives them from the inputs).
    """

    name: str
    architecture: Architecture
    description: str
    builder: Callable[[], nn.Module]
    inputs: tuple[TensorSpec, ...]
    outputs: tuple[str, ...]
    dynamo: bool = True
    export_note: str = ""
    output_axes: dict[str, dict[int, str]] = field(default_factory=dict)


# --------------------------------------------------------------------------------------------
# Plain torch modules
# --------------------------------------------------------------------------------------------


def _conv_bn_act(
    cin: int,
    cout: int,
    stride: int = 1,
    groups: int = 1,
    kernel: int = 3,
    act: type[nn.Module] = nn.ReLU,
) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act(),
    )


class SmallCNN(nn.Module):
    """conv-bn-relu x3, global average pool, linear classifier: [N,3,32,32] -> [N,10]."""

    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            _conv_bn_act(3, 16),
            _conv_bn_act(16, 32, stride=2),
            _conv_bn_act(32, 64, stride=2),
        )
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(64, NUM_CLASSES)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pool(self.features(pixel_values)), 1))


class MobileNet(nn.Module):
    """MobileNet-v1-style: a stem conv, then depthwise-separable blocks (ReLU6)."""

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = [_conv_bn_act(3, 16, stride=2, act=nn.ReLU6)]
        cin = 16
        for cout, stride in [(32, 1), (64, 2), (64, 1), (128, 2), (128, 1), (256, 2)]:
            layers.append(_conv_bn_act(cin, cin, stride, groups=cin, act=nn.ReLU6))  # depthwise
            layers.append(_conv_bn_act(cin, cout, kernel=1, act=nn.ReLU6))  # pointwise
            cin = cout
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(cin, NUM_CLASSES)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(pixel_values).mean(dim=(2, 3)))


class RecurrentClassifier(nn.Module):
    """2-layer LSTM or GRU over [N,T,16] features; a linear head on the last step -> [N,10]."""

    def __init__(self, cell: type[nn.LSTM] | type[nn.GRU]) -> None:
        super().__init__()
        self.rnn = cell(16, 32, num_layers=2, batch_first=True)
        self.head = nn.Linear(32, NUM_CLASSES)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        sequence, _ = self.rnn(features)
        return self.head(sequence[:, -1])


class CRNN(nn.Module):
    """OCR text recogniser: CNN over a [N,1,32,W] text line, BiLSTM over W/4 columns, CTC head.

    Returns log-probabilities [N, W/4, 37] (blank + 26 letters + 10 digits), batch first.
    """

    def __init__(self, num_classes: int = 37) -> None:
        super().__init__()
        self.cnn = nn.Sequential(
            _conv_bn_act(1, 16),
            nn.MaxPool2d(2),  # 16 x W/2
            _conv_bn_act(16, 32),
            nn.MaxPool2d(2),  # 8 x W/4
            _conv_bn_act(32, 64),
            nn.MaxPool2d((2, 1)),  # 4 x W/4
            _conv_bn_act(64, 64),
            nn.MaxPool2d((4, 1)),  # 1 x W/4
        )
        self.rnn = nn.LSTM(64, 32, batch_first=True, bidirectional=True)
        self.head = nn.Linear(64, num_classes)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        columns = self.cnn(pixel_values).squeeze(2).permute(0, 2, 1)  # [N, W/4, 64]
        sequence, _ = self.rnn(columns)
        return torch.log_softmax(self.head(sequence), dim=-1)


class DLRM(nn.Module):
    """DLRM-style recommender: bottom MLP on dense features, one embedding per sparse feature,
    pairwise dot-product interaction, top MLP -> click probability [N,1]."""

    pair_rows: torch.Tensor
    pair_cols: torch.Tensor

    def __init__(self, num_dense: int = 13, tables: int = 3, rows: int = 1000, dim: int = 16):
        super().__init__()
        self.bottom = nn.Sequential(
            nn.Linear(num_dense, 64), nn.ReLU(), nn.Linear(64, dim), nn.ReLU()
        )
        self.embeddings = nn.ModuleList(nn.Embedding(rows, dim) for _ in range(tables))
        features = tables + 1
        rows_idx, cols_idx = torch.triu_indices(features, features, offset=1)
        self.register_buffer("pair_rows", rows_idx, persistent=False)
        self.register_buffer("pair_cols", cols_idx, persistent=False)
        pairs = features * (features - 1) // 2
        self.top = nn.Sequential(
            nn.Linear(dim + pairs, 64), nn.ReLU(), nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 1)
        )

    def forward(self, dense_features: torch.Tensor, sparse_indices: torch.Tensor) -> torch.Tensor:
        dense = self.bottom(dense_features)  # [N, D]
        embedded = [table(sparse_indices[:, i]) for i, table in enumerate(self.embeddings)]
        stacked = torch.stack([dense, *embedded], dim=1)  # [N, F, D]
        gram = torch.bmm(stacked, stacked.transpose(1, 2))  # [N, F, F]
        interactions = gram[:, self.pair_rows, self.pair_cols]  # [N, F(F-1)/2]
        return torch.sigmoid(self.top(torch.cat([dense, interactions], dim=1)))


def _mlp() -> nn.Module:
    return nn.Sequential(
        nn.Linear(64, 128), nn.ReLU(), nn.Linear(128, 128), nn.ReLU(), nn.Linear(128, NUM_CLASSES)
    )


# --------------------------------------------------------------------------------------------
# transformers models, adapted to positional tensor inputs and tuple outputs
# --------------------------------------------------------------------------------------------


class EncoderAdapter(nn.Module):
    """BERT-style: (input_ids, attention_mask) -> (last_hidden_state, pooler_output)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.model(input_ids=input_ids, attention_mask=attention_mask, return_dict=True)
        return out.last_hidden_state, out.pooler_output


class CausalLMAdapter(nn.Module):
    """Decoder-only LM without KV cache: input_ids -> logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model(input_ids=input_ids, use_cache=False, return_dict=True).logits


class ImageClassifierAdapter(nn.Module):
    """pixel_values -> logits."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return self.model(pixel_values=pixel_values, return_dict=True).logits


class Seq2SeqAdapter(nn.Module):
    """Encoder-decoder LM without KV cache: (input_ids, attention_mask, decoder_input_ids)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        decoder_input_ids: torch.Tensor,
    ) -> torch.Tensor:
        out = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            decoder_input_ids=decoder_input_ids,
            use_cache=False,
            return_dict=True,
        )
        return out.logits


_LABELS = {i: f"class_{i}" for i in range(NUM_CLASSES)}  # sets num_labels


def _bert() -> nn.Module:
    from transformers import BertConfig, BertModel

    config = BertConfig(
        vocab_size=VOCAB,
        max_position_embeddings=128,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
    )
    return EncoderAdapter(BertModel(config, add_pooling_layer=True))


def _gpt2() -> nn.Module:
    from transformers import GPT2Config, GPT2LMHeadModel

    config = GPT2Config(
        vocab_size=VOCAB,
        n_positions=128,
        n_embd=64,
        n_layer=2,
        n_head=2,
        bos_token_id=VOCAB - 1,  # the default (50256) lies outside the small vocabulary
        eos_token_id=VOCAB - 1,
    )
    return CausalLMAdapter(GPT2LMHeadModel(config))


def _llama() -> nn.Module:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=VOCAB,
        max_position_embeddings=128,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention
    )
    return CausalLMAdapter(LlamaForCausalLM(config))


def _t5() -> nn.Module:
    from transformers import T5Config, T5ForConditionalGeneration

    # attn_implementation is a documented config kwarg the type stubs do not list.
    config = T5Config(  # type: ignore[call-arg]
        vocab_size=VOCAB,
        d_model=64,
        d_kv=32,
        d_ff=128,
        num_layers=2,
        num_decoder_layers=2,
        num_heads=2,
        attn_implementation="eager",  # the dynamo export fails with SDPA, see export_note
    )
    return Seq2SeqAdapter(T5ForConditionalGeneration(config))


def _vit() -> nn.Module:
    from transformers import ViTConfig, ViTForImageClassification

    config = ViTConfig(
        image_size=32,
        patch_size=8,
        hidden_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=128,
        id2label=_LABELS,
    )
    return ImageClassifierAdapter(ViTForImageClassification(config))


def _resnet() -> nn.Module:
    from transformers import ResNetConfig, ResNetForImageClassification

    config = ResNetConfig(
        embedding_size=16,
        hidden_sizes=[16, 32, 64, 128],
        depths=[1, 1, 1, 1],
        layer_type="basic",
        id2label=_LABELS,
    )
    return ImageClassifierAdapter(ResNetForImageClassification(config))


# --------------------------------------------------------------------------------------------
# The zoo
# --------------------------------------------------------------------------------------------

_IDS = TensorSpec("input_ids", ("batch", "seq"), "int64")
_MASK = TensorSpec("attention_mask", ("batch", "seq"), "int64", fill=1)


def _image(size: int, channels: int = 3) -> TensorSpec:
    return TensorSpec("pixel_values", ("batch", channels, size, size))


_RNN_NOTE = (
    "TorchScript exporter: torch.export specialises the time axis of nn.LSTM/nn.GRU (its "
    "decomposition unrolls over time: 'You marked seq as dynamic but your code specialized it "
    "to be a constant (8)'); torch.onnx's fallback capture made it dynamic in a fresh process "
    "but fixed it to 8, silently, after the CRNN export in the same process; and took 6-30 s."
)
_FEATURES = TensorSpec("features", ("batch", "seq", 16))

ZOO: dict[str, ZooEntry] = {
    e.name: e
    for e in [
        ZooEntry(
            name="small_cnn",
            architecture="cnn",
            description="3x conv-bn-relu, global average pool, linear; 32x32 RGB -> 10 classes",
            builder=SmallCNN,
            inputs=(_image(32),),
            outputs=("logits",),
        ),
        ZooEntry(
            name="transformer_encoder",
            architecture="transformer-encoder",
            description="BertModel: 2 layers, hidden 64, 2 heads, FFN 128, vocab 1000, pooler",
            builder=_bert,
            inputs=(_IDS, _MASK),
            outputs=("last_hidden_state", "pooler_output"),
        ),
        ZooEntry(
            name="lstm",
            architecture="rnn",
            description="2-layer LSTM (hidden 32) over [N,T,16] features; last step -> 10",
            builder=lambda: RecurrentClassifier(nn.LSTM),
            inputs=(_FEATURES,),
            outputs=("logits",),
            dynamo=False,
            export_note=_RNN_NOTE,
        ),
        ZooEntry(
            name="resnet",
            architecture="cnn",
            description="transformers ResNet, basic blocks, depths [1,1,1,1]; 64x64 RGB -> 10",
            builder=_resnet,
            inputs=(_image(64),),
            outputs=("logits",),
        ),
        ZooEntry(
            name="mobilenet",
            architecture="cnn",
            description="MobileNet-v1-style depthwise-separable CNN, ReLU6; 64x64 RGB -> 10",
            builder=MobileNet,
            inputs=(_image(64),),
            outputs=("logits",),
        ),
        ZooEntry(
            name="vit",
            architecture="vision-transformer",
            description="ViTForImageClassification: 32x32, patch 8, 2 layers, hidden 64 -> 10",
            builder=_vit,
            inputs=(_image(32),),
            outputs=("logits",),
        ),
        ZooEntry(
            name="gpt2",
            architecture="causal-decoder",
            description="GPT2LMHeadModel: 2 layers, hidden 64, 2 heads, vocab 1000, no KV cache",
            builder=_gpt2,
            inputs=(_IDS,),
            outputs=("logits",),
        ),
        ZooEntry(
            name="llama",
            architecture="causal-decoder",
            description="LlamaForCausalLM: RMSNorm, rotary, SwiGLU, GQA 4/2 heads, hidden 64",
            builder=_llama,
            inputs=(_IDS,),
            outputs=("logits",),
        ),
        ZooEntry(
            name="t5",
            architecture="encoder-decoder",
            description="T5ForConditionalGeneration: 2+2 layers, d_model 64, vocab 1000",
            builder=_t5,
            inputs=(_IDS, _MASK, TensorSpec("decoder_input_ids", ("batch", "dec_seq"), "int64")),
            outputs=("logits",),
            export_note=(
                "attn_implementation='eager': with the default 'sdpa' the dynamo export fails "
                "in decomposition: 'Cannot view a tensor with shape torch.Size([s11, s53, 2, "
                "32]) and strides (64*s53, 32, 32*s53, 1) as a tensor with shape (s11, s53, 64)!'"
            ),
        ),
        ZooEntry(
            name="gru",
            architecture="rnn",
            description="2-layer GRU (hidden 32) over [N,T,16] features; last step -> 10",
            builder=lambda: RecurrentClassifier(nn.GRU),
            inputs=(_FEATURES,),
            outputs=("logits",),
            dynamo=False,
            export_note=_RNN_NOTE,
        ),
        ZooEntry(
            name="ocr_crnn",
            architecture="cnn-rnn",
            description="CRNN text recogniser: 4 conv blocks, BiLSTM 32, CTC log-probs, W/4 steps",
            builder=CRNN,
            inputs=(TensorSpec("pixel_values", ("batch", 1, 32, "width")),),
            outputs=("log_probs",),
            output_axes={"log_probs": {0: "batch", 1: "steps"}},
            dynamo=False,
            export_note=_RNN_NOTE + " The TorchScript exporter folds BatchNorm into Conv.",
        ),
        ZooEntry(
            name="dlrm",
            architecture="recommender",
            description="DLRM: bottom MLP, 3 embedding tables 1000x16, dot interaction, top MLP",
            builder=DLRM,
            inputs=(
                TensorSpec("dense_features", ("batch", 13)),
                TensorSpec("sparse_indices", ("batch", 3), "int64", high=1000),
            ),
            outputs=("probability",),
        ),
        ZooEntry(
            name="mlp",
            architecture="mlp",
            description="3-layer MLP: 64 -> 128 -> 128 -> 10",
            builder=_mlp,
            inputs=(TensorSpec("features", ("batch", 64)),),
            outputs=("logits",),
        ),
    ]
}


def _entry(name: str) -> ZooEntry:
    try:
        return ZOO[name]
    except KeyError:
        raise KeyError(f"unknown zoo model {name!r}; known: {', '.join(ZOO)}") from None


def example_inputs(
    name: str, batch: int = 1, *, seed: int = SEED, dims: dict[str, int] | None = None
) -> dict[str, np.ndarray]:
    """Deterministic numpy inputs for zoo model ``name``, keyed by its ONNX input names.

    Args:
        name: a key of ``ZOO``.
        batch: the batch size.
        seed: seed of the numpy generator.
        dims: sizes of other named dimensions (``seq``, ``dec_seq``, ``width``) overriding the
            defaults.

    Returns:
        int64 token ids in ``[0, vocab)``, all-ones attention masks, float32 images/features.
    """
    entry = _entry(name)
    sizes = {**DEFAULT_DIMS, **(dims or {}), "batch": batch}
    rng = np.random.default_rng(seed)
    return {spec.name: spec.sample(sizes, rng) for spec in entry.inputs}


def build_module(name: str) -> nn.Module:
    """The seeded torch module of zoo model ``name``, in eval mode, BatchNorm stats randomised.

    Fresh BatchNorm layers have mean 0 and variance 1, which would let a wrong BN fusion pass
    a numerical check, so running statistics are drawn from a seeded generator.
    """
    torch.manual_seed(SEED)
    module = _entry(name).builder()
    gen = torch.Generator().manual_seed(SEED + 1)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d) and m.running_mean is not None:
                assert m.running_var is not None  # tracked together with running_mean
                m.running_mean.copy_(torch.randn(m.num_features, generator=gen) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=gen) + 0.5)
    return module.eval()


# --------------------------------------------------------------------------------------------
# Export and check
# --------------------------------------------------------------------------------------------


def _torch_inputs(entry: ZooEntry, dims: dict[str, int]) -> tuple[torch.Tensor, ...]:
    arrays = example_inputs(entry.name, dims["batch"], dims=dims)
    return tuple(torch.from_numpy(arrays[spec.name]) for spec in entry.inputs)


def _dynamic_axes(entry: ZooEntry) -> dict[str, dict[int, str]]:
    """Named dynamic axes per input, e.g. ``{"input_ids": {0: "batch", 1: "seq"}}``."""
    return {
        spec.name: {i: d for i, d in enumerate(spec.shape) if isinstance(d, str)}
        for spec in entry.inputs
    }


def _optimize_keeping_batchnorm(model: Any) -> None:
    """``torch.onnx.export(optimize=True)``'s clean-up, minus folding BatchNorm into Conv/Gemm.

    The exporter's optimiser (``onnxscript.optimizer.optimize_ir``) folds every BatchNorm into
    the Conv before it; the zoo keeps them, so that the compiler's own conv-bn fusion has work
    to do, as it has on models from other exporters. This is the same pass list with the
    BatchNorm rules left out; it falls back to the full optimiser if onnxscript's (private)
    default rule list moves.
    """
    import onnx_ir.passes.common as common_passes
    import onnxscript.optimizer
    import onnxscript.rewriter
    from onnxscript.rewriter.rules import common as rules

    defaults = getattr(onnxscript.rewriter, "_DEFAULT_REWRITE_RULES", None)
    if not defaults:
        onnxscript.optimizer.optimize_ir(model)
        return
    batchnorm = {
        rules.fuse_batchnorm_into_conv_rule,
        rules.fuse_batchnorm_into_conv_transpose_rule,
        rules.fuse_batchnorm_into_gemm_rule,
    }
    rewrite = onnxscript.rewriter.RewritePass([r for r in defaults if r not in batchnorm])
    common_passes.InlinePass()(model)
    for _ in range(2):  # optimize_ir's loop: fold, rewrite, prune, until nothing changes
        changed = onnxscript.optimizer.fold_constants_ir(model, onnx_shape_inference=True).modified
        changed = rewrite(model).modified or changed
        common_passes.RemoveUnusedNodesPass()(model)
        common_passes.RemoveUnusedFunctionsPass()(model)
        common_passes.RemoveUnusedOpsetsPass()(model)
        if not changed:
            break
    for final in (
        common_passes.RemoveUnusedNodesPass(),
        common_passes.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0),
        common_passes.LiftSubgraphInitializersToMainGraphPass(),
        common_passes.DeduplicateInitializersPass(),
        common_passes.CommonSubexpressionEliminationPass(),
        common_passes.OutputFixPass(),
        common_passes.NameFixPass(),
    ):
        final(model)


def _export(entry: ZooEntry, module: nn.Module, path: Path, dynamic: bool) -> None:
    """Export ``module`` to ``path`` with the exporter ``entry`` asks for."""
    args = _torch_inputs(entry, DYNAMIC_EXPORT_DIMS if dynamic else STATIC_DIMS)
    axes = _dynamic_axes(entry) if dynamic else {}
    common: dict[str, Any] = {
        "input_names": [spec.name for spec in entry.inputs],
        "output_names": list(entry.outputs),
        "opset_version": OPSET,
    }
    if not entry.dynamo:
        dynamic_axes = {**axes, **entry.output_axes} if dynamic else None
        with warnings.catch_warnings():
            # The legacy-exporter deprecation, tracer notes on nn.RNN's Python shape checks, and
            # the warning that an RNN exported at batch 2 may fail at others: check() tests it.
            warnings.simplefilter(
                "ignore", (DeprecationWarning, UserWarning, torch.jit.TracerWarning)
            )
            torch.onnx.export(
                module, args, str(path), dynamo=False, dynamic_axes=dynamic_axes, **common
            )
        return
    shapes = None
    if dynamic:
        named = {d for a in axes.values() for d in a.values()}
        dims = {d: torch.export.Dim(d, min=1, max=MAX_DIM) for d in named}
        # A tuple, not a dict: a dict's keys must be forward()'s parameter names.
        shapes = tuple({i: dims[d] for i, d in axes[spec.name].items()} for spec in entry.inputs)
    with warnings.catch_warnings():
        # pytree/treespec deprecations and axis-renaming notes; check() guards the result.
        warnings.simplefilter("ignore", (DeprecationWarning, FutureWarning, UserWarning))
        program = torch.onnx.export(
            module,
            args,
            dynamo=True,
            dynamic_shapes=shapes,
            external_data=False,
            optimize=False,
            verbose=False,
            **common,
        )
    assert program is not None  # the dynamo exporter always returns its ONNXProgram
    _optimize_keeping_batchnorm(program.model)
    # Per-node provenance (stack traces with absolute paths and line numbers, the importing
    # module's name) would make the file depend on the machine and on how zoo.py was run.
    for node in program.model.graph.all_nodes():
        node.metadata_props.clear()
    program.save(str(path), external_data=False)


def check(name: str, path: Path, *, dynamic: bool = True) -> float:
    """Check ``path`` with ``onnx.checker`` and compare ONNX Runtime against torch eager.

    A dynamic model is run on ``CHECK_DIMS`` (sizes the export never saw), a static one on
    ``STATIC_DIMS``.

    Returns:
        The largest absolute difference over all outputs.

    Raises:
        onnx.checker.ValidationError: the model is not valid ONNX.
        AssertionError: an output's shape or values differ beyond ``ATOL``/``RTOL``.
    """
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path), full_check=True)
    entry = _entry(name)
    dims = CHECK_DIMS if dynamic else STATIC_DIMS
    arrays = example_inputs(name, dims["batch"], dims=dims)
    with torch.no_grad():
        expected = build_module(name)(*(torch.from_numpy(arrays[s.name]) for s in entry.inputs))
    expected = (expected,) if isinstance(expected, torch.Tensor) else expected
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    actual = session.run(list(entry.outputs), arrays)
    worst = 0.0
    for out_name, want, got in zip(entry.outputs, expected, actual, strict=True):
        want_np = want.numpy()
        if got.shape != want_np.shape:
            raise AssertionError(f"{name}.{out_name}: shape {got.shape} != torch {want_np.shape}")
        np.testing.assert_allclose(got, want_np, rtol=RTOL, atol=ATOL, err_msg=f"{name}.{out_name}")
        worst = max(worst, float(np.max(np.abs(got - want_np), initial=0.0)))
    return worst


def build(name: str, out_dir: Path, *, dynamic: bool = True) -> Path:
    """Export zoo model ``name`` to ``out_dir/<name>.onnx``, check it, and return the path.

    Idempotent: an existing file is returned as it is (so keep static and dynamic builds in
    different directories). The model is written under a temporary name and renamed once it
    passed ``check``, so a failed build leaves no file behind.

    Args:
        name: a key of ``ZOO``.
        out_dir: the directory to write into; created if missing.
        dynamic: dynamic batch and sequence/width axes; else every shape is fixed to
            ``STATIC_DIMS`` (batch 1, seq 16, ...), the shapes ``example_inputs`` gives by default.

    Raises:
        KeyError: ``name`` is not in ``ZOO``.
    """
    out_dir = Path(out_dir)
    path = out_dir / f"{name}.onnx"
    if path.exists():
        return path
    entry = _entry(name)
    out_dir.mkdir(parents=True, exist_ok=True)
    tmp = out_dir / f".{name}.{os.getpid()}.tmp.onnx"
    try:
        _export(entry, build_module(name), tmp, dynamic)
        check(name, tmp, dynamic=dynamic)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_bundle(bundle_dir: Path = BUNDLE_DIR) -> tuple[Path, Path]:
    """Write the bundled ``tiny_cnn.onnx`` (the ``small_cnn`` entry) and its example input.

    Returns:
        The model path and the ``.npz`` path (one array under ``pixel_values``, batch 1).
    """
    import tempfile

    bundle_dir.mkdir(parents=True, exist_ok=True)
    model_path = bundle_dir / "tiny_cnn.onnx"
    input_path = bundle_dir / "tiny_cnn_input.npz"
    with tempfile.TemporaryDirectory() as tmp:
        model_path.write_bytes(build(BUNDLED_MODEL, Path(tmp)).read_bytes())
    np.savez(input_path, pixel_values=example_inputs(BUNDLED_MODEL, batch=1)["pixel_values"])
    return model_path, input_path


def main(argv: list[str] | None = None) -> int:
    """CLI: build zoo models into a directory, rewrite the bundle, or list the entries."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out_dir", nargs="?", type=Path, help="directory to write NAME.onnx into")
    parser.add_argument("names", nargs="*", help=f"entries to build (default: all): {list(ZOO)}")
    parser.add_argument("--static", action="store_true", help="fixed shapes (batch 1)")
    parser.add_argument("--bundle", action="store_true", help=f"rewrite {BUNDLE_DIR}")
    parser.add_argument("--list", action="store_true", help="list the entries and exit")
    args = parser.parse_args(argv)
    # The exporter logs one line per torchvision op it cannot register; torchvision is not used.
    logging.getLogger("torch.onnx").setLevel(logging.ERROR)
    # Constant folding logs a warning for each subgraph it tries and cannot evaluate.
    logging.getLogger("onnxscript.optimizer").setLevel(logging.ERROR)
    if args.list:
        for entry in ZOO.values():
            print(f"{entry.name:20} {entry.architecture:20} {entry.description}")
        return 0
    if args.bundle:
        for path in write_bundle():
            print(f"wrote {path} ({path.stat().st_size:,} bytes)")
        if args.out_dir is None:
            return 0
    if args.out_dir is None:
        parser.error("OUT_DIR is required unless --bundle or --list is given")
    failed = []
    for name in args.names or list(ZOO):
        start = time.perf_counter()
        try:
            path = build(name, args.out_dir, dynamic=not args.static)
        except Exception as exc:  # report every entry, then fail
            failed.append(name)
            print(f"FAIL {name}: {type(exc).__name__}: {exc}", file=sys.stderr)
            continue
        seconds = time.perf_counter() - start
        print(f"ok   {name:20} {path.stat().st_size / 1e6:6.2f} MB {seconds:6.1f} s  {path}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
