"""``VMM().deploy(..., constraints={"replicas": ...})``: replicas across devices.

Real deploys on openvino:CPU + onnxruntime:CPU (the tiny CNN, and the zoo's transformer
encoder), and a simulated device set: the laptop profile's CPU, iGPU, NPU and ONNX Runtime CPU
as sleeping devices at the profile's speeds. No assertion is a timing: where prune decides,
the test checks that the decision agrees with the figures it reports; ``MARGIN`` is moved to
make each decision happen for sure (a set kept, a set pruned).
"""

from __future__ import annotations

import json
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from bundled_cnn import cnn_samples
from parallel_models import SimulatedDevice

import ai_vmm
from ai_vmm import VMM, ConstraintError, Constraints
from ai_vmm.deploy import replicas as deploy_replicas
from ai_vmm.deploy.builds import Build, BuildSpec
from ai_vmm.deploy.choose import Variant
from ai_vmm.deploy.measure import Figures
from ai_vmm.deploy.replicas import measure_replicas, plan_replicas
from ai_vmm.deploy.samples import Samples
from ai_vmm.hardware_profile import load_profile
from ai_vmm.runtime.model import CompiledModel
from ai_vmm.runtime.replicas import ReplicaSet
from tests_support import make_mlp_model

REPO = Path(__file__).resolve().parents[2]
CNN = REPO / "models" / "bundled" / "tiny_cnn.onnx"
RTOL, ATOL = 1e-3, 1e-4
"""``ai_vmm.compile``'s default verification tolerance."""


def _cnn_samples(count: int = 4) -> list[dict[str, np.ndarray]]:
    return cnn_samples(count, seed=5)


@pytest.fixture(scope="module")
def vmm(tmp_path_factory: pytest.TempPathFactory) -> VMM:
    pytest.importorskip("openvino")
    messages: list[str] = []
    vmm = VMM(
        store=tmp_path_factory.mktemp("store"), measure_seconds=0.15, progress=messages.append
    )
    vmm.messages = messages  # type: ignore[attr-defined]
    return vmm


def _consistent(record: dict[str, Any]) -> None:
    """The decision agrees with the requests/s the record reports."""
    measured = record["measured"]
    (best, best_rate), together = next(iter(measured["best_alone"].items())), measured["together"]
    assert best_rate == max(measured["alone"].values())
    if record["pruned"]:
        assert together < best_rate * (1 + measured["margin"])
        assert record["kept"] == [best]
    else:
        assert together >= best_rate * (1 + measured["margin"])
        assert sorted(record["kept"]) == sorted(measured["alone"])


# -- the constraint ---------------------------------------------------------------------------


def test_the_replicas_constraint_parses_and_says_what_is_accepted() -> None:
    assert Constraints.parse({"replicas": "auto"}).replicas == "auto"
    assert Constraints.parse(["replicas=3"]).replicas == 3
    assert Constraints.parse(["replicas=1"]).replicas is None
    both = Constraints.parse(["replicas=openvino:CPU,onnxruntime:CPU"])
    assert both.replicas == ("openvino:CPU", "onnxruntime:CPU")
    assert both.to_json()["replicas"] == ["openvino:CPU", "onnxruntime:CPU"]
    assert "replicas openvino:CPU, onnxruntime:CPU" in both.describe()
    # Absent from the store key when not asked for: earlier single-device decisions still match.
    assert "replicas" not in Constraints().to_json()
    for bad, match in (("many", "device key"), (0, "1..64"), ([], "empty"), (True, "auto")):
        with pytest.raises(ConstraintError, match=match):
            Constraints(replicas=bad)  # type: ignore[arg-type]


# -- a simulated device set (the laptop profile) ---------------------------------------------


@pytest.fixture(scope="module")
def mlp_artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("mlp")
    onnx.save(make_mlp_model(), root / "mlp.onnx")
    return ai_vmm.compile(root / "mlp.onnx", "onnxruntime:CPU", root / "mlp.vmm", tune=False).path


def _laptop_variants(artifact: Path, failing: str = "") -> tuple[list[Variant], dict[str, float]]:
    """One measured fp32 candidate per device of the laptop profile, its throughput the
    profile's fp32 peak (a 60 GFLOP request); ``failing`` fails its latency check. Every
    candidate's artifact is the same small real one (plan_replicas derives thread variants)."""
    profile = load_profile("laptop-igpu-npu")
    rates: dict[str, float] = {}
    variants = []
    for device in profile.inventory.devices:
        peak = profile.figures[device.key].peak_gflops["fp32"]
        rates[device.key] = peak * 1e9 / 60e9
        cpu = device.kind == "cpu"
        build = Build(BuildSpec(device, "INTEL_CPU" if cpu else "INTEL_GPU", "fp32"), artifact)
        build.status = "built"
        variant = Variant(build, 16 if cpu else None, 1, artifact)
        variant.figures = _figures(rates[device.key])
        variant.status = "fails" if device.key == failing else "meets"
        if device.key == failing:
            from ai_vmm.deploy.choose import Check

            variant.checks = [Check("max_latency_ms", 100.0, 10.0, False, "too slow", 9.0)]
        variants.append(variant)
    return variants, rates


