"""The artifact format: ``NAME.vmm/`` with ``manifest.json``, payloads and ``report.json``.

This module owns the manifest schema. The manifest is deterministic: the same source model, options
and chosen target give the same bytes (keys sorted, no timestamps; timings live in the report).
An artifact is written into a temporary sibling directory and renamed into place, so a failed
compile never leaves a half-written artifact behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_vmm.runtime.errors import ArtifactError

FORMAT_NAME = "ai-vmm-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REPORT = "report.json"

Dim = int | str | dict[str, int] | None
"""A dimension: a size, a symbol (``"batch"``), a range ``{"min": 1, "max": 8}`` or unknown."""


@dataclass(frozen=True)
class TensorSpec:
    """One input or output of a model or partition."""

    name: str
    dtype: str
    """numpy dtype name (``float32``, ``int64``, ``bool``); ``""`` for a non-tensor value."""
    shape: tuple[Dim, ...] | None
    """``None`` when the rank is unknown."""
    kind: str = "tensor"
    """``tensor``, or ``sequence`` / ``optional`` / ``other``: values passed through unchecked."""

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": None if self.shape is None else list(self.shape),
            "kind": self.kind,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> TensorSpec:
        shape = data.get("shape")
        return cls(
            name=str(data["name"]),
            dtype=str(data.get("dtype", "")),
            shape=None if shape is None else tuple(shape),
            kind=str(data.get("kind", "tensor")),
        )


@dataclass(frozen=True)
class PartitionSpec:
    """One compiled piece of the model, run by one target on one device."""

    id: str
    target: str
    device: str
    entry: str
    """The payload file the executor opens, relative to the artifact root."""
    files: dict[str, str]
    """Every payload file of this partition (relative path -> sha256)."""
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    config: dict[str, Any] = field(default_factory=dict)
    """Executor settings fixed at compile time (precision hint, optimization level, ...)."""

    def to_json(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "target": self.target,
            "device": self.device,
            "entry": self.entry,
            "files": dict(sorted(self.files.items())),
            "inputs": list(self.inputs),
            "outputs": list(self.outputs),
            "config": self.config,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PartitionSpec:
        return cls(
            id=str(data["id"]),
            target=str(data["target"]),
            device=str(data["device"]),
            entry=str(data["entry"]),
            files={str(k): str(v) for k, v in data["files"].items()},
            inputs=tuple(data["inputs"]),
            outputs=tuple(data["outputs"]),
            config=dict(data.get("config", {})),
        )


@dataclass(frozen=True)
class PlanSpec:
    """One way to run the model: a subset of the partitions, for the input shapes in ``when``.

    ``when`` maps an input name to ``{axis (as a string): {"min": int, "max": int}}``; a plan
    matches a call when every listed axis of the call's inputs lies in its range. The runtime
    takes the first plan that matches; the last plan of an artifact has an empty ``when``.
    """

    id: str
    partitions: tuple[str, ...]
    when: dict[str, dict[str, dict[str, int]]] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"id": self.id, "partitions": list(self.partitions), "when": self.when}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PlanSpec:
        return cls(
            id=str(data["id"]),
            partitions=tuple(str(p) for p in data["partitions"]),
            when={
                str(name): {str(axis): dict(rng) for axis, rng in axes.items()}
                for name, axes in dict(data.get("when", {})).items()
            },
        )


@dataclass(frozen=True)
class Manifest:
    """What an artifact holds and how to run it."""

    inputs: tuple[TensorSpec, ...]
    outputs: tuple[TensorSpec, ...]
    partitions: tuple[PartitionSpec, ...]
    """In dependency order: a partition only consumes model inputs or earlier outputs."""
    compile_options: dict[str, Any]
    toolchain: dict[str, str]
    source: dict[str, Any]
    format_version: int = FORMAT_VERSION
    kind: str = "model"
    """``model`` (tensors in, tensors out) or ``causal-lm`` (run by ``ai_vmm.runtime.llm``)."""
    plans: tuple[PlanSpec, ...] = ()
    """Shape-bucketed plans (see ``PlanSpec``); empty: one plan of every partition in order."""
    assets: dict[str, str] = field(default_factory=dict)
    """Hashed files that belong to no partition (relative path -> sha256), e.g. a tokenizer."""
    llm: dict[str, Any] = field(default_factory=dict)
    """For ``causal-lm`` artifacts: what ``ai_vmm.runtime.llm`` needs (it owns this schema)."""

    def routing(self) -> list[dict[str, Any]]:
        """Where each tensor crossing a partition boundary comes from and goes to."""
        producer = {spec.name: "input" for spec in self.inputs}
        for part in self.partitions:
            for name in part.outputs:
                producer[name] = part.id
        routes: dict[str, dict[str, Any]] = {}
        for part in self.partitions:
            for name in part.inputs:
                route = routes.setdefault(
                    name, {"tensor": name, "from": producer.get(name, "?"), "to": []}
                )
                route["to"].append(part.id)
        for spec in self.outputs:
            route = routes.setdefault(
                spec.name, {"tensor": spec.name, "from": producer.get(spec.name, "?"), "to": []}
            )
            route["to"].append("output")
        return [routes[k] for k in sorted(routes)]

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "format": FORMAT_NAME,
            "format_version": self.format_version,
            "inputs": [s.to_json() for s in self.inputs],
            "outputs": [s.to_json() for s in self.outputs],
            "partitions": [p.to_json() for p in self.partitions],
            "routing": self.routing(),
            "compile_options": self.compile_options,
            "toolchain": dict(sorted(self.toolchain.items())),
            "source": self.source,
        }
        # Optional fields stay out of the JSON when unused, so older manifests keep their bytes.
        if self.kind != "model":
            data["kind"] = self.kind
        if self.plans:
            data["plans"] = [p.to_json() for p in self.plans]
        if self.assets:
            data["assets"] = dict(sorted(self.assets.items()))
        if self.llm:
            data["llm"] = self.llm
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Manifest:
        if data.get("format") != FORMAT_NAME:
            raise ArtifactError("manifest.json is not an ai-vmm manifest (no 'format' marker)")
        version = data.get("format_version")
        if not isinstance(version, int):
            raise ArtifactError("manifest.json has no integer 'format_version'")
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"artifact format version {version} is newer than this runtime supports "
                f"({FORMAT_VERSION}); upgrade ai-vmm or recompile the model with this version"
            )
        try:
            return cls(
                inputs=tuple(TensorSpec.from_json(d) for d in data["inputs"]),
                outputs=tuple(TensorSpec.from_json(d) for d in data["outputs"]),
                partitions=tuple(PartitionSpec.from_json(d) for d in data["partitions"]),
                compile_options=dict(data.get("compile_options", {})),
                toolchain=dict(data.get("toolchain", {})),
                source=dict(data.get("source", {})),
                format_version=version,
                kind=str(data.get("kind", "model")),
                plans=tuple(PlanSpec.from_json(d) for d in data.get("plans", [])),
                assets={str(k): str(v) for k, v in dict(data.get("assets", {})).items()},
                llm=dict(data.get("llm", {})),
            )
        except (KeyError, TypeError, AttributeError) as exc:
            raise ArtifactError(f"manifest.json is malformed: missing or bad field {exc}") from exc


def dumps_json(data: Any) -> bytes:
    """The one JSON encoding used for artifact files: sorted keys, stable, ends with a newline."""
    return (json.dumps(data, indent=2, sort_keys=True, ensure_ascii=False) + "\n").encode()


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@contextlib.contextmanager
def staged_directory(destination: Path) -> Iterator[Path]:
    """Yield an empty temporary directory that becomes ``destination`` on success.

    The staging directory is a sibling of the destination (same filesystem, so the final rename
    is atomic). On any exception it is removed and the destination is left untouched.
    """
    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", dir=destination.parent))
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    replace_path(stage, destination)


def replace_path(source: Path, destination: Path) -> None:
    """Move ``source`` (a file or directory) onto ``destination``, replacing what is there."""
    if destination.exists() or destination.is_symlink():
        trash = Path(tempfile.mkdtemp(prefix=f".{destination.name}.old.", dir=destination.parent))
        os.replace(destination, trash / "old")
        os.replace(source, destination)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        os.replace(source, destination)


def write_zip(directory: Path, zip_path: Path) -> None:
    """Pack an artifact directory into one deterministic zip file (fixed timestamps, sorted)."""
    tmp = zip_path.with_name(f".{zip_path.name}.part")
    try:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as archive:
            for path in sorted(p for p in directory.rglob("*") if p.is_file()):
                info = zipfile.ZipInfo(
                    path.relative_to(directory).as_posix(), (1980, 1, 1, 0, 0, 0)
                )
                info.compress_type = zipfile.ZIP_DEFLATED
                info.external_attr = 0o644 << 16
                archive.writestr(info, path.read_bytes())
        os.replace(tmp, zip_path)
    finally:
        tmp.unlink(missing_ok=True)


def write_artifact(
    out_path: Path, manifest: Manifest, report: dict[str, Any], payloads: dict[str, Path]
) -> None:
    """Write an artifact: each partition's payload directory, ``manifest.json``, ``report.json``.

    ``payloads`` maps a partition id to the directory holding its files, copied to ``ID/``.
    ``out_path`` ending in ``.zip`` gives the zip form (``NAME.vmm.zip``), else a directory.
    The directory is staged next to its destination and renamed into place, so a failure
    leaves nothing half-written.
    """
    out_path = Path(out_path)
    as_zip = out_path.suffix == ".zip"
    directory = out_path.with_suffix("") if as_zip else out_path
    with staged_directory(directory) as stage:
        for part_id, payload_dir in payloads.items():
            shutil.copytree(payload_dir, stage / part_id)
        (stage / MANIFEST).write_bytes(dumps_json(manifest.to_json()))
        (stage / REPORT).write_bytes(dumps_json(report))
    if as_zip:
        try:
            write_zip(directory, out_path)
        finally:
            shutil.rmtree(directory, ignore_errors=True)


def read_manifest(root: Path) -> Manifest:
    path = root / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{root} is not an ai-vmm artifact: it has no {MANIFEST}")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({exc.__class__.__name__}: {exc})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{path} does not hold a JSON object")
    return Manifest.from_json(data)


def verify_payloads(root: Path, manifest: Manifest) -> None:
    """Check that every payload file is present and has the sha256 the manifest records."""
    for part in manifest.partitions:
        for rel, expected in part.files.items():
            path = root / rel
            if not path.is_file():
                raise ArtifactError(
                    f"payload {rel} of partition {part.id} is missing from {root}; recompile"
                )
            if sha256_file(path) != expected:
                raise ArtifactError(
                    f"payload {rel} of partition {part.id} was changed after compile "
                    f"(sha256 mismatch); recompile the model or restore the file"
                )
    for rel, expected in manifest.assets.items():
        path = root / rel
        if not path.is_file():
            raise ArtifactError(f"asset {rel} is missing from {root}; recompile")
        if sha256_file(path) != expected:
            raise ArtifactError(
                f"asset {rel} was changed after compile (sha256 mismatch); recompile the model "
                f"or restore the file"
            )


def read_report(root: Path) -> dict[str, Any]:
    path = root / REPORT
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"{path} is not valid JSON: {exc}") from exc
    return data if isinstance(data, dict) else {}
