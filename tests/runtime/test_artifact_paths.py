"""Issue 13, cases 2 and 5: an artifact reads only its own hashed files; a bad manifest is one line.

Each hostile manifest here was loaded (and run) by the runtime before the schema existed.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from reliability_support import compile_mlp, leftovers, one_error_line, vmmc

from ai_vmm.runtime import ArtifactError, load

Edit = Callable[[dict[str, Any]], None]


@pytest.fixture(scope="module")
def artifact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return compile_mlp(tmp_path_factory.mktemp("paths"))


def _edited(artifact: Path, where: Path, edit: Edit) -> Path:
    copy = where / "edited.vmm"
    shutil.copytree(artifact, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_entry_outside_the_artifact_is_refused(artifact: Path, tmp_path: Path) -> None:
    """An absolute ``entry`` made the runtime run a foreign model (not hashed)."""
    foreign = tmp_path / "foreign.onnx"
    shutil.copy(artifact / "p0" / "model.onnx", foreign)

    def edit(manifest: dict[str, Any]) -> None:
        manifest["partitions"][0]["entry"] = str(foreign)

    with pytest.raises(ArtifactError, match="entry .* is not a relative path inside"):
        load(_edited(artifact, tmp_path, edit))


def test_entry_must_be_a_hashed_file(artifact: Path, tmp_path: Path) -> None:
    def edit(manifest: dict[str, Any]) -> None:
        manifest["partitions"][0]["entry"] = "p0/other.onnx"

    copy = _edited(artifact, tmp_path, edit)
    shutil.copy(copy / "p0" / "model.onnx", copy / "p0" / "other.onnx")
    with pytest.raises(ArtifactError, match="is not one of its hashed files"):
        load(copy)


@pytest.mark.parametrize(
    "path",
    [
        "../../../../../../../../etc/passwd",
        "/etc/passwd",
        "p0/../../outside.txt",
        "./p0/model.onnx",
        "p0//model.onnx",
        "p0\\..\\..\\outside.txt",
        "C:/outside.txt",
        "manifest.json",
    ],
)
def test_files_outside_the_artifact_are_refused_even_with_their_real_hash(
    artifact: Path, tmp_path: Path, path: str
) -> None:
    """A ``files`` key ``../../etc/passwd`` with the real sha256 of that file used to load."""
    outside = Path("/etc/passwd") if "passwd" in path else tmp_path / "outside.txt"
    if not outside.exists():
        outside.write_text("secret")

    def edit(manifest: dict[str, Any]) -> None:
        manifest["partitions"][0]["files"][path] = _sha(outside)

    with pytest.raises(ArtifactError, match="not a relative path inside the artifact"):
        load(_edited(artifact, tmp_path, edit))


def test_assets_follow_the_same_rules(artifact: Path, tmp_path: Path) -> None:
    def edit(manifest: dict[str, Any]) -> None:
        manifest["assets"] = {"../tokenizer.json": "0" * 64}

    with pytest.raises(ArtifactError, match="asset '../tokenizer.json' is not a relative path"):
        load(_edited(artifact, tmp_path, edit))


BAD_MANIFESTS: dict[str, tuple[Edit, str]] = {
    "no partitions": (lambda m: m.update(partitions=[]), "has no partitions"),
    "no files": (lambda m: m["partitions"][0].update(files={}), "partitions/0/files"),
    "bad optimization level": (
        lambda m: m["partitions"][0]["config"].update(graph_optimization_level="fastest"),
        "partitions/0/config/graph_optimization_level",
    ),
    "threads as text": (
        lambda m: m["partitions"][0]["config"].update(intra_op_num_threads="many"),
        "intra_op_num_threads",
    ),
    "config not an object": (
        lambda m: m["partitions"][0].update(config=[1, 2]),
        "partitions/0/config",
    ),
    "plan of an unknown partition": (
        lambda m: m.update(plans=[{"id": "a", "partitions": ["p9"], "when": {}}]),
        "unknown partition 'p9'",
    ),
    "plan range without max": (
        lambda m: m.update(plans=[{"id": "a", "partitions": ["p0"], "when": {"x": {"0": {}}}}]),
        "plans/0/when/x/0",
    ),
    "bad sha256": (
        lambda m: m["partitions"][0]["files"].update({"p0/model.onnx": "abc"}),
        "does not match",
    ),
    "negative dimension": (
        lambda m: m["inputs"][0].update(shape=[-1, 16]),
        "inputs/0/shape/0",
    ),
    "version as text": (lambda m: m.update(format_version="1"), "format_version"),
    "duplicate partition id": (
        lambda m: m["partitions"].append(dict(m["partitions"][0])),
        "appears twice",
    ),
    "inputs missing": (lambda m: m.pop("inputs"), "'inputs' is a required property"),
    "static package outside the partition": (
        lambda m: m["partitions"][0].update(
            target="cuda",
            config={"static_batches": {"32": {"entry": "../../model.pt2", "inputs": []}}},
        ),
        "static_batches/32/entry",
    ),
    "unknown cuda runner": (
        lambda m: m["partitions"][0].update(target="cuda", config={"runner": "python"}),
        "partitions/0/config/runner",
    ),
    "unknown decode compile": (
        lambda m: m["partitions"][0].update(target="cuda", config={"decode_compile": "exec"}),
        "partitions/0/config/decode_compile",
    ),
    "padding axis as text": (
        lambda m: m["partitions"][0].update(
            target="cuda", config={"pad_batch": {"from": 1, "to": 2, "inputs": {"x": "1"}}}
        ),
        "pad_batch/inputs/x",
    ),
    "static batch not a number": (
        lambda m: m["partitions"][0].update(
            target="cuda",
            config={"static_batches": {"all": {"entry": "model-b32.pt2", "inputs": []}}},
        ),
        "static_batches",
    ),
}


@pytest.mark.parametrize("case", sorted(BAD_MANIFESTS))
def test_bad_manifests_are_one_line_artifact_errors(
    artifact: Path, tmp_path: Path, case: str
) -> None:
    edit, expected = BAD_MANIFESTS[case]
    with pytest.raises(ArtifactError, match=expected) as caught:
        load(_edited(artifact, tmp_path, edit))
    assert "\n" not in str(caught.value)


def test_the_cli_says_so_in_one_line(artifact: Path, tmp_path: Path) -> None:
    """``partitions: []`` and a malformed ``config`` used to be KeyErrors at run time (exit 70)."""
    for case in ("no partitions", "bad optimization level"):
        edited = _edited(artifact, tmp_path / case.replace(" ", "-"), BAD_MANIFESTS[case][0])
        result = vmmc("run", edited, "--random-inputs")
        assert result.returncode == 5, result.stderr
        assert BAD_MANIFESTS[case][1] in one_error_line(result)


def test_inspect_of_a_non_utf8_report_is_one_line(artifact: Path, tmp_path: Path) -> None:
    copy = tmp_path / "latin1.vmm"
    shutil.copytree(artifact, copy)
    (copy / "report.json").write_bytes('{"note": "caf\xe9"}'.encode("latin-1"))
    result = vmmc("inspect", copy)
    assert result.returncode == 5, result.stderr
    assert "report.json is not valid JSON (UnicodeDecodeError" in one_error_line(result)


def test_a_hostile_zip_unpacks_nothing(
    artifact: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import tempfile

    unpack_root = tmp_path / "tmp"
    unpack_root.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(unpack_root))
    manifest = json.loads((artifact / "manifest.json").read_text())
    payload = (artifact / "p0" / "model.onnx").read_bytes()
    manifest["partitions"][0]["files"] = {"../evil.onnx": hashlib.sha256(payload).hexdigest()}
    manifest["partitions"][0]["entry"] = "../evil.onnx"
    hostile = tmp_path / "hostile.vmm.zip"
    with zipfile.ZipFile(hostile, "w") as archive:
        archive.writestr("manifest.json", json.dumps(manifest))
        archive.writestr("../evil.onnx", payload)
    with pytest.raises(ArtifactError, match="not a relative path inside the artifact"):
        load(hostile)
    assert leftovers(unpack_root) == [] and not (tmp_path / "evil.onnx").exists()


def test_a_valid_artifact_still_runs(artifact: Path) -> None:
    with load(artifact) as model:
        y = model(x=np.ones((2, 16), np.float32))["y"]
    assert y.shape == (2, 8)
