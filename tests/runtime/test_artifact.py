"""Artifact format: manifest round trip, version check, payload hashes, zip form."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

import ai_vmm
from ai_vmm.runtime import ArtifactError, load
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
