"""ReplicaSet: real replicas on openvino:CPU and onnxruntime:CPU, and simulated device sets.

Simulated devices (sleeping for a service time) stand in for a GPU or NPU, which cannot exist
here; their speeds come from the shipped hardware profiles. No assertion here is a timing: the
checks are where requests went (shares, steals, reroutes) and what came back.
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from parallel_models import SimulatedDevice, chain_reference, make_chain_model

import ai_vmm
from ai_vmm.runtime.errors import ArtifactError, InputError
from ai_vmm.runtime.replicas import ReplicaSet

PROFILES = Path(__file__).resolve().parents[2] / "compiler" / "profiles"


@pytest.fixture(scope="module")
def chain(tmp_path_factory: pytest.TempPathFactory) -> tuple[onnx.ModelProto, list[Path]]:
    pytest.importorskip("openvino")
    root = tmp_path_factory.mktemp("replicas")
    model = make_chain_model()
    source = root / "chain.onnx"
    onnx.save(model, source)
    paths = [
        ai_vmm.compile(source, device, root / f"{device.replace(':', '-')}.vmm", tune=False).path
        for device in ("openvino:CPU", "onnxruntime:CPU")
    ]
    return model, paths


def test_real_replicas_on_both_cpu_targets_answer_every_request_in_order(
    chain: tuple[onnx.ModelProto, list[Path]],
) -> None:
    model, paths = chain
    rng = np.random.default_rng(0)
    feeds = [{"x": rng.standard_normal((4, 64)).astype(np.float32)} for _ in range(120)]
    with ReplicaSet.load(paths) as replicas:
        assert replicas.names == ["openvino:CPU", "onnxruntime:CPU"]
        assert [s.name for s in replicas.inputs] == ["x"]
        outputs = list(replicas.map(feeds, ordered=True))
        stats = replicas.stats()
    assert len(outputs) == len(feeds)
    for feed, out in zip(feeds, outputs, strict=True):
        np.testing.assert_allclose(
            out["y"], chain_reference(model, feed["x"]), rtol=1e-4, atol=1e-4
        )
    done = {r["name"]: r["completed"] for r in stats["replicas"]}
    assert sum(done.values()) == len(feeds)
    assert all(count > 0 for count in done.values()), done
    assert all(r["seconds_per_request"] for r in stats["replicas"])


def test_bad_input_is_refused_at_submit_and_nothing_is_queued(
    chain: tuple[onnx.ModelProto, list[Path]],
) -> None:
    with ReplicaSet.load(chain[1]) as replicas:
        with pytest.raises(InputError, match="dtype"):
            replicas.submit({"x": np.zeros((2, 64), np.float64)})
        with pytest.raises(InputError, match="missing input"):
            replicas.run({})
        assert replicas.stats()["submitted"] == 0
        x = np.ones((1, 64), np.float32)
        assert replicas(x=x)["y"].shape == (1, 64)


def _laptop_seconds() -> dict[str, float]:
    """Service times of one 60 GFLOP request on each device of the laptop profile."""
    data = json.loads((PROFILES / "laptop-igpu-npu.json").read_text())
    return {
        f"{d['target']}:{d['name']}": 60e9 / (d["figures"]["peak_gflops"]["fp32"] * 1e9)
        for d in data["devices"]
    }


def test_simulated_laptop_devices_get_requests_in_proportion_to_their_speed() -> None:
    """CPU, iGPU, NPU and ONNX Runtime CPU of the laptop profile (13-120 ms a request at the
    profile's peak figures): each device's share of 240 requests follows its speed."""
    seconds = {k: v * 1.0 for k, v in _laptop_seconds().items()}
    devices = {k: SimulatedDevice(s / 8) for k, s in seconds.items()}  # 1.7-15 ms a request
    with ReplicaSet(list(devices.items())) as replicas:
        list(replicas.map(({"x": np.array([i])} for i in range(240)), window=24))
        stats = {r["name"]: r for r in replicas.stats()["replicas"]}
    speed = {k: 1 / s for k, s in seconds.items()}
    total = sum(speed.values())
    for key, row in stats.items():
        share = row["completed"] / 240
        assert share == pytest.approx(speed[key] / total, abs=0.08), (key, share)
    assert sum(r["completed"] for r in stats.values()) == 240


def test_an_idle_replica_steals_from_a_replica_that_was_thought_faster() -> None:
    """``slow`` is announced ten times faster than it is: requests pile up there, and ``fast``
    takes them from the back of its queue once its own queue is empty."""
    slow, fast = SimulatedDevice(0.02), SimulatedDevice(0.002)
    with ReplicaSet(
        [("slow", slow), ("fast", fast)],
        seconds_per_request={"slow": 0.0002, "fast": 0.002},
    ) as replicas:
        futures = [replicas.submit({"x": np.array([i])}) for i in range(40)]
        results = [f.result()["y"][0] for f in futures]
        stats = {r["name"]: r for r in replicas.stats()["replicas"]}
    assert results == [2 * i for i in range(40)]
    assert stats["fast"]["stolen"] > 0
    assert stats["fast"]["completed"] > stats["slow"]["completed"]


def test_a_slow_replica_does_not_take_what_the_fast_one_finishes_sooner() -> None:
    gpu, cpu = SimulatedDevice(0.003), SimulatedDevice(0.5)
    with ReplicaSet(
        [("gpu", gpu), ("cpu", cpu)], seconds_per_request={"gpu": 0.003, "cpu": 0.5}
    ) as replicas:
        futures = [replicas.submit({"x": np.array([i])}) for i in range(5)]
        for future in futures:
            future.result()
        stats = {r["name"]: r for r in replicas.stats()["replicas"]}
    assert stats["cpu"]["completed"] == 0 and stats["cpu"]["stolen"] == 0
    assert stats["gpu"]["completed"] == 5


def test_unordered_map_returns_every_result() -> None:
    devices = [("a", SimulatedDevice(0.001)), ("b", SimulatedDevice(0.004))]
    with ReplicaSet(devices) as replicas:
        got = sorted(int(o["y"][0]) for o in replicas.map(
            ({"x": np.array([i])} for i in range(50)), ordered=False, window=6
        ))  # fmt: skip
    assert got == [2 * i for i in range(50)]


def test_a_lost_device_leaves_the_rotation_and_its_requests_are_rerouted() -> None:
    flaky = SimulatedDevice(0.002, fail_after=5)
    steady = SimulatedDevice(0.002)
    with ReplicaSet([("flaky", flaky), ("steady", steady)]) as replicas:
        results = [int(o["y"][0]) for o in replicas.map({"x": np.array([i])} for i in range(60))]
        stats = {r["name"]: r for r in replicas.stats()["replicas"]}
        assert results == [2 * i for i in range(60)]
        assert not stats["flaky"]["enabled"] and "device lost" in stats["flaky"]["reason"]
        assert stats["flaky"]["failed"] == 1
        assert stats["steady"]["completed"] + stats["flaky"]["completed"] == 60
        replicas.enable("flaky", False)
        with pytest.raises(ArtifactError, match="no replica named"):
            replicas.enable("gpu")


def test_when_every_replica_fails_the_caller_gets_the_error() -> None:
    with ReplicaSet([("a", SimulatedDevice(0.001, fail_after=1))]) as replicas:
        with pytest.raises(ArtifactError, match="no replica left"):
            replicas.run({"x": np.array([1])})
        with pytest.raises(ArtifactError, match="no replica can take"):
            replicas.submit({"x": np.array([1])})


def test_an_input_error_goes_back_to_the_caller_and_the_replica_stays() -> None:
    class Picky(SimulatedDevice):
        def run(self, inputs: dict[str, object]) -> dict[str, object]:
            if int(np.asarray(inputs["x"])[0]) == 3:
                raise InputError("index 3 is out of range")
            return super().run(inputs)

    with ReplicaSet([("picky", Picky(0.001))]) as replicas:
        with pytest.raises(InputError, match="out of range"):
            replicas.run({"x": np.array([3])})
        assert replicas.run({"x": np.array([4])})["y"][0] == 8
        assert replicas.stats()["replicas"][0]["enabled"]


def test_close_finishes_what_was_queued() -> None:
    gate = threading.Event()
    device = SimulatedDevice(0.001, gate=gate)
    replicas = ReplicaSet([("a", device)])
    futures = [replicas.submit({"x": np.array([i])}) for i in range(10)]
    gate.set()
    replicas.close()
    assert [int(f.result()["y"][0]) for f in futures] == [2 * i for i in range(10)]
    with pytest.raises(ArtifactError, match="closed"):
        replicas.submit({"x": np.array([1])})


def test_eight_simulated_gpus_all_take_work() -> None:
    devices = [(f"cuda:{i}", SimulatedDevice(0.004)) for i in range(8)]
    with ReplicaSet(devices) as replicas:
        assert replicas.capacity == 8
        list(replicas.map({"x": np.array([i])} for i in range(160)))
        done = [r["completed"] for r in replicas.stats()["replicas"]]
    assert sum(done) == 160 and min(done) > 0


def test_replicas_must_be_one_model(chain: tuple[onnx.ModelProto, list[Path]]) -> None:
    from tests_support import make_mlp_model

    root = chain[1][0].parent
    onnx.save(make_mlp_model(), root / "mlp.onnx")
    other = ai_vmm.compile(root / "mlp.onnx", "onnxruntime:CPU", root / "mlp.vmm", tune=False)
    with pytest.raises(ArtifactError, match="different inputs"):
        ReplicaSet.load([chain[1][0], other.path])
    with pytest.raises(ArtifactError, match="at least one"):
        ReplicaSet([])


class _SharedCore:
    """Two simulated devices that compute on one shared core (a lock held while they run)."""

    def __init__(self, core: threading.Lock, seconds: float) -> None:
        self.core, self.device = core, SimulatedDevice(seconds)

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        with self.core:
            return self.device.run(inputs)


def test_prune_drops_replicas_that_add_no_capacity() -> None:
    """Two targets on one core: the slow one's calls only take the core from the fast one,
    so the set keeps the fast one alone (and says why); requests still all come back."""
    core = threading.Lock()
    fast, slow = _SharedCore(core, 0.002), _SharedCore(core, 0.006)
    with ReplicaSet([("fast", fast), ("slow", slow)]) as replicas:
        replicas.calibrate({"x": np.array([1])}, seconds=0.1)
        decision = replicas.prune({"x": np.array([1])}, seconds=0.4)
        assert decision["pruned"] == ["slow"] and decision["kept"] == ["fast"]
        assert decision["together"] < decision["best_alone"]["fast"]
        results = list(replicas.map({"x": np.array([i])} for i in range(20)))
        stats = {r["name"]: r for r in replicas.stats()["replicas"]}
    assert [r["y"][0] for r in results] == [2 * i for i in range(20)]
    assert not stats["slow"]["enabled"] and "adds no capacity" in stats["slow"]["reason"]


def test_prune_keeps_replicas_that_add_capacity() -> None:
    devices = [("a", SimulatedDevice(0.002)), ("b", SimulatedDevice(0.004))]
    with ReplicaSet(devices) as replicas:
        replicas.calibrate({"x": np.array([1])}, seconds=0.1)
        decision = replicas.prune({"x": np.array([1])}, seconds=0.4)
        assert decision["pruned"] == [] and sorted(decision["kept"]) == ["a", "b"]
        assert decision["together"] > decision["best_alone"]["a"]


def test_prune_measures_and_keeps_the_model_a_device_runs_alone() -> None:
    """The fast device's replica runs at half speed in the set (it leaves threads to its
    neighbour); alone it would run at full speed: ``prune`` measures that model alone and,
    when the set loses to it, serves with it."""
    core = threading.Lock()
    shared_fast, slow = _SharedCore(core, 0.004), _SharedCore(core, 0.006)
    solo = _SharedCore(core, 0.002)
    with ReplicaSet([("fast", shared_fast), ("slow", slow)]) as replicas:
        replicas.calibrate({"x": np.array([1])}, seconds=0.1)
        decision = replicas.prune({"x": np.array([1])}, seconds=0.4, alone={"fast": solo})
        assert decision["pruned"] == ["slow"]
        before = (shared_fast.device.calls, solo.device.calls)
        results = list(replicas.map({"x": np.array([i])} for i in range(10)))
    assert [r["y"][0] for r in results] == [2 * i for i in range(10)]
    assert shared_fast.device.calls == before[0] and solo.device.calls == before[1] + 10
