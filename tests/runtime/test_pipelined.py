"""PipelinedModel: a real plan split over openvino:CPU and onnxruntime:CPU, and simulated stages.

The checks are what came back and when stages ran relative to each other (overlap between
stages, none on one device, back-pressure), never how fast.
"""

from __future__ import annotations

import threading
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from parallel_models import (
    SimulatedDevice,
    chain_reference,
    make_chain_model,
    overlapping,
    split_artifact,
)

import ai_vmm
from ai_vmm.runtime.artifact import Manifest, PartitionSpec, TensorSpec
from ai_vmm.runtime.errors import ArtifactError, InputError
from ai_vmm.runtime.pipelined import PipelinedModel, stage_threads


@pytest.fixture(scope="module")
def split(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, Path]:
    pytest.importorskip("openvino")
    root = tmp_path_factory.mktemp("pipelined")
    model = make_chain_model(layers=6)
    source = root / "chain.onnx"
    onnx.save(model, source)
    devices = ["openvino:CPU", "onnxruntime:CPU", "openvino:CPU"]
    return model, split_artifact(source, devices, root / "split.vmm")


def test_a_real_three_stage_plan_gives_the_sequential_outputs_in_order(
    split: tuple[onnx.ModelProto, Path],
) -> None:
    model, path = split
    rng = np.random.default_rng(3)
    feeds = [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(60)]
    with ai_vmm.runtime.load(path) as sequential, PipelinedModel.load(path) as pipelined:
        assert [p.target for p in pipelined.partitions] == ["openvino", "onnxruntime", "openvino"]
        outputs = list(pipelined.map(feeds))
        stats = pipelined.stats()
        for feed, got in zip(feeds, outputs, strict=True):
            want = sequential.run(feed)["y"]
            np.testing.assert_allclose(got["y"], want, rtol=1e-5, atol=1e-5)
            np.testing.assert_allclose(
                got["y"], chain_reference(model, feed["x"]), rtol=1e-4, atol=1e-4
            )
        assert pipelined(x=feeds[0]["x"])["y"].shape == (4, 64)
    assert [s["calls"] for s in stats] == [60, 60, 60]
    assert [s["device"] for s in stats] == ["openvino:CPU", "onnxruntime:CPU", "openvino:CPU"]


def test_threads_auto_shares_the_cores_between_cpu_stages(
    split: tuple[onnx.ModelProto, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    manifest = ai_vmm.runtime.load(split[1]).manifest
    monkeypatch.setattr("os.cpu_count", lambda: 12)
    assert stage_threads(manifest, "auto") == {"p0": 4, "p1": 4, "p2": 4}
    assert stage_threads(manifest, 1) == {"p0": 1, "p1": 1, "p2": 1}
    assert stage_threads(manifest, None) == {}
    assert stage_threads(manifest, {"p1": 3}) == {"p1": 3}
    with pytest.raises(ArtifactError, match="threads"):
        stage_threads(manifest, "many")


def test_bad_inputs_and_closed_models(split: tuple[onnx.ModelProto, Path]) -> None:
    pipelined = PipelinedModel.load(split[1], threads=None)
    with pytest.raises(InputError, match="dtype"):
        pipelined.submit({"x": np.zeros((2, 64), np.int32)})
    pipelined.close()
    pipelined.close()
    with pytest.raises(ArtifactError, match="closed"):
        pipelined.run({"x": np.zeros((2, 64), np.float32)})
    with pytest.raises(ArtifactError, match="does not exist"):
        PipelinedModel.load(split[1].parent / "missing.vmm")


def _simulated(stages: list[tuple[str, SimulatedDevice]], depth: int = 2) -> PipelinedModel:
    """A chain x -> t0 -> t1 ... -> y of simulated stages; ``stages``: (device, executor)."""
    parts = []
    for k, (device, executor) in enumerate(stages):
        source = "x" if k == 0 else f"t{k - 1}"
        target = "y" if k == len(stages) - 1 else f"t{k}"
        executor.source, executor.outputs = source, (target,)
        parts.append(PartitionSpec(f"p{k}", "sim", device, f"p{k}/m", {}, (source,), (target,), {}))
    manifest = Manifest(
        (TensorSpec("x", "float32", ("n",)),),
        (TensorSpec("y", "float32", ("n",)),),
        tuple(parts),
        {},
        {},
        {},
    )
    executors = {p.id: executor for p, (_, executor) in zip(parts, stages, strict=True)}
    return PipelinedModel(Path("."), manifest, executors, depth=depth)


def test_stages_on_different_devices_overlap_across_requests() -> None:
    a, b = SimulatedDevice(0.01), SimulatedDevice(0.01)
    with _simulated([("gpu", a), ("npu", b)]) as model:
        feeds = [{"x": np.full(2, i, np.float32)} for i in range(12)]
        outputs = list(model.map(feeds))
    assert [float(o["y"][0]) for o in outputs] == [4.0 * i for i in range(12)]
    assert overlapping(a.intervals, b.intervals) >= 5


def test_stages_on_one_device_never_overlap() -> None:
    a, b, c = SimulatedDevice(0.005), SimulatedDevice(0.005), SimulatedDevice(0.005)
    with _simulated([("gpu", a), ("npu", b), ("gpu", c)]) as model:
        list(model.map({"x": np.ones(2, np.float32)} for _ in range(12)))
    assert overlapping(a.intervals, c.intervals) == 0
    assert overlapping(a.intervals, b.intervals) > 0


def test_a_full_pipeline_makes_submit_wait() -> None:
    """With the last stage stuck, exactly (depth + 1) requests per stage get in: each stage
    holds one and ``depth`` wait in front of it; the next ``submit`` waits."""
    gate = threading.Event()
    first, last = SimulatedDevice(0.0), SimulatedDevice(0.0, gate=gate)
    model = _simulated([("a", first), ("b", last)], depth=1)
    submitted: list[object] = []

    def feed() -> None:
        for i in range(10):
            submitted.append(model.submit({"x": np.full(1, i, np.float32)}))

    thread = threading.Thread(target=feed)
    thread.start()
    deadline = time.monotonic() + 5
    while len(submitted) < 4 and time.monotonic() < deadline:
        time.sleep(0.01)
    time.sleep(0.2)  # had it not waited, more would be in by now
    assert len(submitted) == 4
    gate.set()
    thread.join(5)
    assert [float(f.result()["y"][0]) for f in submitted] == [4.0 * i for i in range(10)]  # type: ignore[attr-defined]
    model.close()


def test_a_failing_stage_fails_only_its_request() -> None:
    class Picky(SimulatedDevice):
        def run(self, inputs: dict[str, object]) -> dict[str, object]:
            if float(np.asarray(inputs[self.source])[0]) == 6.0:
                raise InputError("6 is not allowed here")
            return super().run(inputs)

    with _simulated([("a", SimulatedDevice(0.0)), ("b", Picky(0.0))]) as model:
        futures = [model.submit({"x": np.full(1, i, np.float32)}) for i in range(6)]
        with pytest.raises(InputError, match="not allowed"):
            futures[3].result()
        others = [float(f.result()["y"][0]) for i, f in enumerate(futures) if i != 3]
    assert others == [0.0, 4.0, 8.0, 16.0, 20.0]
