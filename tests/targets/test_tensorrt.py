"""The tensorrt target.

TensorRT cannot be installed on our dev or GPU machines (its PyPI packages download from an
index we cannot reach), so the tests that build and run engines skip here. What runs here is
everything that is ours: discovery without TensorRT, the optimization-profile builder, the
precision flags, the capability mapping and static list, the timing-cache location and the
engine.json document the executor checks.
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import onnx
import onnx.helper as oh
import onnx_ir as ir
import pytest
from onnx import numpy_helper

from ai_vmm.runtime.devices import CpuInfo, Device, Inventory
from ai_vmm.runtime.errors import CompileError, DeviceError
from ai_vmm.runtime.executors.tensorrt import (
    ENGINE_INFO,
    CudaGpu,
    check_engine_info,
    read_engine_info,
)
from ai_vmm.targets.base import TargetOptions
from ai_vmm.targets.tensorrt import (
    MAX_FACTOR,
    SUPPORTED_OPS,
    PrecisionFlags,
    TensorRtTarget,
    engine_info,
    optimization_profiles,
    parser_capability,
    precision_flags,
    static_capability,
    timing_cache_path,
    workspace_bytes,
)

TRT_SKIP = (
    "TensorRT is not installable in this environment "
    "(its PyPI packages download from an unreachable index)"
)
CPU = CpuInfo("test cpu", "test", "x86_64", 2, 2, (), 1 << 30)
H100 = CudaGpu(0, "NVIDIA H100 80GB HBM3", "9.0", 80 << 30)


def _conv_model(batch: int | str = "batch", opset: int = 17) -> onnx.ModelProto:
    """x[batch,3,8,8] -> Conv(4 filters, 3x3, pad 1) -> Relu -> y[batch,4,8,8]."""
    rng = np.random.default_rng(0)
    weight = rng.standard_normal((4, 3, 3, 3)).astype(np.float32) / 4
    bias = rng.standard_normal(4).astype(np.float32) / 4
    graph = oh.make_graph(
        [
            oh.make_node("Conv", ["x", "W", "B"], ["c"], name="conv", pads=[1, 1, 1, 1]),
            oh.make_node("Relu", ["c"], ["y"], name="relu"),
        ],
        "tiny_conv",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [batch, 3, 8, 8])],
        [oh.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [batch, 4, 8, 8])],
        [numpy_helper.from_array(weight, "W"), numpy_helper.from_array(bias, "B")],
    )
    return oh.make_model(graph, opset_imports=[oh.make_opsetid("", opset)])


# discovery and the contract ----------------------------------------------------------------


def test_discover_without_tensorrt_has_no_devices_and_says_why() -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    devices, version, note = TensorRtTarget().discover(CPU)
    assert devices == []
    assert version is None
    assert note is not None and note.startswith("tensorrt not importable:")
    assert "tensorrt" in note.split(":", 1)[1]


def test_available_takes_only_tensorrt_devices() -> None:
    gpu = Device("tensorrt", "0", "gpu", "NVIDIA H100")
    other = Device("onnxruntime", "CPU", "cpu", "test cpu")
    inventory = Inventory(cpu=CPU, devices=(other, gpu))
    assert TensorRtTarget().available(inventory) == [gpu]


def test_supports_standard_ops_only_and_has_no_tuning_space() -> None:
    target = TensorRtTarget()
    device = Device("tensorrt", "0", "gpu")
    assert target.supports_op("", "Conv")
    assert target.supports_op("", "LayerNormalization")
    assert not target.supports_op("com.microsoft", "FusedMatMul")
    assert not target.supports_op("com.microsoft", "SkipLayerNormalization")
    assert not target.supports_op("", "Unique")  # not in TensorRT's operator list
    if importlib.util.find_spec("tensorrt") is None:
        assert not target.supports_op("", "RMSNormalization")  # 10.15+ only
    assert target.tuning_space(device) == []


def test_prepare_keeps_the_model_and_refuses_old_opsets() -> None:
    target = TensorRtTarget()
    model = ir.from_proto(_conv_model())
    assert target.prepare(model, TargetOptions()) is model
    old = ir.from_proto(_conv_model(opset=8))
    with pytest.raises(CompileError, match="opset 9"):
        target.prepare(old, TargetOptions())
    support = target.capability(old, Device("tensorrt", "0", "gpu"))
    assert not support["conv"].supported and "opset 8" in support["conv"].reason


def test_codegen_without_tensorrt_is_a_compile_error(tmp_path: Path) -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here")
    model = ir.from_proto(_conv_model())
    with pytest.raises(CompileError, match="tensorrt not importable"):
        TensorRtTarget().codegen(model, Device("tensorrt", "0", "gpu"), TargetOptions(), tmp_path)


# optimization profiles ---------------------------------------------------------------------


def test_static_inputs_need_no_profile() -> None:
    assert optimization_profiles([("x", (1, 3, 224, 224))], {}) == {}


def test_dynamic_axes_take_the_sample_size_as_opt() -> None:
    profiles = optimization_profiles([("ids", ("batch", "seq")), ("x", (None, 3, 8, 8))], {})
    # axis 0: opt 1 (the synthetic sample's batch), axis 1: opt 16; max = MAX_FACTOR * opt
    assert profiles["ids"] == ((1, 1), (1, 16), (MAX_FACTOR, 16 * MAX_FACTOR))
    assert profiles["x"] == ((1, 3, 8, 8), (1, 3, 8, 8), (MAX_FACTOR, 3, 8, 8))


def test_bounded_axes_follow_the_input_ranges() -> None:
    # --input ids[1..8,2..128] as the driver hands it over (apply_input_shapes)
    bounds = {"ids": [{"min": 1, "max": 8}, {"min": 2, "max": 128}]}
    profiles = optimization_profiles([("ids", ("ids_dim0", "ids_dim1"))], bounds)
    assert profiles["ids"] == ((1, 2), (1, 16), (8, 128))


def test_bounds_clip_opt_and_fix_zero_and_open_ends() -> None:
    # a range below the default opt clips it; a zero lower bound becomes 1; "4.." has no max
    bounds = {"x": [{"min": 0, "max": 8}, {"min": 4}, 3]}
    profiles = optimization_profiles([("x", ("b", "n", 3))], bounds)
    low, opt, high = profiles["x"]
    assert low == (1, 4, 3)
    assert opt == (1, 16, 3)
    assert high == (8, 16 * MAX_FACTOR, 3)
    # opt is clipped into the range from either side: 16 down to 5, 1 up to 2
    small = optimization_profiles([("x", ("b", "n"))], {"x": [{"min": 2}, {"min": 2, "max": 5}]})
    assert small["x"] == ((2, 2), (2, 5), (2 * MAX_FACTOR, 5))


def test_a_shared_symbol_gets_one_range_everywhere() -> None:
    inputs = [("ids", ("batch", "seq")), ("mask", ("batch", "seq"))]
    bounds = {"mask": [{"min": 1, "max": 2}, {"min": 1, "max": 64}]}
    profiles = optimization_profiles(inputs, bounds)
    assert profiles["ids"] == profiles["mask"] == ((1, 1), (1, 16), (2, 64))


def test_profiles_refuse_unknown_rank_and_empty_ranges() -> None:
    with pytest.raises(CompileError, match="no known rank"):
        optimization_profiles([("x", None)], {})
    bounds = {"a": [{"min": 10, "max": 20}], "b": [{"min": 1, "max": 5}]}
    with pytest.raises(CompileError, match="do not overlap"):
        optimization_profiles([("a", ("n",)), ("b", ("n",))], bounds)


# precision, cache, workspace ---------------------------------------------------------------

TRT10_FLAGS = {"FP16", "BF16", "INT8", "TF32", "REFIT", "DEBUG"}
TRT11_FLAGS = {"TF32", "REFIT", "DEBUG"}  # 11.x removed the weak-typing precision flags


def test_precision_flags_map_each_precision() -> None:
    assert precision_flags("fp32", TRT10_FLAGS) == PrecisionFlags(enable=(), disable=("TF32",))
    assert precision_flags("fp16", TRT10_FLAGS) == PrecisionFlags(enable=("FP16",), disable=())
    assert precision_flags("bf16", TRT10_FLAGS) == PrecisionFlags(enable=("BF16",), disable=())


def test_precision_flags_refuse_what_this_tensorrt_cannot_do() -> None:
    assert precision_flags("fp32", TRT11_FLAGS).enable == ()
    with pytest.raises(CompileError, match="TensorRT 11 removed"):
        precision_flags("fp16", TRT11_FLAGS)
    with pytest.raises(CompileError, match="unknown precision 'int8'"):
        precision_flags("int8", TRT10_FLAGS)


def test_timing_cache_location() -> None:
    env = {"AI_VMM_CACHE_DIR": "/cache"}
    assert timing_cache_path({}, env, "10.3.0", "9.0") == Path(
        "/cache/tensorrt/timing-10.3.0-sm90.cache"
    )
    default = timing_cache_path({}, {}, "10.3.0", "8.6")
    assert default is not None and default.parts[-3:] == (
        "ai-vmm",
        "tensorrt",
        "timing-10.3.0-sm86.cache",
    )
    explicit = {"tensorrt_timing_cache": "/tmp/t.cache"}
    assert timing_cache_path(explicit, env, "10.3.0", "9.0") == Path("/tmp/t.cache")
    assert timing_cache_path({"tensorrt_timing_cache": ""}, env, "10.3.0", "9.0") is None


def test_workspace_limit() -> None:
    assert workspace_bytes({}, 80 << 30) == 4 << 30
    assert workspace_bytes({}, 4 << 30) == 2 << 30
    assert workspace_bytes({"tensorrt_workspace_bytes": 123}, 80 << 30) == 123


# capability --------------------------------------------------------------------------------


def test_parser_capability_maps_subgraphs_and_errors() -> None:
    names = ["a", "b", "c", "d"]
    whole = parser_capability(names, None, [])
    assert all(s.supported for s in whole.values())
    # the parser failed on node 2; nodes 0, 1 and 3 are in its subgraphs
    errors = [(2, "UNSUPPORTED_NODE: No importer registered for op: Unique")]
    split = parser_capability(names, [0, 1, 3], errors)
    assert [split[n].supported for n in names] == [True, True, False, True]
    assert "No importer registered for op: Unique" in split["c"].reason
    # an input TensorRT cannot take: the nodes that read it fall out of every subgraph
    inputs = parser_capability(names, [2, 3], [(-1, "UNSUPPORTED_GRAPH: bad input 'x'")])
    assert not inputs["a"].supported and "bad input 'x'" in inputs["a"].reason
    assert inputs["c"].supported


def test_static_capability_uses_tensorrts_operator_list() -> None:
    graph = oh.make_graph(
        [
            oh.make_node("Relu", ["x"], ["r"], name="relu"),
            oh.make_node("Unique", ["r"], ["u"], name="unique"),
            oh.make_node("FusedGemm", ["r", "r"], ["g"], name="contrib", domain="com.microsoft"),
        ],
        "g",
        [oh.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [4, 4])],
        [
            oh.make_tensor_value_info("u", onnx.TensorProto.FLOAT, None),
            oh.make_tensor_value_info("g", onnx.TensorProto.FLOAT, None),
        ],
    )
    proto = oh.make_model(
        graph, opset_imports=[oh.make_opsetid("", 17), oh.make_opsetid("com.microsoft", 1)]
    )
    support = static_capability(ir.from_proto(proto), "tensorrt not importable")
    assert support["relu"].supported
    assert not support["unique"].supported and "Unique" in support["unique"].reason
    assert "static list" in support["unique"].reason
    assert not support["contrib"].supported and "com.microsoft" in support["contrib"].reason
    assert {"Conv", "MatMul", "LayerNormalization"} <= SUPPORTED_OPS


def test_capability_without_tensorrt_falls_back_to_the_static_list() -> None:
    if importlib.util.find_spec("tensorrt") is not None:
        pytest.skip("tensorrt is installed here: the parser answers")
    support = TensorRtTarget().capability(
        ir.from_proto(_conv_model()), Device("tensorrt", "0", "gpu")
    )
    assert support["conv"].supported and support["relu"].supported


# engine.json -------------------------------------------------------------------------------


def test_engine_info_round_trips_through_the_executor_check(tmp_path: Path) -> None:
    profiles = optimization_profiles([("x", ("batch", 3, 8, 8))], {})
    info = engine_info(
        tensorrt_version="10.3.0",
        gpu=H100,
        precision="fp16",
        flags=PrecisionFlags(enable=("FP16",), disable=()),
        profiles=profiles,
        workspace=4 << 30,
    )
    assert info["profiles"]["x"] == {"min": [1, 3, 8, 8], "opt": [1, 3, 8, 8], "max": [4, 3, 8, 8]}
    (tmp_path / ENGINE_INFO).write_text(json.dumps(info))
    read = read_engine_info(tmp_path / ENGINE_INFO)
    summary = check_engine_info(read, tensorrt_version="10.3.0", compute_capability="9.0")
    assert "10.3.0" in summary and "9.0" in summary
    with pytest.raises(DeviceError, match="TensorRT 10.3.0, this machine has TensorRT 10.4.0"):
        check_engine_info(read, tensorrt_version="10.4.0", compute_capability="9.0")


# with TensorRT (skipped here) --------------------------------------------------------------


def _build_and_run(tmp_path: Path, precision: str, batches: tuple[int, ...]) -> float:
    """Compile the tiny conv model with TensorRT, run it, return the worst error vs ORT."""
    pytest.importorskip("tensorrt", reason=TRT_SKIP)
    import onnxruntime as ort

    from ai_vmm.runtime.executors.tensorrt import TensorRtExecutor

    target = TensorRtTarget()
    devices, version, note = target.discover(CPU)
    if not devices:
        pytest.skip(f"TensorRT {version} sees no GPU here: {note}")
    proto = _conv_model()
    model = ir.from_proto(proto)
    device = devices[0]
    support = target.capability(model, device)
    assert all(s.supported for s in support.values()), support
    out = tmp_path / precision
    out.mkdir()
    options = TargetOptions(precision=precision, extra={"tensorrt_timing_cache": ""})
    payload = target.codegen(target.prepare(model, options), device, options, out)
    assert payload.entry == "model.engine"
    assert set(payload.files) == {"model.engine", "engine.json"}
    info = json.loads((out / "engine.json").read_text())
    assert info["precision"] == precision and info["profiles"]["x"]["max"][0] == MAX_FACTOR
    executor = TensorRtExecutor(out / payload.entry, device.name, payload.config, ("y",))
    session = ort.InferenceSession(proto.SerializeToString(), providers=["CPUExecutionProvider"])
    worst = 0.0
    for batch in batches:
        x = np.random.default_rng(batch).standard_normal((batch, 3, 8, 8)).astype(np.float32)
        (expected,) = session.run(["y"], {"x": x})
        got = executor.run({"x": x})["y"]
        assert got.shape == expected.shape and got.dtype == np.float32
        worst = max(worst, float(np.max(np.abs(got - expected))))
    return worst


@pytest.mark.gpu
def test_fp32_engine_matches_onnxruntime(tmp_path: Path) -> None:
    assert _build_and_run(tmp_path, "fp32", (1, 3, MAX_FACTOR)) < 1e-4


@pytest.mark.gpu
def test_fp16_engine_matches_onnxruntime_within_fp16_error(tmp_path: Path) -> None:
    assert _build_and_run(tmp_path, "fp16", (1, 2)) < 2e-2


@pytest.mark.gpu
def test_batch_outside_the_profile_is_an_input_error(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason=TRT_SKIP)
    from ai_vmm.runtime.errors import InputError
    from ai_vmm.runtime.executors.tensorrt import TensorRtExecutor

    target = TensorRtTarget()
    devices, _, note = target.discover(CPU)
    if not devices:
        pytest.skip(f"no TensorRT device: {note}")
    options = TargetOptions(extra={"input_bounds": {"x": [{"min": 1, "max": 2}, 3, 8, 8]}})
    payload = target.codegen(ir.from_proto(_conv_model()), devices[0], options, tmp_path)
    executor = TensorRtExecutor(tmp_path / payload.entry, devices[0].name, payload.config, ())
    x = np.zeros((3, 3, 8, 8), dtype=np.float32)
    with pytest.raises(InputError, match=r"outside the TensorRT engine's range"):
        executor.run({"x": x})
