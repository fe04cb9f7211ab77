"""NaN/inf propagation check (issue 13, case 8) with real ONNX Runtime and OpenVINO executors."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper
from onnx import helper as oh

from ai_vmm.runtime.executors import create_executor
from ai_vmm.special_values import check_special_values, summary_line

RNG = np.random.default_rng(0)


Runner = Callable[[dict[str, Any]], Mapping[str, Any]]


def _save(
    tmp_path: Path,
    name: str,
    nodes: list[Any],
    inits: list[Any],
    x: list[int],
    y: list[int],
    dtype: int,
) -> Path:
    graph = oh.make_graph(
        nodes,
        name,
        [oh.make_tensor_value_info("x", dtype, x)],
        [oh.make_tensor_value_info("y", TensorProto.FLOAT, y)],
        inits,
    )
    path = tmp_path / f"{name}.onnx"
    onnx.save(oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)]), path)
    return path


def _cnn(tmp_path: Path) -> Path:
    """Conv -> Relu -> GlobalAveragePool -> Flatten -> Gemm: a small image classifier."""
    weights = numpy_helper.from_array(RNG.standard_normal((4, 3, 3, 3)).astype(np.float32), "W")
    head = numpy_helper.from_array(RNG.standard_normal((4, 5)).astype(np.float32), "G")
    nodes = [
        oh.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        oh.make_node("Relu", ["c"], ["r"]),
        oh.make_node("GlobalAveragePool", ["r"], ["p"]),
        oh.make_node("Flatten", ["p"], ["f"]),
        oh.make_node("Gemm", ["f", "G"], ["y"]),
    ]
    return _save(tmp_path, "cnn", nodes, [weights, head], [1, 3, 8, 8], [1, 5], TensorProto.FLOAT)


def _runner(target: str, path: Path, config: dict[str, Any] | None = None) -> Runner:
    executor = create_executor(target, path, "CPU", config or {}, ("y",))
    return executor.run


def _reference(path: Path) -> Runner:
    return _runner("onnxruntime", path, {"graph_optimization_level": "disable"})


def test_openvino_losing_nan_is_reported(tmp_path: Path) -> None:
    model = _cnn(tmp_path)
    sample = {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    record = check_special_values(_reference(model), _runner("openvino", model), sample)
    json.dumps(record)  # goes into report.json as is
    assert record["status"] == "differs" and not record["passed"]
    lost = {(c["value"], c["fill"]) for c in record["cases"] if c["result"] == "lost"}
    # Measured here: OpenVINO CPU returns finite logits for an all-NaN image (Relu maps NaN to 0).
    assert ("nan", "all") in lost
    case = next(c for c in record["cases"] if (c["value"], c["fill"]) == ("nan", "all"))
    assert case["reference"]["y"]["nan"] == 5 and case["candidate"]["y"]["nonfinite"] == 0
    assert "finite values where the reference returns NaN/inf" in record["summary"]
    assert summary_line(record).startswith("NaN/inf: differs: ")


def test_onnxruntime_optimized_keeps_nan_like_the_reference(tmp_path: Path) -> None:
    model = _cnn(tmp_path)
    sample = {"x": RNG.standard_normal((1, 3, 8, 8)).astype(np.float32)}
    record = check_special_values(_reference(model), _runner("onnxruntime", model), sample)
    assert record["status"] == "same" and record["passed"], record["summary"]
    assert {c["result"] for c in record["cases"]} == {"same"}
    assert len(record["cases"]) == 6  # 3 values x (whole input, first element)


def test_cases_the_reference_absorbs_are_not_judged(tmp_path: Path) -> None:
    """Clip to [0, 6]: +/-inf become finite in the reference itself; only NaN is judged."""
    bounds = [numpy_helper.from_array(np.float32(v), n) for n, v in (("lo", 0), ("hi", 6))]
    nodes = [oh.make_node("Clip", ["x", "lo", "hi"], ["y"])]
    model = _save(tmp_path, "clip", nodes, bounds, [1, 8], [1, 8], TensorProto.FLOAT)
    sample = {"x": RNG.standard_normal((1, 8)).astype(np.float32)}
    record = check_special_values(_reference(model), _runner("openvino", model), sample)
    results = {(c["value"], c["fill"]): c["result"] for c in record["cases"]}
    assert results[("+inf", "all")] == results[("-inf", "first")] == "reference finite"
    assert results[("nan", "all")] == "lost"  # OpenVINO's Clip maps NaN into the range
    assert record["status"] == "differs"


def test_integer_inputs_and_a_failing_candidate(tmp_path: Path) -> None:
    table = numpy_helper.from_array(RNG.standard_normal((10, 4)).astype(np.float32), "T")
    nodes = [oh.make_node("Gather", ["T", "x"], ["y"])]
    ids = _save(tmp_path, "ids", nodes, [table], [1, 3], [1, 3, 4], TensorProto.INT64)
    record = check_special_values(
        _reference(ids), _runner("openvino", ids), {"x": np.array([[1, 2, 3]], np.int64)}
    )
    assert record["status"] == "skipped" and record["passed"] and record["cases"] == []
    # A candidate compiled for float64 inputs: ONNX Runtime refuses the float32 feed.
    relu = [oh.make_node("Relu", ["x"], ["r"]), oh.make_node("Cast", ["r"], ["y"], to=1)]
    wide = _save(tmp_path, "wide", relu, [], [1, 4], [1, 4], TensorProto.DOUBLE)
    narrow = _save(tmp_path, "narrow", relu[:1], [], [1, 4], [1, 4], TensorProto.FLOAT)
    narrow_graph = onnx.load(narrow)
    narrow_graph.graph.node[0].output[0] = "y"
    onnx.save(narrow_graph, narrow)
    sample = {"x": RNG.standard_normal((1, 4)).astype(np.float32)}
    record = check_special_values(_reference(narrow), _runner("onnxruntime", wide), sample)
    assert record["status"] == "differs"
    assert {c["result"] for c in record["cases"]} <= {"error", "reference finite"}
    assert any("error" in c for c in record["cases"])
