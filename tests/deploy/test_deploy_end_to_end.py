"""``VMM().deploy`` end to end on the bundled CNN and the tiny MLP: real compiles (OpenVINO and
ONNX Runtime), real measurements, the store, errors. Figures are not asserted (a shared
machine); decisions that do not depend on them are."""

from __future__ import annotations

import json
import logging
import time
import warnings
from pathlib import Path

import numpy as np
import onnx
import pytest
from bundled_cnn import cnn_samples

from ai_vmm import VMM, ConstraintError, Constraints, Deployment
from ai_vmm.deploy import ConstraintWarning
from tests_support import make_mlp_model

REPO = Path(__file__).resolve().parents[2]
CNN = REPO / "models" / "bundled" / "tiny_cnn.onnx"


def _cnn_samples(count: int = 8) -> list[dict[str, np.ndarray]]:
    return cnn_samples(count, seed=3)


@pytest.fixture(scope="module")
def vmm(tmp_path_factory: pytest.TempPathFactory) -> VMM:
    messages: list[str] = []
    vmm = VMM(
        store=tmp_path_factory.mktemp("store"), measure_seconds=0.15, progress=messages.append
    )
    vmm.messages = messages  # type: ignore[attr-defined]
    return vmm


def test_deploy_meet_explain_store(vmm: VMM) -> None:
    samples = _cnn_samples()
    limits = {"max_latency_ms": 1000, "preferred_hardware": ["NVIDIA_GPU", "INTEL_CPU", "CPU"]}
    model = vmm.deploy(CNN, constraints=limits, samples=samples)
    assert isinstance(model, Deployment) and model.kind == "model"
    record = model.explanation
    assert record["meets_constraints"] and record["chosen"]["status"] == "chosen"
    keys = {row["key"] for row in record["candidates"]}
    # Both CPU targets, each at one and at every thread, were measured.
    cores = vmm.inventory.cpu.physical_cores
    for target in ("openvino:CPU fp32", "onnxruntime:CPU fp32"):
        assert f"{target}, 1 thread, batch 1" in keys
        assert any(k.startswith(f"{target}, {cores} thread") for k in keys)
    for row in record["candidates"]:
        figures = row["figures"]
        assert figures["calls"] > 0 and figures["latency_ms"]["p95"] > 0
        assert figures["power"]["measured"] is False or figures["power"]["source"]
    text = model.explain()
    assert "preference 1 NVIDIA_GPU: absent" in text
    assert "chosen       " + record["chosen"]["key"] in text
    # Runs like the compiled model it wraps, and counts calls.
    outputs = model(pixel_values=samples[0]["pixel_values"])
    with vmm.deploy(CNN, constraints=limits, samples=samples) as again:
        assert any("found in the store" in m for m in vmm.messages)  # type: ignore[attr-defined]
        assert again.explanation["chosen"] == record["chosen"]
        np.testing.assert_allclose(
            again.run(samples[0])["logits"], outputs["logits"], rtol=1e-4, atol=1e-5
        )
    stats = model.stats()
    assert stats["calls"] == 1 and stats["constraints"]["max_latency_ms"]["state"] == "ok"
    assert stats["at_risk"] == []
    stored = json.loads((model.artifact_path.parent / "explanation.json").read_text())
    assert stored["chosen"]["key"] == record["chosen"]["key"]
    model.close()


def test_second_deploy_is_a_store_hit(vmm: VMM) -> None:
    samples = _cnn_samples(4)
    first = vmm.deploy(CNN, constraints={"max_latency_ms": 500}, samples=samples)
    started = time.perf_counter()
    second = vmm.deploy(CNN, constraints={"max_latency_ms": 500}, samples=samples)
    elapsed = time.perf_counter() - started
    assert second.explanation["created"] == first.explanation["created"]
    # Not a timing assertion: the figure goes to the test log; docs/deploy.md has the measured one.
    logging.getLogger(__name__).info("store hit in %.3f s", elapsed)
    first.close()
    second.close()


def test_nothing_meets_names_the_best_achievable(vmm: VMM) -> None:
    with pytest.raises(ConstraintError) as info:
        vmm.deploy(CNN, constraints={"max_latency_ms": 1e-6}, samples=_cnn_samples(4))
    message = str(info.value)
    assert message.startswith("no deployment candidate meets the constraints")
    assert "best p95 latency" in message and "> 1e-06 ms" in message
    assert info.value.exit_code == 8


