"""Partitioned compiles: a real OpenVINO -> ONNX Runtime fallback, profiles, golden plans."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from unpool_model import make_unpool_model

import ai_vmm
from ai_vmm.hardware_profile import builtin_profiles, load_profile
from ai_vmm.runtime import CompileError, DeviceError, UnsupportedModelError, load
from ai_vmm.runtime.artifact import read_manifest, verify_payloads

GOLDEN = Path(__file__).resolve().parents[1] / "golden" / "plans.json"


@pytest.fixture(scope="module")
def unpool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("unpool") / "unpool.onnx"
    onnx.save(make_unpool_model(), path)
    return path


def test_openvino_falls_back_to_onnxruntime_for_maxunpool(unpool: Path, tmp_path: Path) -> None:
    result = ai_vmm.compile(unpool, "openvino:CPU,onnxruntime:CPU", tmp_path / "u.vmm")
    parts = result.manifest["partitions"]
    assert [(p["target"], p["device"]) for p in parts] == [
        ("openvino", "CPU"),
        ("onnxruntime", "CPU"),
        ("openvino", "CPU"),
    ]
    assert parts[1]["inputs"] == ["idx", "p"] and parts[1]["outputs"] == ["u"]
    routes = {r["tensor"]: r for r in result.manifest["routing"]}
    assert routes["u"] == {"tensor": "u", "from": "p1", "to": ["p2"]}
    assert result.report["verification"]["passed"] is True
    why = {row["node"]: row["why"] for row in result.report["plan"]["nodes"]}
    assert (
        "cannot run on openvino:CPU (OpenVINO's ONNX frontend cannot translate MaxUnpool)"
        in (why["unpool"])
    )
    model = load(result.path)
    session = ort.InferenceSession(str(unpool), providers=["CPUExecutionProvider"])
    for batch in (1, 3):
        x = np.random.default_rng(batch).standard_normal((batch, 3, 16, 16)).astype(np.float32)
        np.testing.assert_allclose(
            model(x=x)["y"], session.run(None, {"x": x})[0], rtol=1e-4, atol=1e-5
        )


def test_auto_and_single_targets_on_the_unpool_model(unpool: Path, tmp_path: Path) -> None:
    auto = ai_vmm.compile(unpool, "auto", tmp_path / "a.vmm", tune_seconds=0.2)
    assert auto.report["chosen"]["device"] == "onnxruntime:CPU"
    candidates = {c["device"]: c for c in auto.report["candidates"]}
    assert candidates["openvino:CPU"]["status"] == "unsupported"
    with pytest.raises(UnsupportedModelError, match="unpool"):
        ai_vmm.compile(unpool, "openvino:CPU", tmp_path / "o.vmm")


def test_profiles_plan_for_absent_devices(unpool: Path, tmp_path: Path) -> None:
    result = ai_vmm.compile(
        unpool, "auto", tmp_path / "p.vmm", hardware="xeon-arc-npu", input_shapes=["x[8,3,16,16]"]
    )
    assert result.report["verification"]["status"] == "skipped"
    manifest = read_manifest(result.path)
    verify_payloads(result.path, manifest)
    devices = {f"{p.target}:{p.device}" for p in manifest.partitions}
    assert "onnxruntime:CPU" in devices  # MaxUnpool has nowhere else to go
    if any(d.startswith("openvino:GPU") or d == "openvino:NPU" for d in devices):
        with pytest.raises(DeviceError, match="is not present here"):
            load(result.path)


def test_malformed_profiles(tmp_path: Path) -> None:
    with pytest.raises(CompileError, match="hardware profile nowhere not found .*xeon-nvidia"):
        load_profile("nowhere")
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(CompileError, match="is not valid JSON"):
        load_profile(bad)
    bad.write_text(
        json.dumps(
            {
                "cpu": {"model": "x", "physical_cores": 4},
                "devices": [
                    {"target": "openvino", "name": "CPU", "figures": {"peak_gflops": {"fp32": 100}}}
                ],
            }
        )
    )
    with pytest.raises(CompileError, match=r"devices\[0\].figures has no 'bandwidth_gbps'"):
        load_profile(bad)
    bad.write_text(
        json.dumps(
            {
                "cpu": {"model": "x", "physical_cores": 4},
                "devices": [
                    {
                        "target": "openvino",
                        "name": "CPU",
                        "figures": {
                            "peak_gflops": {"fp32": 100},
                            "bandwidth_gbps": 10,
                            "overhead_us": 5,
                        },
                    }
                ],
                "links": [
                    {"between": ["openvino:CPU", "cuda:0"], "bandwidth_gbps": 1, "latency_us": 1}
                ],
            }
        )
    )
    with pytest.raises(CompileError, match=r"links\[0\].between must name two devices"):
        load_profile(bad)


def test_shipped_profiles_load() -> None:
    assert builtin_profiles() == ["laptop-igpu-npu", "xeon-arc-npu", "xeon-nvidia"]
    for name in builtin_profiles():
        profile = load_profile(name)
        assert all(f.source for f in profile.figures.values())
        assert profile.inventory.devices


GOLDEN_CASES = [
    ("transformer_encoder", ["input_ids[8,128]", "attention_mask[8,128]"]),
    ("resnet", ["pixel_values[8,3,64,64]"]),
]


@pytest.mark.parametrize(("name", "shapes"), GOLDEN_CASES, ids=[c[0] for c in GOLDEN_CASES])
def test_golden_plans(
    name: str,
    shapes: list[str],
    zoo_model: Callable[[str], Path],
    tmp_path: Path,
    request: pytest.FixtureRequest,
) -> None:
    plans = {}
    for profile in builtin_profiles():
        result = ai_vmm.compile(
            zoo_model(name),
            "auto",
            tmp_path / f"{profile}.vmm",
            hardware=profile,
            input_shapes=shapes,
        )
        estimate = result.report["plan"]["estimate"]
        plans[f"{name}@{profile}"] = {
            "partitions": estimate["partitions"],
            "estimated_ms": estimate["estimated_ms"],
        }
    golden = json.loads(GOLDEN.read_text()) if GOLDEN.is_file() else {}
    if request.config.getoption("--update-golden"):
        golden.update(plans)
        GOLDEN.write_text(json.dumps(golden, indent=2, sort_keys=True) + "\n")
    for key, plan in plans.items():
        assert key in golden, f"no golden plan for {key}: run pytest --update-golden"
        assert plan["partitions"] == golden[key]["partitions"], key
        assert plan["estimated_ms"] == pytest.approx(golden[key]["estimated_ms"], rel=0.02), key


def test_zoo_page_repeats_the_partition_overhead_summary(tmp_path: Path) -> None:
    from ai_vmm.bench_suite import partition_overhead_note

    assert partition_overhead_note(tmp_path) == ""
    (tmp_path / "partition-overhead.md").write_text(
        "# Partition boundary overhead\n\nSummary: batch 1: split / single 1.05, 12.0 us.\n"
    )
    note = partition_overhead_note(tmp_path)
    assert "[partition-overhead.md](partition-overhead.md)" in note
    assert note.rstrip().endswith("batch 1: split / single 1.05, 12.0 us.")


def test_gpu_partition_outputs_read_only_by_gpu_partitions_stay_on_the_device(
    tmp_path: Path,
) -> None:
    """p0 (cuda) -> t1 -> p1 (openvino) and p0 -> t2 -> p2 (cuda): t2 stays a torch tensor.

    The cuda partitions are built as CPU AOTInductor packages (the same codegen path; no GPU
    here), so the hand-over logic and the executors run for real.
    """
    torch = pytest.importorskip("torch")
    pytest.importorskip("openvino")
    import onnx.helper as oh
    import onnx_ir as ir

    from ai_vmm.partition import build_plan
    from ai_vmm.planner import Plan
    from ai_vmm.runtime.devices import Device
    from ai_vmm.targets.base import TargetOptions

    f32 = onnx.TensorProto.FLOAT
    graph = oh.make_graph(
        [
            oh.make_node("Relu", ["x"], ["t1"], name="n1"),
            oh.make_node("Neg", ["t1"], ["t2"], name="n2"),
            oh.make_node("Abs", ["t1"], ["t3"], name="n3"),
            oh.make_node("Add", ["t2", "t3"], ["y"], name="n4"),
        ],
        "handover",
        [oh.make_tensor_value_info("x", f32, ["N", 8])],
        [oh.make_tensor_value_info("y", f32, ["N", 8])],
    )
    model = ir.serde.deserialize_model(
        onnx.shape_inference.infer_shapes(
            oh.make_model(graph, opset_imports=[oh.make_opsetid("", 17)], ir_version=10)
        )
    )
    gpu = Device("cuda", "cpu", "cpu", "CPU package (test)", {"torch_device": "cpu"})
    cpu = Device("openvino", "CPU", "cpu", "CPU")
    assignment = {"n1": gpu.key, "n2": gpu.key, "n3": cpu.key, "n4": gpu.key}
    result = Plan(assignment, [["n1", "n2"], ["n3"], ["n4"]], 0.0, {}, {})
    options = TargetOptions(extra={"input_bounds": {}, "sample_dims": {"N": 2}})
    build = build_plan(
        model, result, [gpu, cpu], {gpu.key, cpu.key}, options, tmp_path, lambda message: None
    )
    first = build.partitions[0]
    assert first.config["device_outputs"] == ["t2"]
    assert "device_outputs" not in build.partitions[2].config  # y is a graph output
    x = np.random.default_rng(0).standard_normal((3, 8)).astype(np.float32)
    handed = build.executors[first.id].run({"x": x})
    assert isinstance(handed["t2"], torch.Tensor) and isinstance(handed["t1"], np.ndarray)
    got = build.run({"x": x})["y"]
    np.testing.assert_allclose(got, -np.maximum(x, 0) + np.abs(np.maximum(x, 0)), atol=1e-6)


def test_a_planned_gpu_that_is_not_here_keeps_its_op_mapping(tmp_path: Path) -> None:
    """``--hardware xeon-nvidia`` plans for a GPU this machine lacks. The cuda target's
    capability is its ONNX -> torch mapping, the same on any GPU, so the plan uses it instead
    of assuming every node runs there: the contrib-domain Gelu goes to OpenVINO."""
    from hetero_model import make_depth_to_space_model

    path = tmp_path / "hetero.onnx"
    onnx.save(make_depth_to_space_model(), path)
    result = ai_vmm.compile(
        path,
        "cuda:0,openvino:CPU",
        tmp_path / "h.vmm",
        hardware="xeon-nvidia",
        input_shapes=["x[2,3,32,32]"],
    )
    placed = {n["node"]: n["device"] for n in result.report["plan"]["nodes"]}
    assert placed.pop("gelu") == "openvino:CPU"
    assert set(placed.values()) == {"cuda:0"}, placed


def test_sample_dims_name_anonymous_axes_the_way_the_cuda_target_does() -> None:
    import onnx_ir as ir

    from ai_vmm.partition import sample_dims, sample_sizes

    x = ir.Value(name="x", shape=ir.Shape([ir.SymbolicDim(None), 3, ir.SymbolicDim("W")]))
    model = ir.Model(ir.Graph([x], [], nodes=[]), ir_version=8)
    samples = [{"x": np.zeros((6, 3, 192), np.float32)}, {"x": np.zeros((1, 3, 96), np.float32)}]
    assert sample_dims(model, samples[0]) == {"x_0": 6, "W": 192}
    assert sample_sizes(model, samples) == {"x_0": [1, 6], "W": [96, 192]}
