"""PyTorch frontend: every accepted source, parity with torch eager, names, dynamic dims, errors.

Parity tolerances (artifact on OpenVINO CPU, fp32, vs torch eager on the same inputs):
rtol 1e-4, atol 1e-5 for the CNN / transformer / RNN (measured max abs errors are ~1e-6);
MiniLM sentence embeddings: cosine >= 0.9999 per sentence (measured: 1 - 1e-7).
Every parity check runs on a batch and sequence length other than the export's, so the dynamic
dimensions are exercised.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import ai_vmm
from ai_vmm.cli import main
from ai_vmm.frontends import detect_format, load_model
from ai_vmm.runtime import CompileError, ModelLoadError
from tests_support import make_mlp_model

torch = pytest.importorskip("torch")
nn = torch.nn

RTOL, ATOL = 1e-4, 1e-5


class SmallCNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1),
            nn.BatchNorm2d(8),
            nn.ReLU(),
            nn.MaxPool2d(2),
            nn.Conv2d(8, 16, 3, padding=1, groups=2),
            nn.Hardswish(),
            nn.AdaptiveAvgPool2d(1),
        )
        self.head = nn.Linear(16, 5)

    def forward(self, pixels: Any) -> Any:
        return self.head(torch.flatten(self.features(pixels), 1))


class SmallTransformer(nn.Module):
    """Token embedding + learned positions + 2 encoder layers (GELU) + padding mask."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(100, 32)
        self.position = nn.Embedding(64, 32)
        layer = nn.TransformerEncoderLayer(
            32, 4, 64, dropout=0.0, activation="gelu", batch_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(32)

    def forward(self, input_ids: Any, attention_mask: Any) -> Any:
        positions = torch.arange(input_ids.shape[1], device=input_ids.device)
        hidden = self.embed(input_ids) + self.position(positions)[None]
        hidden = self.encoder(hidden, src_key_padding_mask=attention_mask == 0)
        return {"hidden": self.norm(hidden), "pooled": hidden.mean(1)}


class SmallRNN(nn.Module):
    """One LSTM layer: torch 2.13 exports it with a dynamic sequence length (stacked RNNs: see
    ``test_exporter_bug_at_other_sizes_is_an_error``)."""

    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.out = nn.Linear(16, 3)

    def forward(self, frames: Any) -> Any:
        sequence, (hidden, _) = self.lstm(frames)
        return self.out(sequence[:, -1]), hidden


class StackedRNN(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(8, 16, batch_first=True)
        self.gru = nn.GRU(16, 12, batch_first=True, bidirectional=True)
        self.out = nn.Linear(24, 3)

    def forward(self, frames: Any) -> Any:
        sequence, _ = self.lstm(frames)
        sequence, last = self.gru(sequence)
        return self.out(sequence[:, -1]), last


def _seeded(cls: type[nn.Module]) -> nn.Module:
    torch.manual_seed(0)
    model = cls().eval()
    with torch.no_grad():  # non-trivial batch-norm statistics
        for module in model.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean.uniform_(-0.5, 0.5)
                module.running_var.uniform_(0.5, 1.5)
    return model


def _ids(batch: int, seq: int, seed: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    mask = np.ones((batch, seq), np.int64)
    mask[0, seq - 2 :] = 0  # padding in the first row
    return {"input_ids": rng.integers(1, 100, (batch, seq)), "attention_mask": mask}


def _eager(model: nn.Module, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    with torch.no_grad():
        out = model(**{k: torch.from_numpy(v) for k, v in feed.items()})
    flat = list(out.values()) if isinstance(out, dict) else out
    flat = list(flat) if isinstance(flat, list | tuple) else [flat]
    return [t.numpy() for t in flat]


def test_cnn_parity_dynamic_batch(compile_run: Callable[..., Any], close: Any) -> None:
    model = _seeded(SmallCNN)
    feed = {"pixels": np.random.default_rng(1).standard_normal((3, 3, 32, 32), np.float32)}
    result, got = compile_run(
        model,
        feed,
        example_inputs=(torch.randn(2, 3, 32, 32),),
        dynamic_shapes={"pixels": {0: "batch"}},
    )
    assert result.manifest["inputs"][0]["shape"] == ["batch", 3, 32, 32]
    assert [o["name"] for o in result.manifest["outputs"]] == ["output"]
    close(got["output"], _eager(model, feed)[0], RTOL, ATOL)


def test_transformer_parity_dynamic_batch_and_sequence(
    compile_run: Callable[..., Any], close: Any
) -> None:
    model = _seeded(SmallTransformer)
    example = {k: torch.from_numpy(v) for k, v in _ids(2, 7, 0).items()}
    dims = {"input_ids": {0: "batch", 1: "seq"}, "attention_mask": {0: "batch", 1: "seq"}}
    feed = _ids(3, 11, 2)
    result, got = compile_run(model, feed, example_inputs=example, dynamic_shapes=dims)
    assert [i["shape"] for i in result.manifest["inputs"]] == [["batch", "seq"]] * 2
    # A dict output keeps its keys, in the model's order.
    assert [o["name"] for o in result.manifest["outputs"]] == ["hidden", "pooled"]
    hidden, pooled = _eager(model, feed)
    close(got["hidden"], hidden, RTOL, ATOL)
    close(got["pooled"], pooled, RTOL, ATOL)


def test_rnn_parity_dynamic_batch_and_sequence(compile_run: Callable[..., Any], close: Any) -> None:
    model = _seeded(SmallRNN)
    dims = {"frames": {0: "batch", 1: "time"}}
    feed = {"frames": np.random.default_rng(3).standard_normal((3, 13, 8), np.float32)}
    result, got = compile_run(
        model, feed, example_inputs=(torch.randn(2, 6, 8),), dynamic_shapes=dims
    )
    assert [o["name"] for o in result.manifest["outputs"]] == ["output_0", "output_1"]
    logits, last = _eager(model, feed)
    close(got["output_0"], logits, RTOL, ATOL)
    close(got["output_1"], last, RTOL, ATOL)


def test_stacked_rnn_with_dynamic_sequence_is_refused() -> None:
    """torch 2.13 cannot export an LSTM -> GRU stack with a dynamic sequence length: either
    torch.export specializes the length (and says so), or the ONNX translation bakes the
    example length into a Reshape, which the check at other sizes catches. Either way a
    one-line error, never a broken artifact."""
    model = _seeded(StackedRNN)
    options = {
        "example_inputs": (torch.randn(2, 6, 8),),
        "dynamic_shapes": {"frames": {0: "batch", 1: "time"}},
    }
    refused = (
        r"export of StackedRNN fails when its dynamic dimensions change \(batch=2->3, time=6->7\)"
        r"|inferred a static shape of 6 for dimension inputs\['frames'\]\.shape\[1\]"
    )
    with pytest.raises(ModelLoadError, match=refused):
        load_model(model, options)
    # With static shapes the same model exports fine.
    static = load_model(model, {"example_inputs": (torch.randn(2, 6, 8),)})
    assert list(static.model.graph.inputs[0].shape) == [2, 6, 8]


class _Wrong:
    """An ONNXProgram stand-in whose runs are off (or fail): what an exporter bug looks like."""

    def __init__(self, program: Any, fail: bool) -> None:
        self.program, self.fail = program, fail
        self.exported_program, self.model = program.exported_program, program.model

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        if self.fail:
            raise RuntimeError("Reshape: cannot reshape {7,3,16} to {6,-1,16}")
        return [t * 1.5 for t in self.program(*args, **kwargs)]


def test_check_at_other_sizes_catches_a_wrong_export() -> None:
    from ai_vmm.frontends.torch import _check_other_sizes

    model = _seeded(SmallCNN)
    program = torch.onnx.export(
        model, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"pixels": {0: "batch"}}, dynamo=True
    )
    notes = _check_other_sizes(torch, program, model, "SmallCNN")
    assert notes == ["export checked against eager PyTorch at other dynamic sizes (batch=2->3)"]
    with pytest.raises(ModelLoadError, match=r"differs from PyTorch .* \(batch=2->3\): output 0"):
        _check_other_sizes(torch, _Wrong(program, fail=False), model, "SmallCNN")
    with pytest.raises(
        ModelLoadError, match=r"fails when .* \(batch=2->3\): RuntimeError: Reshape"
    ):
        _check_other_sizes(torch, _Wrong(program, fail=True), model, "SmallCNN")


def test_exported_program_pt2_and_cli(tmp_path: Path, close: Any) -> None:
    model = _seeded(SmallCNN)
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(
        model, (torch.randn(2, 3, 32, 32),), dynamic_shapes={"pixels": {0: batch}}
    )
    assert detect_format(program) == "torch.exported"
    in_memory = load_model(program)
    torch.export.save(program, tmp_path / "cnn.pt2")
    assert detect_format(tmp_path / "cnn.pt2") == "torch.pt2"
    from_file = load_model(tmp_path / "cnn.pt2")
    assert from_file.sha256 == in_memory.sha256  # same program, same ONNX bytes

    # vmmc takes a .pt2 like an ONNX file: no options needed, the program carries its inputs.
    out = tmp_path / "cnn.vmm"
    assert main(["compile", str(tmp_path / "cnn.pt2"), "-o", str(out), "--no-tune"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["inputs"][0]["name"] == "pixels"
    feed = {"pixels": np.random.default_rng(4).standard_normal((5, 3, 32, 32), np.float32)}
    close(ai_vmm.load(out).run(feed)["output"], _eager(model, feed)[0], RTOL, ATOL)

    with pytest.raises(CompileError, match="fixed at export time"):
        load_model(program, {"dynamic_shapes": {"pixels": {0: "batch"}}})


def test_torchscript_traced_file_needs_no_inputs(
    tmp_path: Path, compile_run: Callable[..., Any], close: Any
) -> None:
    model = _seeded(SmallCNN)
    traced = torch.jit.trace(model, (torch.randn(2, 3, 32, 32),))
    traced.save(str(tmp_path / "cnn_traced.pt"))
    assert detect_format(tmp_path / "cnn_traced.pt") == "torch.script"
    feed = {"pixels": np.random.default_rng(5).standard_normal((2, 3, 32, 32), np.float32)}
    result, got = compile_run(tmp_path / "cnn_traced.pt", feed)
    assert result.manifest["inputs"][0]["name"] == "pixels"  # the scripted argument name
    close(got["output"], _eager(model, feed)[0], RTOL, ATOL)


def test_torchscript_scripted_file_needs_example_inputs(
    tmp_path: Path, compile_run: Callable[..., Any], close: Any
) -> None:
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU()).eval()
    torch.jit.script(model).save(str(tmp_path / "scripted.pt"))
    with pytest.raises(ModelLoadError, match="TorchScript stores no input shapes.*example_inputs"):
        load_model(tmp_path / "scripted.pt")
    feed = {"input": np.random.default_rng(6).standard_normal((3, 6), np.float32)}
    _, got = compile_run(
        tmp_path / "scripted.pt",
        feed,
        example_inputs=(torch.randn(2, 6),),
        dynamic_shapes={"input": {0: "batch"}},
    )
    with torch.no_grad():
        expected = model(torch.from_numpy(feed["input"])).numpy()
    close(got["output"], expected, RTOL, ATOL)


def test_names_given_and_missing_inputs() -> None:
    model = _seeded(SmallRNN)
    loaded = load_model(
        model,
        {
            "example_inputs": (torch.randn(2, 6, 8),),
            "input_names": ["audio"],
            "output_names": ["logits", "state"],
        },
    )
    assert [v.name for v in loaded.model.graph.inputs] == ["audio"]
    assert [v.name for v in loaded.model.graph.outputs] == ["logits", "state"]
    assert loaded.source == "<SmallRNN>"
    with pytest.raises(ModelLoadError, match="needs example inputs"):
        load_model(model)
    with pytest.raises(CompileError, match="3 output_names given for a model with 2"):
        load_model(model, {"example_inputs": torch.randn(2, 6, 8), "output_names": ["a", "b", "c"]})
    with pytest.raises(
        CompileError, match="unknown keyword argument.*input_shape.*did you mean .input_shapes."
    ):
        ai_vmm.compile(model, example_inputs=torch.randn(2, 6, 8), input_shape=["x[1,2]"])


def test_export_is_deterministic() -> None:
    first = load_model(_seeded(SmallCNN), {"example_inputs": torch.randn(2, 3, 32, 32)})
    second = load_model(_seeded(SmallCNN), {"example_inputs": torch.randn(2, 3, 32, 32)})
    assert first.sha256 == second.sha256
    other = load_model(_seeded(SmallCNN), {"example_inputs": torch.randn(4, 3, 16, 16)})
    assert other.sha256 != first.sha256  # static shapes differ: so do the bytes


class _Histogram(nn.Module):
    def forward(self, x: Any) -> Any:
        return torch.histc(x, bins=4)


class _DataDependent(nn.Module):
    def forward(self, x: Any) -> Any:
        if x.sum() > 0:
            return x * 2
        return x


def test_export_failures_name_the_op_and_quote_torch() -> None:
    with pytest.raises(ModelLoadError) as info:
        load_model(_Histogram(), {"example_inputs": torch.randn(4, 4)})
    message = str(info.value)
    assert "cannot translate op aten.histc.default of _Histogram to ONNX" in message
    assert "NotImplementedError: aten_histc" in message and "\n" not in message
    with pytest.raises(ModelLoadError) as info:
        load_model(_DataDependent(), {"example_inputs": torch.randn(4, 4)})
    message = str(info.value)
    assert message.startswith("torch.export cannot capture _DataDependent at test_torch.py:")
    assert "`if x.sum() > 0:`" in message and "data-dependent" in message


def test_torch_save_files_and_unknown_formats(tmp_path: Path) -> None:
    model = nn.Linear(2, 2)
    torch.save(model.state_dict(), tmp_path / "weights.pt")
    with pytest.raises(ModelLoadError, match="not TorchScript nor a torch.export program"):
        load_model(tmp_path / "weights.pt")
    (tmp_path / "model.bin").write_bytes(b"\0" * 64)
    with pytest.raises(ModelLoadError, match="unknown model format.*ONNX.*PyTorch.*TensorFlow"):
        load_model(tmp_path / "model.bin")
    (tmp_path / "folder").mkdir()
    with pytest.raises(ModelLoadError, match="directory without saved_model.pb"):
        load_model(tmp_path / "folder")
    with pytest.raises(ModelLoadError, match="cannot compile a builtins.dict"):
        load_model({"not": "a model"})
    onnx.save(make_mlp_model(), tmp_path / "mlp.onnx")
    with pytest.raises(CompileError, match="example_inputs do not apply to a onnx source"):
        load_model(tmp_path / "mlp.onnx", {"example_inputs": 1})


def test_missing_torch_names_the_extra(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    program = torch.export.export(nn.Linear(2, 2), (torch.randn(1, 2),))
    torch.export.save(program, tmp_path / "m.pt2")
    monkeypatch.setitem(sys.modules, "torch", None)  # import torch now raises ImportError
    with pytest.raises(ModelLoadError, match=r"needs PyTorch: pip install 'ai-vmm\[torch\]'"):
        load_model(tmp_path / "m.pt2")


@pytest.mark.slow
def test_minilm_real_weights(
    real_file: Callable[[str], Path],
    compile_run: Callable[..., Any],
    record_property: Callable[[str, Any], None],
) -> None:
    """all-MiniLM-L6-v2 from its shipped safetensors: sentence embeddings match torch."""
    transformers = pytest.importorskip("transformers")
    tokenizers = pytest.importorskip("tokenizers")
    from safetensors.torch import load_file

    config = transformers.BertConfig.from_json_file(str(real_file("all_minilm_l6_v2.config.json")))
    model = transformers.BertModel(config, add_pooling_layer=False).eval()
    state = load_file(str(real_file("all_minilm_l6_v2.safetensors")))
    missing, _ = model.load_state_dict(
        {k.removeprefix("bert."): v for k, v in state.items()}, strict=False
    )
    assert not [k for k in missing if "position_ids" not in k]
    tokenizer = tokenizers.Tokenizer.from_file(str(real_file("bert_uncased_tokenizer.json")))
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")

    def encode(sentences: list[str]) -> dict[str, np.ndarray]:
        batch = tokenizer.encode_batch(sentences)
        return {
            "input_ids": np.array([e.ids for e in batch], np.int64),
            "attention_mask": np.array([e.attention_mask for e in batch], np.int64),
            "token_type_ids": np.array([e.type_ids for e in batch], np.int64),
        }

    def embed(hidden: np.ndarray, mask: np.ndarray) -> np.ndarray:
        summed = (hidden * mask[..., None]).sum(1) / mask.sum(1, keepdims=True)
        return summed / np.linalg.norm(summed, axis=1, keepdims=True)

    example = {k: torch.from_numpy(v) for k, v in encode(["An example.", "Two of them."]).items()}
    dims = {name: {0: "batch", 1: "seq"} for name in example}
    sentences = [
        "The quick brown fox jumps over the lazy dog.",
        "A fast auburn fox leaps above a sleepy hound.",
        "A compiler turns a model into an artifact that a small runtime executes.",
        "Interest rates rose again this quarter.",
    ]
    feed = encode(sentences)  # batch 4, a sequence length other than the example's
    result, got = compile_run(model, feed, example_inputs=example, dynamic_shapes=dims)
    assert [o["name"] for o in result.manifest["outputs"]] == ["last_hidden_state"]
    with torch.no_grad():
        expected = model(**{k: torch.from_numpy(v) for k, v in feed.items()}).last_hidden_state
    ours = embed(got["last_hidden_state"], feed["attention_mask"])
    theirs = embed(expected.numpy(), feed["attention_mask"])
    cosine = (ours * theirs).sum(1)
    record_property("min_cosine", float(cosine.min()))
    record_property(
        "max_abs_error", float(np.abs(got["last_hidden_state"] - expected.numpy()).max())
    )
    assert cosine.min() >= 0.9999, cosine
    # Real weights: the paraphrase is the fox sentence's nearest neighbour.
    similarity = ours @ ours.T
    assert similarity[0, 1] > max(similarity[0, 2], similarity[0, 3]) + 0.2, similarity
