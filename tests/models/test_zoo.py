"""Tests for the model zoo (``models/zoo.py``) and the bundled tiny CNN.

``models/`` is not an installed package, so the zoo is imported from its file path. Each model
is built once per session into a temporary directory; ``build`` itself already compares ONNX
Runtime against torch eager, so these tests check the signature and output shapes on inputs of
another batch size than the export used.
"""

from __future__ import annotations

from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

pytest.importorskip("torch")
ort = pytest.importorskip("onnxruntime")
onnx = pytest.importorskip("onnx")

MODELS_DIR = Path(__file__).resolve().parents[2] / "models"
BATCH = 2
SEQ, DEC_SEQ, WIDTH = 16, 8, 128  # the example_inputs defaults

# Output shapes of each entry on example_inputs(name, BATCH).
EXPECTED_SHAPES: dict[str, dict[str, tuple[int, ...]]] = {
    "small_cnn": {"logits": (BATCH, 10)},
    "transformer_encoder": {
        "last_hidden_state": (BATCH, SEQ, 64),
        "pooler_output": (BATCH, 64),
    },
    "lstm": {"logits": (BATCH, 10)},
    "resnet": {"logits": (BATCH, 10)},
    "mobilenet": {"logits": (BATCH, 10)},
    "vit": {"logits": (BATCH, 10)},
    "gpt2": {"logits": (BATCH, SEQ, 1000)},
    "llama": {"logits": (BATCH, SEQ, 1000)},
    "t5": {"logits": (BATCH, DEC_SEQ, 1000)},
    "gru": {"logits": (BATCH, 10)},
    "ocr_crnn": {"log_probs": (BATCH, WIDTH // 4, 37)},
    "dlrm": {"probability": (BATCH, 1)},
    "mlp": {"logits": (BATCH, 10)},
}
CORE = ["small_cnn", "transformer_encoder", "lstm"]
WIDER = [name for name in EXPECTED_SHAPES if name not in CORE]


def _run(path: Path, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, inputs), strict=True))


def _build_and_run(zoo: ModuleType, zoo_dir: Path, name: str) -> None:
    path = zoo.build(name, zoo_dir)
    assert path == zoo_dir / f"{name}.onnx"
    model = onnx.load(str(path))
    assert model.opset_import[0].version >= 18
    assert [i.name for i in model.graph.input] == [s.name for s in zoo.ZOO[name].inputs]
    outputs = _run(path, zoo.example_inputs(name, batch=BATCH))
    assert {k: v.shape for k, v in outputs.items()} == EXPECTED_SHAPES[name]
    assert all(np.isfinite(v).all() for v in outputs.values())


def test_zoo_lists_every_expected_entry(zoo: ModuleType) -> None:
    assert set(zoo.ZOO) == set(EXPECTED_SHAPES)
    for name, entry in zoo.ZOO.items():
        assert entry.name == name
        assert entry.description
        assert tuple(EXPECTED_SHAPES[name]) == entry.outputs


def test_example_inputs_are_deterministic_and_in_range(zoo: ModuleType) -> None:
    first = zoo.example_inputs("transformer_encoder", batch=3)
    second = zoo.example_inputs("transformer_encoder", batch=3)
    assert list(first) == ["input_ids", "attention_mask"]
    np.testing.assert_array_equal(first["input_ids"], second["input_ids"])
    ids = first["input_ids"]
    assert ids.dtype == np.int64 and ids.shape == (3, SEQ)
    assert ids.min() >= 0 and ids.max() < zoo.VOCAB
    np.testing.assert_array_equal(first["attention_mask"], np.ones((3, SEQ), np.int64))
    pixels = zoo.example_inputs("small_cnn")["pixel_values"]
    assert pixels.dtype == np.float32 and pixels.shape == (1, 3, 32, 32)
    sparse = zoo.example_inputs("dlrm", batch=4, dims={"seq": 5})["sparse_indices"]
    assert sparse.dtype == np.int64 and sparse.shape == (4, 3)


def test_unknown_name_lists_the_known_ones(zoo: ModuleType, tmp_path: Path) -> None:
    with pytest.raises(KeyError, match="small_cnn"):
        zoo.build("no_such_model", tmp_path)


@pytest.mark.parametrize("name", CORE)
def test_core_model_builds_and_runs(zoo: ModuleType, zoo_dir: Path, name: str) -> None:
    _build_and_run(zoo, zoo_dir, name)


def test_build_is_idempotent(zoo: ModuleType, zoo_dir: Path) -> None:
    path = zoo.build("small_cnn", zoo_dir)
    stamp = path.stat().st_mtime_ns
    assert zoo.build("small_cnn", zoo_dir) == path
    assert path.stat().st_mtime_ns == stamp
    assert not list(zoo_dir.glob(".*.tmp.onnx"))


def test_small_cnn_keeps_batchnorm_for_the_compiler(zoo: ModuleType, zoo_dir: Path) -> None:
    ops = [node.op_type for node in onnx.load(str(zoo.build("small_cnn", zoo_dir))).graph.node]
    assert ops.count("Conv") == 3 and ops.count("BatchNormalization") == 3


def test_bundled_tiny_cnn_matches_the_zoo(zoo: ModuleType) -> None:
    import torch

    model_path = MODELS_DIR / "bundled" / "tiny_cnn.onnx"
    assert model_path.stat().st_size < 1_000_000
    with np.load(MODELS_DIR / "bundled" / "tiny_cnn_input.npz") as data:
        inputs = {key: data[key] for key in data.files}
    assert list(inputs) == ["pixel_values"]
    logits = _run(model_path, inputs)["logits"]
    with torch.no_grad():
        expected = zoo.build_module("small_cnn")(torch.from_numpy(inputs["pixel_values"]))
    np.testing.assert_allclose(logits, expected.numpy(), rtol=1e-4, atol=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("name", WIDER)
def test_wider_zoo_model_builds_and_runs(zoo: ModuleType, zoo_dir: Path, name: str) -> None:
    _build_and_run(zoo, zoo_dir, name)


@pytest.mark.slow
def test_static_build_fixes_every_shape(zoo: ModuleType, tmp_path: Path) -> None:
    path = zoo.build("mlp", tmp_path, dynamic=False)
    dims = [d for i in onnx.load(str(path)).graph.input for d in i.type.tensor_type.shape.dim]
    assert all(d.HasField("dim_value") for d in dims)
    assert _run(path, zoo.example_inputs("mlp"))["logits"].shape == (1, 10)