def _figures(rate: float) -> Figures:
    return Figures(latencies_ms=[1000.0 / rate] * 5, batch=1, memory_mb=None, power=None)


def test_replicas_on_the_simulated_laptop_profile(mlp_artifact: Path, tmp_path: Path) -> None:
    variants, rates = _laptop_variants(mlp_artifact, failing="openvino:NPU")
    chosen = next(v for v in variants if v.build.spec.device.key == "openvino:CPU")
    auto = Constraints(replicas="auto")
    plans, notes = plan_replicas(variants, chosen, auto, 16, tmp_path)
    # The chosen device first, then by measured throughput; the NPU fails a constraint.
    others = sorted(
        (k for k in rates if k not in ("openvino:CPU", "openvino:NPU")), key=rates.__getitem__
    )
    assert [p.device for p in plans] == ["openvino:CPU", *reversed(others)]
    assert notes == ["replica openvino:NPU left out: no candidate on it meets the constraints"]
    # The two CPU targets split the 16 cores but one, left to the thread that feeds the iGPU;
    # the iGPU runs as compiled.
    threads = {p.device: p.threads for p in plans}
    assert threads == {"openvino:CPU": 7, "onnxruntime:CPU": 7, "openvino:GPU.0": None}
    cpu = next(p for p in plans if p.device == "onnxruntime:CPU")
    assert cpu.set_path.name == "mlp-t7.vmm" and cpu.alone_path == mlp_artifact
    two, notes = plan_replicas(variants, chosen, Constraints(replicas=2), 16, tmp_path)
    assert [p.device for p in two] == ["openvino:CPU", "openvino:GPU.0"]
    assert "replica onnxruntime:CPU left out: replicas = 2" in notes
    named = Constraints(replicas=["openvino:npu", "onnxruntime:CPU"])
    listed, notes = plan_replicas(variants, chosen, named, 16, tmp_path)
    assert [p.device for p in listed] == ["openvino:NPU", "onnxruntime:CPU"]
    assert "no candidate meets the constraints" in notes[0]
    with pytest.raises(ConstraintError, match="no measured candidate on cuda:0"):
        plan_replicas(variants, chosen, Constraints(replicas=["cuda:0"]), 16, tmp_path)

    # Measured as sleeping devices at the profile's speeds (1.3-12 ms a request).
    def simulated(rate: float) -> Callable[[Path], Any]:
        return lambda _path: SimulatedDevice(1.0 / rate / 10)

    by_path = {}
    for plan in plans:
        by_path[plan.set_path] = by_path[plan.alone_path] = rates[plan.device]
    samples = Samples(({"x": np.array([1.0])},), "one sample", synthetic=True, digest="d")
    record = measure_replicas(
        plans, samples, 1, 0.3, lambda _m: None, load=lambda p: simulated(by_path[p])(p)
    )
    assert record["samples"] == "one sample (synthetic)"
    assert set(record["measured"]["alone"]) == {p.device for p in plans}
    _consistent(record)


def test_a_set_on_shared_hardware_is_never_kept_below_its_best_device(
    mlp_artifact: Path, tmp_path: Path
) -> None:
    """Two devices that run one request at a time between them (a shared resource): the
    decision agrees with its figures, so a kept set measured at least ``MARGIN`` above the
    faster device alone. (Which way it goes is not asserted: the set's two worker threads
    overlap their own overhead with each other's calls, which can be worth more than the
    margin on a loaded machine.)"""
    variants, _ = _laptop_variants(mlp_artifact)
    chosen = variants[0]
    plans, _ = plan_replicas(
        variants, chosen, Constraints(replicas=["openvino:CPU", "openvino:GPU.0"]), 16, tmp_path
    )
    lock = threading.Lock()

    class Serialised:
        def __init__(self, seconds: float) -> None:
            self.device = SimulatedDevice(seconds)

        def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
            with lock:
                return self.device.run(inputs)

    speeds = {plans[0].alone_path: 0.002, plans[0].set_path: 0.002, plans[1].set_path: 0.006}
    samples = Samples(({"x": np.array([1.0])},), "one sample", synthetic=False, digest="d")
    record = measure_replicas(
        plans, samples, 1, 0.4, lambda _m: None, load=lambda p: Serialised(speeds[p])
    )
    _consistent(record)
    assert record["why"]