def test_strict_false_returns_the_closest_and_warns(vmm: VMM) -> None:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        model = vmm.deploy(
            CNN, constraints={"max_latency_ms": 1e-6}, samples=_cnn_samples(4), strict=False
        )
    assert any(issubclass(w.category, ConstraintWarning) for w in caught)
    assert not model.explanation["meets_constraints"]
    assert model.explanation["rule"].startswith("closest to the constraints")
    assert model.stats()["constraints"]["max_latency_ms"]["state"] == "violated"
    model.close()


def test_synthetic_samples_and_model_proto(vmm: VMM, tmp_path: Path) -> None:
    proto = make_mlp_model()
    model = vmm.deploy(proto, constraints=Constraints(max_memory_mb=4096))
    record = model.explanation
    assert record["samples"]["synthetic"] and record["model"]["kind"] == "onnx-proto"
    assert "only fp32 tried" in " ".join(record["notes"])
    result = model(x=np.ones((1, 16), np.float32))
    assert result["y"].shape == (1, 8)
    model.close()
    onnx.save(proto, tmp_path / "mlp.onnx")
    # Low precision needs real samples for static INT8: without them it is skipped, said so.
    dyn = vmm.deploy(tmp_path / "mlp.onnx", constraints={"max_accuracy_drop": {"cosine": 0.5}})
    notes = " ".join(dyn.explanation["notes"])
    assert "int8 not tried: static INT8 calibrates on the samples" in notes
    assert any(b["id"] == "onnxruntime:CPU int8-dynamic" for b in dyn.explanation["builds"])
    dyn.close()


def test_unknown_model_id(vmm: VMM) -> None:
    from ai_vmm import ModelLoadError

    with pytest.raises(ModelLoadError, match="searched"):
        vmm.deploy("no-such-org/no-such-model")


def test_openvino_ir_and_artifact_sources(vmm: VMM, tmp_path: Path) -> None:
    import shutil

    import ai_vmm

    built = ai_vmm.compile(CNN, "openvino:CPU", tmp_path / "cnn.vmm", tune=False)
    shutil.copytree(built.path / "p0", tmp_path / "ir")  # model.xml + model.bin, as ovc writes
    samples = _cnn_samples(4)
    ir = vmm.deploy(tmp_path / "ir" / "model.xml", samples=samples)
    assert ir.explanation["model"]["kind"] == "openvino-ir"
    assert {b["device"] for b in ir.explanation["builds"]} == {"openvino:CPU"}
    reference = ai_vmm.runtime.load(built.path).run(samples[0])["logits"]
    np.testing.assert_allclose(ir(**samples[0])["logits"], reference, rtol=1e-5, atol=1e-6)
    ir.close()
    artifact = vmm.deploy(built.path, samples=samples)
    assert artifact.explanation["model"]["kind"] == "artifact"
    assert artifact.explanation["builds"][0]["status"] == "reused"
    np.testing.assert_allclose(artifact(**samples[0])["logits"], reference, rtol=1e-5, atol=1e-6)
    artifact.close()


def test_a_partition_plan_when_a_device_cannot_take_the_whole_model(
    vmm: VMM, tmp_path: Path
) -> None:
    from unpool_model import make_unpool_model

    onnx.save(make_unpool_model(), tmp_path / "unpool.onnx")
    rng = np.random.default_rng(0)
    samples = [{"x": rng.standard_normal((1, 3, 16, 16)).astype(np.float32)} for _ in range(4)]
    model = vmm.deploy(tmp_path / "unpool.onnx", samples=samples)
    builds = {b["id"]: b for b in model.explanation["builds"]}
    assert builds["openvino:CPU fp32"]["status"] == "failed"  # OpenVINO has no MaxUnpool
    plan = builds["plan openvino:CPU+onnxruntime:CPU fp32"]
    assert plan["status"] == "built"
    keys = [row["key"] for row in model.explanation["candidates"]]
    assert any(k.startswith("plan openvino:CPU+onnxruntime:CPU fp32, 1 thread") for k in keys)
    assert model(**samples[0])["y"].shape[0] == 1
    model.close()
