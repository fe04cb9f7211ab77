"""TensorFlow frontend: Keras (in memory, .keras, .h5), SavedModel and TFLite through tf2onnx.

Parity tolerances (artifact on OpenVINO CPU, fp32, vs the framework's own outputs on the same
inputs): rtol 1e-4, atol 1e-5 against Keras ``predict``, the SavedModel signature and the TFLite
interpreter for the CNN / transformer / RNN (measured max abs errors ~1e-7..1e-6). MediaPipe's
real models (on the ONNX Runtime target): rtol 1e-4, atol 1e-3 (outputs reach ~200 in pixels;
measured max abs error ~1e-4).
Keras and SavedModel checks run on another batch and sequence length than the model was built
with (dynamic dimensions); TFLite models have the static shapes TFLite gives them.

Tests that need TensorFlow skip without the ``[tf]`` extra; the format detection and the
missing-framework hint are tested either way.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import pytest

import ai_vmm
from ai_vmm.cli import main
from ai_vmm.frontends import detect_format, load_model
from ai_vmm.runtime import CompileError, ModelLoadError

RTOL, ATOL = 1e-4, 1e-5
MEDIAPIPE = (
    "mp_face_detection_short_range.tflite",
    "mp_face_landmark.tflite",
    "mp_hand_landmark_full.tflite",
    "mp_iris_landmark.tflite",
)


@pytest.fixture(scope="module")
def tf() -> ModuleType:
    module = pytest.importorskip("tensorflow", reason="needs the [tf] extra")
    pytest.importorskip("tf2onnx", reason="needs the [tf] extra")
    return module


@pytest.fixture(scope="module")
def keras_models(tf: ModuleType) -> dict[str, Any]:
    """A CNN, a transformer block (exact GELU: TF's Erfc) and an LSTM + GRU, fixed weights."""
    import keras
    from keras import layers

    keras.utils.set_random_seed(0)
    image = keras.Input((32, 32, 3), name="image")
    x = layers.Conv2D(8, 3, padding="same")(image)
    x = layers.BatchNormalization()(x)
    x = layers.ReLU()(x)
    x = layers.MaxPooling2D()(x)
    x = layers.DepthwiseConv2D(3, padding="same", activation="swish")(x)
    x = layers.GlobalAveragePooling2D()(x)
    cnn = keras.Model(image, layers.Dense(5, name="logits")(x), name="cnn")

    tokens = keras.Input((None, 16), name="tokens")
    attention = layers.MultiHeadAttention(num_heads=2, key_dim=8)(tokens, tokens)
    x = layers.LayerNormalization()(tokens + attention)
    feed_forward = layers.Dense(16)(layers.Dense(32, activation="gelu")(x))
    hidden = layers.LayerNormalization(name="hidden")(x + feed_forward)
    transformer = keras.Model(tokens, hidden, name="transformer")

    frames = keras.Input((None, 8), name="frames")
    x = layers.LSTM(16, return_sequences=True)(frames)
    x = layers.GRU(12)(x)
    rnn = keras.Model(frames, layers.Dense(3, name="scores")(x), name="rnn")

    # TFLite keeps static shapes; its RNN is a bidirectional LSTM (TFLite's fused LSTM op).
    fixed = keras.Input((5, 8), batch_size=1, name="frames")
    x = layers.Bidirectional(layers.LSTM(8))(fixed)
    rnn_tflite = keras.Model(fixed, layers.Dense(3)(x), name="rnn_tflite")
    return {"cnn": cnn, "transformer": transformer, "rnn": rnn, "rnn_tflite": rnn_tflite}


def _normal(shape: tuple[int, ...], seed: int) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)


def _interpreter(tf: ModuleType, path: Path) -> Any:
    """LiteRT's interpreter when installed (TF's own is deprecated), else TensorFlow's."""
    try:
        from ai_edge_litert.interpreter import Interpreter
    except ImportError:
        Interpreter = tf.lite.Interpreter
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # "tf.lite.Interpreter is deprecated"
        return Interpreter(model_path=str(path))


def _tflite(tf: ModuleType, model: Any, path: Path) -> Path:
    path.write_bytes(tf.lite.TFLiteConverter.from_keras_model(model).convert())
    return path


