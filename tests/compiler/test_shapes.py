"""Issue 12's failure classes: shapes that make sense without hints, index inputs in their
domains, a reference that cannot run never blamed on a candidate, samples at their shapes."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import shape_models

import ai_vmm
from ai_vmm.runtime import load
from ai_vmm.runtime.errors import CompileError, InputError
from ai_vmm.shapes import choose_shapes, dynamic_variables
from ai_vmm.signature import model_signature


def _save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def _ort(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


def test_detector_compiles_without_hints_at_a_multiple_of_32(tmp_path: Path) -> None:
    path = _save(shape_models.detector_model(), tmp_path / "det.onnx")
    result = ai_vmm.compile(path, "auto", tmp_path / "det.vmm", tune_seconds=0.2)
    assert result.report["verification"]["passed"]
    primary = result.report["inputs"]["primary"]
    assert primary["h"] % 32 == 0 and primary["w"] % 32 == 0
    # The old default (16 for every dynamic axis) is what broke it: it was tried and refused.
    image = np.random.default_rng(1).standard_normal((1, 3, 320, 256)).astype(np.float32)
    got = load(result.path)(images=image)["head"]
    np.testing.assert_allclose(got, _ort(path, {"images": image})[0], rtol=1e-3, atol=1e-4)


def test_recognizer_falls_to_height_48_and_keeps_a_wide_width(tmp_path: Path) -> None:
    path = _save(shape_models.recognizer_model(), tmp_path / "rec.onnx")
    result = ai_vmm.compile(path, "onnxruntime:CPU", tmp_path / "rec.vmm", tune=False)
    assert result.report["verification"]["passed"]
    primary = result.report["inputs"]["primary"]
    assert primary["height"] == 48 and primary["width"] > 48
    tried = result.report["inputs"]["tried"]
    assert (any(t["error"] for t in tried) and tried[-1]["error"] is None) or any(
        t["error"] is None for t in tried
    )
    line = np.random.default_rng(2).standard_normal((1, 3, 48, 320)).astype(np.float32)
    got = load(result.path)(x=line)["logits"]
    np.testing.assert_allclose(got, _ort(path, {"x": line})[0], rtol=1e-3, atol=1e-4)


def test_minus_one_dimensions_are_dynamic(tmp_path: Path) -> None:
    path = _save(shape_models.minus_one_model(), tmp_path / "m1.onnx")
    result = ai_vmm.compile(path, "openvino:CPU", tmp_path / "m1.vmm", tune=False)
    assert result.report["verification"]["passed"]
    shape = result.manifest["inputs"][0]["shape"]
    assert shape[1] == 3 and all(d is None for d in (shape[0], shape[2], shape[3]))
    x = np.ones((2, 3, 7, 5), np.float32)
    assert load(result.path)(x=x)["y"].shape == (2, 4, 7, 5)


@pytest.mark.parametrize(
    ("builder", "name"),
    [
        (shape_models.index_model, "indices"),
        (shape_models.scatter_model, "indices"),
        (shape_models.roi_align_model, "batch_indices"),
    ],
)
def test_index_inputs_take_values_in_their_domain(tmp_path: Path, builder, name: str) -> None:  # type: ignore[no-untyped-def]
    path = _save(builder(), tmp_path / "idx.onnx")
    result = ai_vmm.compile(path, "openvino:CPU", tmp_path / "idx.vmm", tune=False)
    assert result.report["verification"]["passed"], result.report["verification"]


def test_a_reference_that_cannot_run_is_never_blamed_on_a_candidate(tmp_path: Path) -> None:
    path = _save(shape_models.unknowable_model(), tmp_path / "r.onnx")
    result = ai_vmm.compile(path, "auto", tmp_path / "r.vmm")
    # The compile completes by the static rule, unverified, and says which input to give.
    assert result.report["verification"]["status"] == "skipped"
    assert "--sample" in result.report["unverified"] and "shape" in result.report["unverified"]
    assert result.report["chosen"]["rule"].startswith("first in the static priority order")
    assert all(
        c["status"] == "ok" for c in result.report["candidates"] if c["status"] != "not built"
    )
    # With a real sample it is verified.
    feed = {"x": np.ones((6, 35), np.float32), "shape": np.array([10, 21], np.int64)}
    np.savez(tmp_path / "s.npz", **feed)
    again = ai_vmm.compile(path, "auto", tmp_path / "r2.vmm", samples=tmp_path / "s.npz")
    assert again.report["verification"]["passed"]
    assert again.report["inputs"]["source"] == "samples"


def test_samples_set_the_shapes_that_are_verified_and_timed(tmp_path: Path) -> None:
    path = _save(shape_models.detector_model(), tmp_path / "det.onnx")
    rng = np.random.default_rng(3)
    samples = [
        {"images": rng.standard_normal((1, 3, 64, 96)).astype(np.float32)},
        {"images": rng.standard_normal((2, 3, 128, 64)).astype(np.float32)},
    ]
    result = ai_vmm.compile(path, "auto", tmp_path / "det.vmm", samples=samples, tune_seconds=0.2)
    verification = result.report["verification"]
    assert verification["passed"] and verification["samples"] == 2
    latency = result.report["candidates"][0]["latency"]["buckets"]
    assert {b["sizes"]["h"] for b in latency.values()} == {64, 128}


def test_bad_samples_are_one_line_errors(tmp_path: Path) -> None:
    path = _save(shape_models.detector_model(), tmp_path / "det.onnx")
    with pytest.raises(InputError, match="images"):
        ai_vmm.compile(path, "auto", tmp_path / "a.vmm", samples={"image": np.ones((1, 3, 64, 64))})
    with pytest.raises(InputError, match="does not exist"):
        ai_vmm.compile(path, "auto", tmp_path / "a.vmm", samples=tmp_path / "none.npz")
    assert not (tmp_path / "a.vmm").exists()


def test_unknown_keyword_arguments_are_refused_with_a_hint(tmp_path: Path) -> None:
    path = _save(shape_models.minus_one_model(), tmp_path / "m.onnx")
    with pytest.raises(CompileError, match="did you mean 'calibration'"):
        ai_vmm.compile(path, "auto", tmp_path / "m.vmm", calibration_data="x.npz")


def test_shape_classes_and_buckets() -> None:
    model = shape_models.detector_model()
    import onnx_ir as ir

    specs, _ = model_signature(ir.serde.deserialize_model(model))
    variables = {v.name: v.cls for v in dynamic_variables(specs)}
    assert variables == {"batch": "batch", "h": "spatial", "w": "spatial"}
    choice = choose_shapes(specs, {}, None)
    assert choice.primary is not None and choice.primary.sizes == {"batch": 1, "h": 224, "w": 224}
    assert {b.name for b in choice.buckets} == {"batch=8", "spatial=640"}


def test_metadata_sizes_win_over_the_ladder() -> None:
    import onnx_ir as ir

    model = shape_models.detector_model()
    specs, _ = model_signature(ir.serde.deserialize_model(model))
    choice = choose_shapes(specs, {}, None, {"imgsz": "[320, 480]"})
    assert choice.primary is not None
    assert (choice.primary.sizes["h"], choice.primary.sizes["w"]) == (320, 480)


def test_a_huge_declared_dimension_is_one_line_not_a_memory_error(tmp_path: Path) -> None:
    import onnx.helper as oh

    x = oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 2**40])
    y = oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1, 2**40])
    graph = oh.make_graph([oh.make_node("Relu", ["x"], ["y"], name="r")], "g", [x], [y])
    model = oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)])
    model.ir_version = 8
    path = _save(model, tmp_path / "huge.onnx")
    result = ai_vmm.compile(path, "onnxruntime:CPU", tmp_path / "huge.vmm", tune=False)
    assert "GiB" in result.report["unverified"] and "--input" in result.report["unverified"]
    assert result.report["verification"]["status"] == "skipped"


def test_an_unknown_target_suggests_the_closest_one(tmp_path: Path) -> None:
    path = _save(shape_models.minus_one_model(), tmp_path / "m.onnx")
    with pytest.raises(Exception, match="did you mean cuda:0"):
        ai_vmm.compile(path, "gpu", tmp_path / "m.vmm")


def test_question_mark_dimensions_are_anonymous(tmp_path: Path) -> None:
    # paddle2onnx writes "?" for every dynamic size; two "?" axes are not one symbol.
    model = shape_models.minus_one_model()
    dims = model.graph.input[0].type.tensor_type.shape.dim
    dims[2].dim_param, dims[3].dim_param = "?", "?"
    path = _save(model, tmp_path / "q.onnx")
    sample = {"x": np.ones((2, 3, 48, 192), np.float32)}
    result = ai_vmm.compile(path, "onnxruntime:CPU", tmp_path / "q.vmm", samples=sample)
    assert result.report["verification"]["passed"]
    assert load(result.path)(**sample)["y"].shape == (2, 4, 48, 192)


def test_a_leading_axis_named_like_a_sequence_is_a_sequence() -> None:
    from ai_vmm.runtime.artifact import TensorSpec

    specs = (
        TensorSpec("input", "float32", ("sequence_length", 576)),
        TensorSpec("h", "float32", (1, 1, 128)),
    )
    assert [v.cls for v in dynamic_variables(specs)] == ["sequence"]
