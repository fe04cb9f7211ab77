"""Artifact format: manifest round trip, version check, payload hashes, zip form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ai_vmm
from ai_vmm.runtime import ArtifactError, CompileError, load
from ai_vmm.runtime.artifact import Manifest, read_manifest, staged_directory


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import onnx

    from tests_support import make_mlp_model

    root = tmp_path_factory.mktemp("artifact")
    onnx.save(make_mlp_model(), root / "mlp.onnx")
    return ai_vmm.compile(root / "mlp.onnx", "onnxruntime:CPU", root / "mlp.vmm", tune=False).path


def test_manifest_round_trips(artifact: Path) -> None:
    manifest = read_manifest(artifact)
    again = Manifest.from_json(json.loads(json.dumps(manifest.to_json())))
    assert again.to_json() == manifest.to_json()
    assert [p.target for p in manifest.partitions] == ["onnxruntime"]
    assert manifest.routing() == [
        {"tensor": "x", "from": "input", "to": ["p0"]},
        {"tensor": "y", "from": "p0", "to": ["output"]},
    ]


def test_newer_format_version_is_refused(artifact: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "newer.vmm"
    shutil.copytree(artifact, copy)
    data = json.loads((copy / "manifest.json").read_text())
    data["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(data))
    with pytest.raises(ArtifactError, match="format version 99 is newer"):
        load(copy)


def test_changed_payload_is_refused(artifact: Path, tmp_path: Path) -> None:
    import shutil

    copy = tmp_path / "tampered.vmm"
    shutil.copytree(artifact, copy)
    payload = copy / "p0" / "model.onnx"
    payload.write_bytes(payload.read_bytes() + b"\0")
    with pytest.raises(ArtifactError, match="changed after compile"):
        load(copy)


def test_missing_manifest_and_missing_path(tmp_path: Path) -> None:
    with pytest.raises(ArtifactError, match="does not exist"):
        load(tmp_path / "absent.vmm")
    (tmp_path / "empty.vmm").mkdir()
    with pytest.raises(ArtifactError, match="no manifest.json"):
        load(tmp_path / "empty.vmm")
    (tmp_path / "junk.vmm").write_bytes(b"not a zip")
    with pytest.raises(ArtifactError, match="neither an artifact directory nor"):
        load(tmp_path / "junk.vmm")


def test_zip_artifact_loads_and_matches(artifact: Path, tmp_path: Path) -> None:
    from ai_vmm.runtime.artifact import write_zip

    zipped = tmp_path / "mlp.vmm.zip"
    write_zip(artifact, zipped)
    x = np.ones((2, 16), np.float32)
    np.testing.assert_array_equal(load(zipped)(x=x)["y"], load(artifact)(x=x)["y"])


def test_staged_directory_leaves_nothing_on_failure(tmp_path: Path) -> None:
    with pytest.raises(RuntimeError), staged_directory(tmp_path / "out.vmm") as stage:
        (stage / "half").write_text("written")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def _relu_chain(tmp_path: Path) -> tuple[Manifest, dict[str, Path]]:
    """Two ONNX Runtime CPU partitions, ``x -> Relu -> t -> Relu -> y`` on ``[n, 4]``."""
    import onnx
    from onnx import TensorProto, helper

    from ai_vmm.runtime.artifact import PartitionSpec, TensorSpec, sha256_file

    payloads: dict[str, Path] = {}
    parts = []
    for pid, source, target in (("p0", "x", "t"), ("p1", "t", "y")):
        directory = tmp_path / f"payload-{pid}"
        directory.mkdir()
        graph = helper.make_graph(
            [helper.make_node("Relu", [source], [target])],
            "relu",
            [helper.make_tensor_value_info(source, TensorProto.FLOAT, ["n", 4])],
            [helper.make_tensor_value_info(target, TensorProto.FLOAT, ["n", 4])],
        )
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
        onnx.save(model, directory / "model.onnx")
        payloads[pid] = directory
        files = {f"{pid}/model.onnx": sha256_file(directory / "model.onnx")}
        entry = f"{pid}/model.onnx"
        parts.append(PartitionSpec(pid, "onnxruntime", "CPU", entry, files, (source,), (target,)))
    signature = (TensorSpec("x", "float32", ("n", 4)),), (TensorSpec("y", "float32", ("n", 4)),)
    return Manifest(*signature, tuple(parts), {}, {}, {}), payloads


@pytest.mark.parametrize("name", ["chain.vmm", "chain.vmm.zip"])
def test_write_artifact_writes_a_loadable_two_partition_artifact(tmp_path: Path, name: str) -> None:
    from ai_vmm.runtime.artifact import write_artifact

    manifest, payloads = _relu_chain(tmp_path)
    out = tmp_path / name
    write_artifact(out, manifest, {"note": "test"}, payloads)
    assert out.is_file() == name.endswith(".zip")
    if name.endswith(".zip"):
        assert not (tmp_path / "chain.vmm").exists()  # the staged directory is gone
    model = load(out)
    assert model.report() == {"note": "test"}
    assert [route["from"] for route in model.manifest.routing()] == ["p0", "input", "p1"]
    x = np.array([[-1.0, 2.0, -3.0, 4.0]], np.float32)
    np.testing.assert_array_equal(model(x=x)["y"], np.maximum(x, 0))


def test_write_artifact_leaves_nothing_on_failure(tmp_path: Path) -> None:
    from ai_vmm.runtime.artifact import write_artifact

    manifest = Manifest((), (), (), {}, {}, {})
    with pytest.raises(CompileError, match="absent"):
        write_artifact(tmp_path / "bad.vmm", manifest, {}, {"p0": tmp_path / "absent"})
    assert list(tmp_path.iterdir()) == []


def test_two_partition_artifact_loads_with_spinning_stop(tmp_path: Path) -> None:
    from ai_vmm.runtime.artifact import write_artifact

    manifest, payloads = _relu_chain(tmp_path)
    write_artifact(tmp_path / "chain.vmm", manifest, {}, payloads)
    model = load(tmp_path / "chain.vmm")
    for executor in model._executors.values():
        options = executor._session.get_session_options()  # type: ignore[attr-defined]
        assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    np.testing.assert_array_equal(model(x=x)["y"], np.maximum(x, 0))
