"""The one pipeline: partitioned candidates take the same gates as single-device ones, a
partition that fails to build is re-planned, shape buckets dispatch, timing decides on noise."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from unpool_model import make_unpool_model

import ai_vmm
from ai_vmm import registry
from ai_vmm.choice import dispatch_when, noise_warning
from ai_vmm.runtime import load
from ai_vmm.shapes import Bucket, Variable
from ai_vmm.tuning import Rounds, beats

SPLIT = "openvino:CPU,onnxruntime:CPU"


@pytest.fixture(scope="module")
def unpool(tmp_path_factory: pytest.TempPathFactory) -> Path:
    model = make_unpool_model()
    # Dynamic spatial axes: shape inference cannot type MaxUnpool's output rank then.
    for value in (*model.graph.input, *model.graph.output):
        dims = value.type.tensor_type.shape.dim
        dims[2].dim_param, dims[3].dim_param = "H", "W"
    path = tmp_path_factory.mktemp("unpool") / "unpool.onnx"
    onnx.save(model, path)
    return path


def _images(count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(count)]


def _reference(path: Path, x: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {"x": x})[0])


def test_split_build_keeps_every_boundary_shape(unpool: Path, tmp_path: Path) -> None:
    result = ai_vmm.compile(unpool, SPLIT, tmp_path / "u.vmm", tune=False)
    assert result.report["verification"]["passed"]
    for part in result.manifest["partitions"]:
        assert part["target"] in ("openvino", "onnxruntime")
    x = np.random.default_rng(1).standard_normal((2, 3, 24, 32)).astype(np.float32)
    np.testing.assert_allclose(
        load(result.path)(x=x)["y"], _reference(unpool, x), rtol=1e-4, atol=1e-5
    )


@pytest.mark.parametrize("mode", ["int8", pytest.param("fp16", marks=pytest.mark.heavy)])
def test_a_split_build_goes_through_the_precision_gates(
    unpool: Path, tmp_path: Path, mode: str
) -> None:
    kwargs: dict[str, Any] = (
        {"quantize": "int8", "calibration": _images(12), "force_quantize": True}
        if mode == "int8"
        else {"precision": "fp16", "force_quantize": True}
    )
    result = ai_vmm.compile(unpool, SPLIT, tmp_path / "q.vmm", tune_seconds=0.2, **kwargs)
    quantization = result.report["quantization"]
    parts = quantization["partitions"]
    assert set(parts) == {p["id"] for p in result.manifest["partitions"]}
    # Every partition went through the stage: a decision and, where a payload was built, the
    # accuracy gate against that partition in float.
    assert all(r["decision"] in ("quantized", "float") for r in parts.values())
    gated = [r for r in parts.values() if "accuracy" in r]
    assert gated and all("metrics" in r["accuracy"] for r in gated)
    if quantization["decision"] == "quantized":
        assert quantization["accuracy"]["passed"] or not quantization["accuracy"]["enforced"]
    x = _images(1, seed=9)[0]["x"]
    got = load(result.path)(x=x)["y"]
    want = _reference(unpool, x)
    cosine = float(np.dot(got.ravel(), want.ravel()))
    cosine /= float(np.linalg.norm(got) * np.linalg.norm(want))
    assert cosine > 0.98


def test_a_partition_that_fails_to_build_is_replanned(
    unpool: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    openvino = registry.get_target("openvino")
    real = openvino.codegen

    def codegen(model: Any, device: Any, options: Any, out_dir: Path) -> Any:
        # Failure injection: OpenVINO refuses the partition holding conv2 (a plugin error).
        if any(node.name == "conv2" for node in model.graph):
            raise RuntimeError("injected: plugin failed to compile conv2")
        return real(model, device, options, out_dir)

    monkeypatch.setattr(openvino, "codegen", codegen)
    result = ai_vmm.compile(unpool, SPLIT, tmp_path / "r.vmm", tune=False)
    replanned = result.report["plan"]["replanned"]
    assert replanned and replanned[0]["device"] == "openvino:CPU"
    assert "injected" in replanned[0]["reason"]
    where = {row["node"]: row["device"] for row in result.report["plan"]["nodes"]}
    assert where["conv2"] == "onnxruntime:CPU"
    assert result.report["verification"]["passed"]


def test_shape_buckets_dispatch_to_their_plans(tmp_path: Path) -> None:
    from tests_support import make_mlp_model

    path = tmp_path / "mlp.onnx"
    onnx.save(make_mlp_model(), path)
    first = ai_vmm.compile(path, "onnxruntime:CPU", tmp_path / "a.vmm", tune=False)
    second = ai_vmm.compile(path, "openvino:CPU", tmp_path / "b.vmm", tune=False)
    # A two-plan artifact by hand: ONNX Runtime for batch >= 3, OpenVINO otherwise.
    from ai_vmm.runtime.artifact import Manifest, PlanSpec, read_manifest, write_artifact

    a, b = read_manifest(first.path), read_manifest(second.path)
    from dataclasses import replace

    ov = replace(b.partitions[0], id="b1p0", entry=b.partitions[0].entry.replace("p0", "b1p0"))
    ov = replace(ov, files={k.replace("p0", "b1p0"): v for k, v in ov.files.items()})
    manifest = replace(
        a,
        partitions=(a.partitions[0], ov),
        plans=(
            PlanSpec("big", ("p0",), {"x": {"0": {"min": 3, "max": 2**31 - 1}}}),
            PlanSpec("small", ("b1p0",), {}),
        ),
    )
    assert isinstance(manifest, Manifest)
    write_artifact(
        tmp_path / "two.vmm", manifest, {}, {"p0": first.path / "p0", "b1p0": second.path / "p0"}
    )
    model = load(tmp_path / "two.vmm")
    assert model.plan_for({"x": np.ones((1, 16), np.float32)}) == "small"
    assert model.plan_for({"x": np.ones((8, 16), np.float32)}) == "big"
    for batch in (1, 8):
        x = np.random.default_rng(batch).standard_normal((batch, 16)).astype(np.float32)
        np.testing.assert_allclose(
            model(x=x)["y"], load(first.path)(x=x)["y"], rtol=1e-5, atol=1e-5
        )


def test_dispatch_cut_overs_lie_between_bucket_sizes() -> None:
    batch = Variable("batch", "batch", (("x", 0),))
    seq = Variable("seq", "sequence", (("x", 1),))
    primary = Bucket("primary", {"batch": 1, "seq": 128}, {})
    big = Bucket("batch=8", {"batch": 8, "seq": 128}, {}, "batch")
    short = Bucket("sequence=8", {"batch": 1, "seq": 8}, {}, "sequence")
    assert dispatch_when(primary, big, [batch, seq]) == {"x": {"0": {"min": 3, "max": 2**31 - 1}}}
    assert dispatch_when(primary, short, [batch, seq]) == {"x": {"1": {"min": 0, "max": 31}}}


def test_a_variant_wins_only_beyond_the_noise() -> None:
    default = Rounds((1.00, 1.10, 0.95, 1.30, 1.00))
    clearly = Rounds((0.80, 0.90, 0.76, 1.00, 0.81))
    noisy = Rounds((0.80, 1.20, 0.90, 1.40, 0.70))  # faster at the median, slower in 2 rounds
    marginal = Rounds((0.99, 1.09, 0.94, 1.29, 0.99))  # faster every round, by 1%
    assert beats(clearly, default)
    assert not beats(noisy, default)
    assert not beats(marginal, default)
    assert noisy.to_json()["ci_ms"] == [0.7, 1.4]


def test_noise_warns_only_when_it_could_have_made_the_choice() -> None:
    """Round medians that move 44 % (a sub-millisecond model on a quiet 2-core machine) warn
    only when no candidate was faster in every round."""
    default = Rounds((1.00, 1.60, 0.95, 1.30, 1.00))
    clearly = Rounds((0.80, 1.20, 0.76, 1.00, 0.81))
    assert default.spread > 0.25 and beats(clearly, default)
    assert noise_warning(default.spread, True, [0.5, 0.5, 0.5]) is None
    warning = noise_warning(default.spread, False, [0.5, 0.5, 0.5])
    assert warning is not None and "no candidate was faster in every round" in warning
    assert noise_warning(0.10, False, [0.5, 0.5, 0.5]) is None


def test_an_expensive_candidate_is_not_built_when_its_estimate_cannot_win(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import onnx_ir as ir

    from ai_vmm.building import cannot_win
    from ai_vmm.representative import Inputs
    from ai_vmm.runtime.devices import Device
    from tests_support import make_mlp_model

    model = ir.serde.deserialize_model(make_mlp_model())
    gpu = Device("cuda", "0", "gpu", "stand-in GPU (estimate only, never built)")
    cpu = Device("onnxruntime", "CPU", "cpu", "CPU")
    sample = {"x": np.ones((1, 16), np.float32)}
    inputs = Inputs(buckets=[Bucket("primary", {"batch": 1}, sample)])
    cuda = registry.get_target("cuda")
    said: list[str] = []
    monkeypatch.setattr(cuda, "estimate", lambda *args, **kwargs: 1.0)  # one second a call
    reason = cannot_win(model, gpu, [gpu, cpu], inputs, "fp32", said.append)
    assert reason is not None and "not built" in reason and said
    monkeypatch.setattr(cuda, "estimate", lambda *args, **kwargs: 1e-9)
    assert cannot_win(model, gpu, [gpu, cpu], inputs, "fp32", said.append) is None
    # Cheap targets are always built and measured.
    assert cannot_win(model, cpu, [gpu, cpu], inputs, "fp32", said.append) is None


def test_the_throughput_objective_reaches_the_planner(unpool: Path, tmp_path: Path) -> None:
    result = ai_vmm.compile(unpool, SPLIT, tmp_path / "t.vmm", tune=False, objective="throughput")
    assert result.report["plan"]["objective"] == "throughput"
    assert result.manifest["compile_options"]["objective"] == "throughput"
    with pytest.raises(ai_vmm.CompileError, match="unknown objective"):
        ai_vmm.compile(unpool, SPLIT, tmp_path / "u.vmm", objective="speed")