class _FedGpu:
    """One executor of a GPU artifact: each call spends ``host`` seconds on its feeding thread
    (staging, launches: copies overlap there), then ``gpu`` seconds on the GPU that all copies
    share. Doubles ``x`` as ``SimulatedDevice`` does."""

    def __init__(self, gpu_lock: threading.Lock, host: float, gpu: float) -> None:
        self.lock, self.host = gpu_lock, SimulatedDevice(host)
        self.gpu = gpu

    def run(self, inputs: dict[str, Any]) -> dict[str, Any]:
        out = self.host.run(inputs)
        with self.lock:
            threading.Event().wait(self.gpu)
        return out


def test_a_gpu_replica_runs_as_two_executors_measured_and_kept_together(
    mlp_artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from ai_vmm.runtime.devices import Device

    gpu_artifact = tmp_path / "gpu.vmm"
    shutil.copytree(mlp_artifact, gpu_artifact)
    gpu = Device("cuda", "0", "gpu", "GPU (simulated)", {})
    build = Build(BuildSpec(gpu, "cuda", "fp16"), gpu_artifact)
    build.status = "built"
    on_gpu = Variant(build, None, 1, gpu_artifact)
    on_gpu.figures, on_gpu.status = _figures(400.0), "meets"
    cpu = next(
        v for v in _laptop_variants(mlp_artifact)[0] if v.build.spec.device.key == "onnxruntime:CPU"
    )
    plans, _ = plan_replicas([on_gpu, cpu], on_gpu, Constraints(replicas="auto"), 16, tmp_path)
    assert {p.device: p.copies for p in plans} == {"cuda:0": 2, "onnxruntime:CPU": 1}
    gpu_lock = threading.Lock()
    loaded: list[Path] = []

    def load(path: Path) -> Any:
        loaded.append(path)
        if path == gpu_artifact:
            return _FedGpu(gpu_lock, 0.003, 0.002)
        return SimulatedDevice(0.004)

    monkeypatch.setattr(deploy_replicas, "MARGIN", -1.0)  # keep the set whatever it measures
    samples = Samples(({"x": np.array([1.0])},), "one sample", synthetic=False, digest="d")
    record = measure_replicas(plans, samples, 1, 0.4, lambda _m: None, load=load)
    assert loaded.count(gpu_artifact) == 2  # two executors of the one GPU artifact
    assert set(record["measured"]["alone"]) == {"cuda:0", "onnxruntime:CPU"}  # by device
    assert record["kept"] == ["cuda:0", "onnxruntime:CPU"] and record["pruned"] == []
    assert [row["copies"] for row in record["devices"]] == [2, 1]
    assert "2 copies (executors) in the set" in "\n".join(deploy_replicas.format_replicas(record))
    # A stored decision opens as the same set: the GPU's two copies and the CPU.
    files = deploy_replicas.stored_artifacts(plans, record)
    for stored in files:
        (tmp_path / "entry" / stored).mkdir(parents=True)
    opened = {tmp_path / "entry" / stored: path for stored, path in files.items()}
    monkeypatch.setattr("ai_vmm.runtime.model.load", lambda p: load(opened[Path(p)]))
    model, first = deploy_replicas.open_replicas(tmp_path / "entry", record)
    with model:
        assert isinstance(model, ReplicaSet) and first == tmp_path / "entry" / "replicas/cuda-0.vmm"
        assert model.names == ["cuda:0", "cuda:0#1", "onnxruntime:CPU"]
        assert model.run({"x": np.array([2.0])})["y"].tolist() == [4.0]


# -- real deploys ---------------------------------------------------------------------------


def test_auto_replicas_on_both_cpu_targets(vmm: VMM) -> None:
    samples = _cnn_samples()
    single = vmm.deploy(CNN, samples=samples)
    model = vmm.deploy(CNN, constraints={"replicas": "auto"}, samples=samples)
    record = model.explanation["replicas"]
    assert record["asked"] == "auto" and record["samples"].startswith("4 samples")
    assert {row["device"] for row in record["devices"]} == {"openvino:CPU", "onnxruntime:CPU"}
    _consistent(record)
    text = model.explain()
    assert "replicas     asked auto" in text and record["why"] in text
    for device in record["kept"]:
        assert f"kept    {device}" in text
    for device in record["pruned"]:
        assert f"pruned  {device}" in text
    runtime = model.model
    assert isinstance(runtime, ReplicaSet if len(record["kept"]) > 1 else CompiledModel)
    for sample in samples:
        np.testing.assert_allclose(
            model(**sample)["logits"], single(**sample)["logits"], rtol=RTOL, atol=ATOL
        )
    # A second deploy loads what was kept from the store: nothing is measured again.
    vmm.messages.clear()  # type: ignore[attr-defined]
    with vmm.deploy(CNN, constraints={"replicas": "auto"}, samples=samples) as again:
        said = " ".join(vmm.messages)  # type: ignore[attr-defined]
        assert "found in the store" in said and "measuring" not in said
        assert again.explanation["replicas"] == record
    model.close()
    single.close()


@pytest.mark.parametrize(("margin", "kept"), [(-1.0, 2), (10.0, 1)], ids=["set-kept", "set-pruned"])
def test_each_decision_runs_what_it_kept(
    vmm: VMM, monkeypatch: pytest.MonkeyPatch, margin: float, kept: int
) -> None:
    """A margin every set beats (-1: any rate) or none can (10x) makes each decision certain."""
    monkeypatch.setattr(deploy_replicas, "MARGIN", margin)
    samples = _cnn_samples(3)
    devices = ["onnxruntime:CPU", "openvino:CPU"]
    single = vmm.deploy(CNN, samples=samples)
    # refresh: the margin is no part of the store's key (the other case stored a decision).
    model = vmm.deploy(CNN, constraints={"replicas": devices}, samples=samples, refresh=True)
    record = model.explanation["replicas"]
    assert record["asked"] == devices and record["measured"]["margin"] == margin
    _consistent(record)
    assert len(record["kept"]) == kept
    if kept == 2:
        assert isinstance(model.model, ReplicaSet)
        assert sorted(model.model.names) == sorted(devices)
        # Threads in the set: the two CPU targets split the cores.
        cores = vmm.inventory.cpu.physical_cores
        assert {row["threads"] for row in record["devices"]} == {max(1, cores // 2)}
        feeds = [s for s in samples for _ in range(4)]
        outputs = list(model.model.map(feeds))
        served = sum(r["completed"] for r in model.model.stats()["replicas"])
        assert served == len(feeds)
    else:
        assert isinstance(model.model, CompiledModel)
        device = next(iter(record["measured"]["best_alone"]))
        parts = model.model.manifest.partitions
        assert {f"{p.target}:{p.device}" for p in parts} == {device}
        assert "the set added no capacity" in model.explain()
        outputs = [model(**s) for s in samples for _ in range(4)]
    for sample, out in zip([s for s in samples for _ in range(4)], outputs, strict=True):
        np.testing.assert_allclose(out["logits"], single(**sample)["logits"], rtol=RTOL, atol=ATOL)
    stored = model.artifact_path
    assert stored.parent.name == "replicas" and stored.parent.parent.name in str(
        model.explanation["artifact"]
    )
    model.close()
    single.close()


def test_replicas_refused_where_they_cannot_apply(vmm: VMM) -> None:
    with pytest.raises(ConstraintError, match=r"openvino:GPU\.0 is not a device here"):
        vmm.deploy(CNN, constraints={"replicas": ["openvino:GPU.0"]}, samples=_cnn_samples(2))


@pytest.mark.slow
def test_auto_replicas_on_a_zoo_transformer(
    vmm: VMM, zoo: Any, zoo_model: Callable[[str], Path]
) -> None:
    """The zoo's transformer encoder (bench_parallel's set that beats its best device on
    2-core machines): whatever prune decides agrees with its figures, and the outputs through
    the deployment equal the single-device deployment's."""
    source = zoo_model("transformer_encoder")
    samples = [zoo.example_inputs("transformer_encoder", batch=8, seed=s) for s in range(2)]
    single = vmm.deploy(source, samples=samples)
    model = vmm.deploy(source, constraints={"replicas": "auto"}, samples=samples)
    record = model.explanation["replicas"]
    _consistent(record)
    name = next(iter(single.outputs)).name
    for sample in samples:
        np.testing.assert_allclose(
            model(**sample)[name], single(**sample)[name], rtol=RTOL, atol=ATOL
        )
    model.close()
    single.close()


def test_vmmc_deploy_writes_the_kept_replicas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    pytest.importorskip("openvino")
    from ai_vmm.cli import main
    from ai_vmm.deploy.replicas import open_replicas

    monkeypatch.setattr(deploy_replicas, "MARGIN", -1.0)
    onnx.save(make_mlp_model(), tmp_path / "mlp.onnx")
    out = tmp_path / "out"
    args = ["deploy", str(tmp_path / "mlp.onnx"), "-o", str(out), "--store", str(tmp_path / "s")]
    assert main([*args, "--seconds", "0.1", "-c", "replicas=auto"]) == 0
    assert "replicas     asked auto" in capsys.readouterr().out
    record = json.loads((out / "explanation.json").read_text())["replicas"]
    assert len(record["kept"]) == 2
    # The directory holds the set: explanation.json's rows name each replica's artifact.
    model, first = open_replicas(out, record)
    with model:
        assert isinstance(model, ReplicaSet) and first.parent == out / "replicas"
        assert model.run({"x": np.ones((1, 16), np.float32)})["y"].shape == (1, 8)