@pytest.mark.parametrize(
    ("name", "shape"),
    [("cnn", (3, 32, 32, 3)), ("transformer", (3, 9, 16)), ("rnn", (3, 11, 8))],
)
def test_keras_in_memory_parity(
    keras_models: dict[str, Any],
    compile_run: Callable[..., Any],
    close: Any,
    name: str,
    shape: tuple[int, ...],
) -> None:
    model = keras_models[name]
    assert detect_format(model) == "keras.model"
    feed = {model.inputs[0].name: _normal(shape, 1)}
    result, got = compile_run(model, feed)
    output = result.manifest["outputs"][0]
    assert output["name"] == model.output_names[0]
    assert output["shape"][0] is None or isinstance(output["shape"][0], str)  # dynamic batch
    expected = model.predict(feed[model.inputs[0].name], verbose=0)
    close(got[output["name"]], expected, RTOL, ATOL)


def test_keras_files(
    tf: ModuleType,
    keras_models: dict[str, Any],
    tmp_path: Path,
    compile_run: Callable[..., Any],
    close: Any,
) -> None:
    rnn = keras_models["rnn"]
    rnn.save(tmp_path / "rnn.h5")
    assert detect_format(tmp_path / "rnn.h5") == "keras.file"
    feed = {"frames": _normal((2, 7, 8), 2)}
    _, got = compile_run(tmp_path / "rnn.h5", feed)
    close(got["scores"], rnn.predict(feed["frames"], verbose=0), RTOL, ATOL)

    # vmmc takes a .keras file like an ONNX file.
    cnn = keras_models["cnn"]
    cnn.save(tmp_path / "cnn.keras")
    assert detect_format(tmp_path / "cnn.keras") == "keras.file"
    out = tmp_path / "cnn.vmm"
    assert main(["compile", str(tmp_path / "cnn.keras"), "-o", str(out), "--no-tune"]) == 0
    manifest = json.loads((out / "manifest.json").read_text())
    assert [i["name"] for i in manifest["inputs"]] == ["image"]
    pixels = _normal((4, 32, 32, 3), 3)
    got_cnn = ai_vmm.load(out)(image=pixels)["logits"]
    close(got_cnn, cnn.predict(pixels, verbose=0), RTOL, ATOL)


def test_saved_model_parity_with_its_signature(
    tf: ModuleType,
    keras_models: dict[str, Any],
    tmp_path: Path,
    compile_run: Callable[..., Any],
    close: Any,
) -> None:
    directory = tmp_path / "transformer_saved_model"
    keras_models["transformer"].export(str(directory), verbose=False)
    assert detect_format(directory) == "tf.saved_model"
    feed = {"tokens": _normal((2, 13, 16), 4)}
    result, got = compile_run(directory, feed)
    assert [o["name"] for o in result.manifest["outputs"]] == ["output_0"]  # signature's key
    signature = tf.saved_model.load(str(directory)).signatures["serving_default"]
    expected = signature(tokens=tf.constant(feed["tokens"]))["output_0"].numpy()
    close(got["output_0"], expected, RTOL, ATOL)
    with pytest.raises(
        ModelLoadError, match="has no signature 'nope'; it has: serve, serving_default"
    ):
        load_model(directory, {"signature": "nope"})


@pytest.mark.parametrize(
    ("name", "shape"),
    [("cnn", (1, 32, 32, 3)), ("transformer", (1, 7, 16)), ("rnn_tflite", (1, 5, 8))],
)
def test_tflite_parity_with_the_interpreter(
    tf: ModuleType,
    keras_models: dict[str, Any],
    tmp_path: Path,
    compile_run: Callable[..., Any],
    close: Any,
    name: str,
    shape: tuple[int, ...],
) -> None:
    """The transformer's GELU is TFLite's GELU op, which tf2onnx 1.17 lacks (added here)."""
    model = keras_models[name]
    if name == "transformer":  # a fixed sequence length, as TFLite models usually have
        import keras

        fixed = keras.Input((7, 16), batch_size=1, name="tokens")
        model = keras.Model(fixed, model(fixed))
    path = _tflite(tf, model, tmp_path / f"{name}.tflite")
    assert detect_format(path) == "tflite"
    interpreter = _interpreter(tf, path)
    signature = interpreter.get_signature_list()["serving_default"]
    feed = {signature["inputs"][0]: _normal(shape, 5)}
    expected = interpreter.get_signature_runner()(**feed)
    result, got = compile_run(path, feed)
    # TFLite tensor names are replaced by the signature's keys.
    assert [i["name"] for i in result.manifest["inputs"]] == signature["inputs"]
    assert [o["name"] for o in result.manifest["outputs"]] == signature["outputs"]
    for key in signature["outputs"]:
        close(got[key], expected[key], RTOL, ATOL)


