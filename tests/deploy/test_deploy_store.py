"""The deployment store: thread-count variants share payloads and never touch the original."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx

import ai_vmm
from ai_vmm.deploy.store import DeploymentStore, derive_variant, hardware_fingerprint, safe_name
from ai_vmm.runtime import load
from ai_vmm.runtime.artifact import read_manifest
from ai_vmm.runtime.devices import CpuInfo, Device, Inventory
from tests_support import make_mlp_model


def _artifact(tmp_path: Path, target: str) -> Path:
    onnx.save(make_mlp_model(), tmp_path / "mlp.onnx")
    return ai_vmm.compile(
        tmp_path / "mlp.onnx", target, tmp_path / f"{target[:4]}.vmm", tune=False
    ).path


def test_variant_sets_threads_and_leaves_the_source_alone(tmp_path: Path) -> None:
    for target, key in (
        ("onnxruntime:CPU", "intra_op_num_threads"),
        ("openvino:CPU", "inference_num_threads"),
    ):
        source = _artifact(tmp_path, target)
        before = (source / "manifest.json").read_bytes()
        variant = derive_variant(source, tmp_path / f"{key}-t1.vmm", {"threads": 1})
        assert read_manifest(variant).partitions[0].config[key] == 1
        assert (source / "manifest.json").read_bytes() == before  # copied, not hard-linked
        entry = read_manifest(source).partitions[0].entry
        assert (variant / entry).stat().st_ino == (source / entry).stat().st_ino  # payload linked
        with load(variant) as model:
            assert model.run({"x": np.zeros((1, 16), np.float32)})["y"].shape == (1, 8)


def test_decisions_and_named_artifacts(tmp_path: Path) -> None:
    store = DeploymentStore(tmp_path / "store")
    source = _artifact(tmp_path, "onnxruntime:CPU")
    assert store.decision("k") is None
    path = store.save_decision("k", source, {"chosen": {"key": "x"}})
    assert path == store.decision_path("k")
    found = store.decision("k")
    assert found is not None and found[1] == {"chosen": {"key": "x"}}
    (path.parent / "explanation.json").write_text("{not json")
    assert store.decision("k") is None  # a broken entry is not a decision
    named = store.save_named("Org/Model", source)
    assert named.name == "Org--Model.vmm" and json.loads((named / "manifest.json").read_text())
    # An ID is one path component: no separator survives, so nothing escapes models/.
    assert safe_name("../../etc/passwd") == "..--..--etc--passwd"
    assert store.named("../../x").parent == store.path("models")


def test_fingerprint_changes_with_the_hardware() -> None:
    cpu = CpuInfo("EPYC", "AuthenticAMD", "x86_64", 2, 2, ("avx2",), 8 << 30)
    one = hardware_fingerprint(Inventory(cpu, (Device("onnxruntime", "CPU", "cpu"),)))
    two = hardware_fingerprint(
        Inventory(cpu, (Device("onnxruntime", "CPU", "cpu"), Device("cuda", "0", "gpu")))
    )
    assert one != two and one == hardware_fingerprint(
        Inventory(cpu, (Device("onnxruntime", "CPU", "cpu"),))
    )
