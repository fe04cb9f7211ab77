"""The quantize stage end to end on a CNN trained here on real data (scikit-learn's digits).

Accuracy claims use the held-out test split (never seen by training or calibration) and its real
labels; the speed gate's decisions are checked with its threshold moved out of reach, never by
timing assertions.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np
import onnx
import onnx.helper as oh
import pytest

import ai_vmm
import ai_vmm.quantize
from ai_vmm.cli import main
from ai_vmm.runtime.errors import CompileError, InputError
from tests_support import load_module

REPO = Path(__file__).resolve().parents[2]
ORT = "onnxruntime:CPU"
OV = "openvino:CPU"


def _quant_models() -> ModuleType:
    return load_module(REPO / "models" / "quant_models.py", "quant_models")


@dataclass
class Digits:
    path: Path
    calib: Path
    x_test: np.ndarray
    y_test: np.ndarray
    float_top1: float


def _top1(run: Any, x: np.ndarray, y: np.ndarray) -> float:
    logits = np.concatenate([run(x[i : i + 64]) for i in range(0, len(x), 64)])
    return 100.0 * float(np.mean(logits.argmax(axis=1) == y))


@pytest.fixture(scope="module")
def digits(tmp_path_factory: pytest.TempPathFactory) -> Digits:
    import onnxruntime as ort

    root = tmp_path_factory.mktemp("digits")
    path, splits = _quant_models().train_digits_cnn(root / "digits_cnn.onnx")
    calib = root / "calib.npz"
    np.savez(calib, pixels=splits.x_calib)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    float_top1 = _top1(lambda x: session.run(None, {"pixels": x})[0], splits.x_test, splits.y_test)
    assert float_top1 > 90.0, "the fixture CNN did not learn the digits"
    return Digits(path, calib, splits.x_test, splits.y_test, float_top1)


def _compile(digits: Digits, target: str, out: Path, **options: Any) -> Any:
    options.setdefault("calibration", digits.calib)
    return ai_vmm.compile(
        str(digits.path), target, out, quantize="int8", tune_seconds=0.3, **options
    )


def _payload_is_int8(artifact: Path) -> bool:
    xml = list(artifact.glob("p0/*.xml"))
    if xml:
        text = xml[0].read_text()
        return "FakeQuantize" in text or 'element_type="i8"' in text
    ops = {node.op_type for node in onnx.load(str(artifact / "p0" / "model.onnx")).graph.node}
    return "DequantizeLinear" in ops


@pytest.mark.slow
@pytest.mark.parametrize("target", [OV, ORT])
def test_int8_top1_within_one_point_of_float(digits: Digits, target: str, tmp_path: Path) -> None:
    result = _compile(digits, target, tmp_path / "q.vmm", force_quantize=True)
    section = result.report["quantization"]
    assert section["decision"] == "quantized", section.get("reason")
    assert section["quantized_layers"]["count"] >= 3
    assert section["data"]["held_out_samples"] > 0 and not section["data"]["random"]
    assert _payload_is_int8(result.path)
    model = ai_vmm.runtime.load(result.path)
    top1 = _top1(lambda x: model(pixels=x)["logits"], digits.x_test, digits.y_test)
    assert abs(top1 - digits.float_top1) <= 1.0, (top1, digits.float_top1)


def test_speed_gate_keeps_float_unless_forced(
    digits: Digits, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(ai_vmm.quantize, "SPEED_THRESHOLD", 1e9)
    kept = _compile(digits, ORT, tmp_path / "float.vmm").report["quantization"]
    assert kept["decision"] == "float" and "not faster than float" in kept["reason"]
    assert kept["speed"]["passed"] is False and kept["speed"]["ratio"] > 0
    assert not _payload_is_int8(tmp_path / "float.vmm")
    forced = _compile(digits, ORT, tmp_path / "forced.vmm", force_quantize=True)
    section = forced.report["quantization"]
    assert section["decision"] == "quantized"
    assert "kept although not faster: --force-quantize" in section["notes"]
    assert _payload_is_int8(tmp_path / "forced.vmm")


def test_no_tune_skips_the_speed_gate(digits: Digits, tmp_path: Path) -> None:
    result = _compile(digits, ORT, tmp_path / "q.vmm", tune=False)
    section = result.report["quantization"]
    assert section["speed"]["status"] == "skipped" and section["decision"] == "quantized"
    assert result.manifest["compile_options"]["quantization"]["calibration"]["sha256"]


def test_final_classifier_stays_float(digits: Digits, tmp_path: Path) -> None:
    section = _compile(digits, ORT, tmp_path / "q.vmm", force_quantize=True).report["quantization"]
    reasons = list(section["float_layers"].values())
    assert reasons == ["final classifier (class scores): kept float"]


def test_sensitivity_search_keeps_layers_float_to_meet_a_tighter_limit(
    digits: Digits, tmp_path: Path
) -> None:
    first = _compile(digits, ORT, tmp_path / "a.vmm", force_quantize=True).report["quantization"]
    limit = 0.6 * first["accuracy"]["drops"]["mean_abs"]
    second = _compile(
        digits,
        ORT,
        tmp_path / "b.vmm",
        force_quantize=True,
        max_accuracy_drop={"mean_abs": limit},
    ).report["quantization"]
    assert second["accuracy_restoration"]["status"] == "done"
    restored = [n for n, why in second["float_layers"].items() if "accuracy restoration" in why]
    assert restored, second["float_layers"]
    if second["decision"] == "quantized":
        assert second["accuracy"]["drops"]["mean_abs"] <= limit
        assert second["accuracy"]["passed"]
    else:
        assert second["accuracy_limit_exceeded"]


@pytest.mark.slow
def test_nncf_accuracy_control_then_fallback(digits: Digits, tmp_path: Path) -> None:
    result = _compile(
        digits, OV, tmp_path / "q.vmm", force_quantize=True, max_accuracy_drop=["cosine=0"]
    )
    section = result.report["quantization"]
    assert section["accuracy_restoration"]["status"] == "done"
    assert "accuracy_control" in section["method"]
    # No quantized layer can match float exactly: the artifact falls back to float and says so.
    assert section["decision"] == "float"
    assert "accuracy" in section["reason"] or "no layer stayed quantized" in section["reason"]
    assert not _payload_is_int8(result.path)


def test_fail_on_accuracy_drop_exits_non_zero(digits: Digits, tmp_path: Path) -> None:
    out = tmp_path / "q.vmm"
    argv = [
        "compile",
        str(digits.path),
        "--target",
        ORT,
        "-o",
        str(out),
        "--quantize",
        "int8",
        "--calib",
        str(digits.calib),
        "--max-accuracy-drop",
        "cosine=0",
        "--tune-seconds",
        "0.2",
    ]
    assert main([*argv, "--fail-on-accuracy-drop"]) == CompileError.exit_code
    assert (out / "manifest.json").is_file()  # the float artifact is still written
    report = ai_vmm.runtime.load(out)  # and loads
    assert report is not None
    assert main(argv) == 0


def test_random_calibration_warns_and_report_says_unknown(digits: Digits, tmp_path: Path) -> None:
    messages: list[str] = []
    result = _compile(
        digits,
        ORT,
        tmp_path / "q.vmm",
        calibration="random",
        force_quantize=True,
        progress=messages.append,
    )
    assert any("WARNING" in m and "UNKNOWN" in m for m in messages)
    section = result.report["quantization"]
    assert section["data"]["random"] is True
    assert section["accuracy"]["enforced"] is False
    assert "unknown" in section["accuracy"]["note"]


def test_int8_without_calibration_is_refused(digits: Digits, tmp_path: Path) -> None:
    with pytest.raises(CompileError, match=r"needs calibration data.*--calib random"):
        ai_vmm.compile(str(digits.path), ORT, tmp_path / "q.vmm", quantize="int8")
    assert not (tmp_path / "q.vmm").exists()


def test_calibration_with_the_wrong_dtype_names_the_input(digits: Digits, tmp_path: Path) -> None:
    samples = [{"pixels": np.zeros((1, 1, 8, 8))} for _ in range(4)]  # float64
    with pytest.raises(InputError, match=r"input 'pixels' has dtype float64.*float32"):
        _compile(digits, ORT, tmp_path / "q.vmm", calibration=samples)


def test_nothing_to_quantize_gives_a_float_artifact(tmp_path: Path) -> None:
    graph = oh.make_graph(
        [oh.make_node("Add", ["x", "x"], ["a"], name="add"), oh.make_node("Relu", ["a"], ["y"])],
        "no_weights",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, ["batch", 4])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, ["batch", 4])],
    )
    path = tmp_path / "add.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    messages: list[str] = []
    samples = [{"x": np.full((1, 4), i, np.float32)} for i in range(4)]
    result = ai_vmm.compile(
        str(path),
        ORT,
        tmp_path / "q.vmm",
        quantize="int8",
        calibration=samples,
        progress=messages.append,
    )
    section = result.report["quantization"]
    assert section["decision"] == "float" and "nothing to quantize" in section["reason"]
    assert any("nothing to quantize" in m for m in messages)
    out = ai_vmm.runtime.load(result.path)(x=np.ones((2, 4), np.float32))["y"]
    np.testing.assert_allclose(out, 2.0)


@pytest.mark.parametrize(
    ("target", "options"),
    [
        (OV, {"weights": "int8"}),
        (OV, {"weights": "int4", "group_size": 32, "ratio": 0.5}),
        (ORT, {"weights": "int4", "group_size": 32}),
        (ORT, {"quantize": "int8-dynamic"}),
        (ORT, {"precision": "fp16"}),
    ],
    ids=["ov-w8", "ov-w4-mixed", "ort-w4", "ort-dynamic", "ort-fp16"],
)
def test_weight_only_dynamic_and_fp16_build_and_run(
    zoo_model: Any, target: str, options: dict[str, Any], tmp_path: Path
) -> None:
    # Mechanics only (the zoo decoder has random weights): the accuracy and size claims live in
    # docs/quantization.md, measured on a decoder trained on real text by scripts/bench_quant.py.
    result = ai_vmm.compile(
        str(zoo_model("gpt2")),
        target,
        tmp_path / "w.vmm",
        force_quantize=True,
        tune_seconds=0.2,
        **options,
    )
    section = result.report["quantization"]
    assert section["decision"] == "quantized", section.get("reason")
    assert section["profile"]["transformer"] is True
    assert section["quantized_layers"]["count"] > 0
    if "weights" in options:
        assert section["size"]["ratio"] < 0.95
    ids = np.arange(12, dtype=np.int64).reshape(1, 12)
    logits = ai_vmm.runtime.load(result.path)(input_ids=ids)["logits"]
    assert logits.dtype == np.float32 and np.isfinite(logits).all()


def test_bf16_on_onnxruntime_keeps_float_with_a_reason(zoo_model: Any, tmp_path: Path) -> None:
    result = ai_vmm.compile(
        str(zoo_model("mlp")), ORT, tmp_path / "b.vmm", precision="bf16", tune_seconds=0.2
    )
    section = result.report["quantization"]
    assert section["decision"] == "float" and "bfloat16" in section["reason"]


def test_bad_options_are_refused_early(digits: Digits, tmp_path: Path) -> None:
    cases: list[tuple[dict[str, Any], str]] = [
        ({"quantize": "int3"}, "unknown --quantize"),
        ({"weights": "int2"}, "unknown --weights"),
        ({"weights": "int8", "group_size": 64}, "apply to --weights int4"),
        ({"weights": "int4", "ratio": 1.5}, r"--ratio must be in \(0, 1\]"),
        ({"max_accuracy_drop": ["accuracy=1"]}, "METRIC one of cosine, top1"),
    ]
    for options, message in cases:
        with pytest.raises(CompileError, match=message):
            ai_vmm.compile(str(digits.path), ORT, tmp_path / "x.vmm", **options)