def test_export_is_deterministic(
    tf: ModuleType, keras_models: dict[str, Any], tmp_path: Path
) -> None:
    """tf2onnx's names and node order change between runs; the frontend's canonical order and
    names make the bytes (and so the cache key) the same."""
    path = _tflite(tf, keras_models["cnn"], tmp_path / "cnn.tflite")
    assert load_model(path).sha256 == load_model(path).sha256
    cnn = keras_models["cnn"]
    assert load_model(cnn).sha256 == load_model(cnn).sha256


@pytest.mark.slow
@pytest.mark.parametrize("name", MEDIAPIPE)
def test_mediapipe_tflite_models(
    tf: ModuleType,
    real_file: Callable[[str], Path],
    compile_run: Callable[..., Any],
    close: Any,
    name: str,
) -> None:
    """MediaPipe's shipped models (fp16 weights, DEQUANTIZE, PReLU) convert and run (all four,
    measured): parity with the TFLite interpreter on a real-valued image-shaped input."""
    path = real_file(name)
    interpreter = _interpreter(tf, path)
    interpreter.allocate_tensors()
    rng = np.random.default_rng(6)
    feed = {}
    for detail in interpreter.get_input_details():
        feed[detail["name"]] = rng.random(tuple(detail["shape"]), dtype=np.float32)
        interpreter.set_tensor(detail["index"], feed[detail["name"]])
    interpreter.invoke()
    expected = {
        d["name"].removesuffix(":0"): interpreter.get_tensor(d["index"])
        for d in interpreter.get_output_details()
    }
    result, got = compile_run(path, feed, target="onnxruntime:CPU")
    assert sorted(o["name"] for o in result.manifest["outputs"]) == sorted(expected)
    for key in expected:
        close(got[key], expected[key], 1e-4, 1e-3)


def test_unconvertible_op_is_named_with_tf2onnx_message(tf: ModuleType) -> None:
    import keras

    class LogGamma(keras.layers.Layer):
        def call(self, x: Any) -> Any:
            return tf.math.lgamma(x)

    inputs = keras.Input((4,), name="x")
    model = keras.Model(inputs, LogGamma()(keras.layers.Dense(4)(inputs)), name="gamma")
    with pytest.raises(ModelLoadError) as info:
        load_model(model)
    message = str(info.value)
    assert message.startswith("tf2onnx cannot convert TensorFlow op Lgamma (1 node(s)) of ")
    assert "'gamma'" in message and "Lgamma] is not supported" in message


def test_subclassed_keras_model_needs_an_input_signature(tf: ModuleType, tmp_path: Path) -> None:
    import keras

    class Head(keras.Model):
        def __init__(self) -> None:
            super().__init__()
            self.dense = keras.layers.Dense(3)

        def call(self, x: Any) -> Any:
            return self.dense(x)

    model = Head()
    model(np.zeros((1, 5), np.float32))
    with pytest.raises(ModelLoadError, match="declares no inputs.*input_signature"):
        load_model(model)
    spec = tf.TensorSpec((None, 5), tf.float32, name="features")
    loaded = load_model(model, {"input_signature": [spec], "output_names": ["scores"]})
    assert [v.name for v in loaded.model.graph.inputs] == ["features"]
    assert [v.name for v in loaded.model.graph.outputs] == ["scores"]
    with pytest.raises(CompileError, match="input_signature do not apply to a tflite source"):
        load_model(_fake_tflite(tmp_path), {"input_signature": [spec]})


def _fake_tflite(directory: Path) -> Path:
    """A file with the TFLite flatbuffer identifier and nothing else."""
    path = directory / "model.tflite"
    path.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 56)
    return path


def test_formats_are_detected_without_tensorflow(tmp_path: Path) -> None:
    sniffed = tmp_path / "model.bin"
    sniffed.write_bytes(b"\x1c\x00\x00\x00TFL3" + b"\x00" * 56)
    assert detect_format(sniffed) == "tflite"
    (tmp_path / "weights.hdf5").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 56)
    assert detect_format(tmp_path / "weights.hdf5") == "keras.file"
    saved = tmp_path / "exported"
    saved.mkdir()
    (saved / "saved_model.pb").write_bytes(b"")
    # Detection imports no framework (checked in a fresh interpreter).
    code = (
        "import sys; from ai_vmm.frontends import detect_format; "
        f"print(detect_format({str(saved)!r}), 'tensorflow' in sys.modules, 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["tf.saved_model", "False", "False"]


def test_missing_tensorflow_names_the_extra(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    path = _fake_tflite(tmp_path)
    monkeypatch.setitem(sys.modules, "tensorflow", None)  # import tensorflow now raises
    with pytest.raises(
        ModelLoadError, match=r"tflite source needs TensorFlow: pip install 'ai-vmm\[tf\]'"
    ):
        load_model(path)
