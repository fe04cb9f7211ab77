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

from ai_vmm.runtime.artifact_schema import validate_manifest
from ai_vmm.runtime.errors import ArtifactError, CompileError
from ai_vmm.runtime.staging import (
    BUILD_PREFIX,
    STAGE_PREFIX,
    fsync_directory,
    fsync_tree,
    os_error_text,
    replace_path,
    staging_directory,
    sweep_stale,
)

FORMAT_NAME = "ai-vmm-artifact"
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
REPORT = "report.json"
MAX_MANIFEST_BYTES = 16 << 20
"""A manifest larger than this is not one of ours (they are a few kilobytes)."""

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
        """Where each tensor crossing a partition boundary comes from and goes to (per plan,
        for shape-bucketed artifacts: each route then names its plan)."""
        if not self.plans:
            return _routes(self.inputs, self.outputs, self.partitions)
        by_id = {part.id: part for part in self.partitions}
        routes = []
        for plan in self.plans:
            parts = tuple(by_id[p] for p in plan.partitions if p in by_id)
            routes += [{"plan": plan.id, **r} for r in _routes(self.inputs, self.outputs, parts)]
        return routes

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
        """Parse a manifest, validated first (``ai_vmm.runtime.artifact_schema``).

        Raises:
            ArtifactError: one line naming what is wrong (format, version, a field, a path).
        """
        if not isinstance(data, dict) or data.get("format") != FORMAT_NAME:
            raise ArtifactError("manifest.json is not an ai-vmm manifest (no 'format' marker)")
        version = data.get("format_version")
        if not isinstance(version, int) or isinstance(version, bool):
            raise ArtifactError("manifest.json has no integer 'format_version'")
        if version > FORMAT_VERSION:
            raise ArtifactError(
                f"artifact format version {version} is newer than this runtime supports "
                f"({FORMAT_VERSION}); upgrade ai-vmm or recompile the model with this version"
            )
        validate_manifest(data)
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


def _routes(
    inputs: tuple[TensorSpec, ...],
    outputs: tuple[TensorSpec, ...],
    partitions: tuple[PartitionSpec, ...],
) -> list[dict[str, Any]]:
    producer = {spec.name: "input" for spec in inputs}
    for part in partitions:
        for name in part.outputs:
            producer[name] = part.id
    routes: dict[str, dict[str, Any]] = {}
    for part in partitions:
        for name in part.inputs:
            route = routes.setdefault(
                name, {"tensor": name, "from": producer.get(name, "?"), "to": []}
            )
            route["to"].append(part.id)
    for spec in outputs:
        route = routes.setdefault(
            spec.name, {"tensor": spec.name, "from": producer.get(spec.name, "?"), "to": []}
        )
        route["to"].append("output")
    return [routes[k] for k in sorted(routes)]


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

    The staging directory is a uniquely named hidden sibling of the destination (same
    filesystem, so the final rename is atomic). On any exception it is removed and the
    destination is left untouched.
    """
    destination = Path(destination)
    with staging_directory(destination.parent) as stage:
        tree = stage / "artifact"
        tree.mkdir()
        yield tree
        _land(tree, destination, stage)


def write_zip(directory: Path, zip_path: Path) -> None:
    """Pack an artifact directory into one deterministic zip file (fixed timestamps, sorted).

    The zip is written inside a unique staging directory next to ``zip_path``, flushed to the
    disk and renamed into place: readers see the old file or the new one, never half of one.
    """
    zip_path = Path(zip_path)
    with staging_directory(zip_path.parent) as stage:
        _zip_into(Path(directory), stage / "artifact.zip")
        _replace_synced(stage / "artifact.zip", zip_path)


def _zip_into(directory: Path, target: Path) -> None:
    with zipfile.ZipFile(target, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        for path in sorted(p for p in directory.rglob("*") if p.is_file()):
            info = zipfile.ZipInfo(path.relative_to(directory).as_posix(), (1980, 1, 1, 0, 0, 0))
            info.compress_type = zipfile.ZIP_DEFLATED
            info.external_attr = 0o644 << 16
            archive.writestr(info, path.read_bytes())


def _replace_synced(source: Path, destination: Path) -> None:
    fsync_tree(source)
    replace_path(source, destination)
    fsync_directory(destination.parent)


def _land(tree: Path, out_path: Path, stage: Path) -> None:
    """Move a finished artifact directory to ``out_path`` (zipped first for ``.zip``)."""
    if out_path.suffix == ".zip":
        _zip_into(tree, stage / "artifact.zip")
        _replace_synced(stage / "artifact.zip", out_path)
    else:
        _replace_synced(tree, out_path)


def write_artifact(
    out_path: Path, manifest: Manifest, report: dict[str, Any], payloads: dict[str, Path]
) -> None:
    """Write an artifact: each partition's payload directory, ``manifest.json``, ``report.json``.

    ``payloads`` maps a partition id to the directory holding its files, copied to ``ID/``.
    ``out_path`` ending in ``.zip`` gives the zip form (``NAME.vmm.zip``), else a directory.
    Everything is staged in a unique hidden sibling, flushed and renamed into place, so a
    failure leaves nothing half-written and concurrent writers never mix their files.

    Raises:
        CompileError: the artifact cannot be written (the message names the path and cause).
    """
    out_path = Path(out_path)
    try:
        with staged_directory(out_path) as tree:
            for part_id, payload_dir in payloads.items():
                shutil.copytree(payload_dir, tree / part_id)
            (tree / MANIFEST).write_bytes(dumps_json(manifest.to_json()))
            (tree / REPORT).write_bytes(dumps_json(report))
    except OSError as exc:
        raise CompileError(f"cannot write the artifact {out_path}: {os_error_text(exc)}") from exc


def copy_artifact(source: Path, out_path: Path) -> None:
    """Copy a finished artifact directory (a cache entry) to ``out_path`` (``.zip``: zipped).

    Raises:
        CompileError: the copy cannot be written (the message names the path and cause).
    """
    out_path = Path(out_path)
    try:
        with staging_directory(out_path.parent) as stage:
            shutil.copytree(source, stage / "artifact")
            _land(stage / "artifact", out_path, stage)
    except OSError as exc:
        raise CompileError(f"cannot write the artifact {out_path}: {os_error_text(exc)}") from exc


def is_artifact(path: Path) -> bool:
    """Whether ``path`` is an ai-vmm artifact (a directory or zip whose manifest says so)."""
    path = Path(path)
    try:
        if path.is_dir():
            manifest = path / MANIFEST
            if not manifest.is_file() or manifest.stat().st_size > MAX_MANIFEST_BYTES:
                return False
            data = json.loads(manifest.read_bytes())
        elif path.is_file() and zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo(MANIFEST)
                if info.file_size > MAX_MANIFEST_BYTES:
                    return False
                data = json.loads(archive.read(info))
        else:
            return False
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, RuntimeError, NotImplementedError):
        return False
    return isinstance(data, dict) and data.get("format") == FORMAT_NAME


def check_output_path(path: str | Path, force: bool = False) -> Path:
    """Check, before any compile work, that an artifact may be written at ``path``.

    Refuses (unless ``force``) to replace anything that is not an ai-vmm artifact: a regular
    file, a symbolic link, a non-empty directory without our manifest. Always refuses the
    current, home or root directory and their ancestors, and a path with no name (``-o .``).
    Checks that the nearest existing ancestor is a writable directory. Sweeps staging
    leftovers of killed compiles in the destination's directory.

    Raises:
        CompileError: one line naming the path and what is wrong with it.
    """
    path = Path(path)
    if path.name in ("", ".", ".."):
        raise CompileError(
            f"output '{path}' names a directory, not an artifact: give a new path such as "
            f"model.vmm or model.vmm.zip"
        )
    try:
        resolved = path.resolve()
        cwd = Path.cwd().resolve()
        protected = {Path(resolved.anchor), Path.home().resolve(), cwd, *cwd.parents}
    except (OSError, RuntimeError) as exc:
        raise CompileError(f"cannot use the output path {path}: {exc}") from exc
    if resolved in protected:
        raise CompileError(
            f"refusing to replace {path} ({resolved}): it is the current, home or root "
            f"directory or one above it; give a new path such as model.vmm"
        )
    _check_parent_writable(path)
    if path.is_symlink():
        if not force:
            raise CompileError(
                f"{path} is a symbolic link; not replacing it (use --force / force=True to "
                f"replace the link with the artifact)"
            )
    elif path.is_dir():
        if not force and not is_artifact(path) and _non_empty(path):
            raise CompileError(
                f"{path} is a directory that is not an ai-vmm artifact; not replacing it "
                f"(choose another -o path, or use --force / force=True to replace it)"
            )
    elif path.exists() and not force and not is_artifact(path):
        raise CompileError(
            f"{path} is a file that is not an ai-vmm artifact; not replacing it "
            f"(choose another -o path, or use --force / force=True to replace it)"
        )
    if path.parent.is_dir():
        sweep_stale(path.parent)
    # Work directories of killed compiles; a cache hit builds nothing, so sweep them here too.
    sweep_stale(Path(tempfile.gettempdir()), (BUILD_PREFIX,))
    return path


def _non_empty(directory: Path) -> bool:
    try:
        return any(directory.iterdir())
    except OSError:
        return True


def _check_parent_writable(path: Path) -> None:
    """The nearest existing ancestor of ``path`` must be a directory we can create files in."""
    ancestor = path.parent
    while not (ancestor.exists() or ancestor.is_symlink()):
        if ancestor.parent == ancestor:
            break
        ancestor = ancestor.parent
    if not ancestor.is_dir():
        raise CompileError(
            f"cannot write {path}: {ancestor} is a file, not a directory (choose another -o path)"
        )
    try:
        handle, probe = tempfile.mkstemp(prefix=STAGE_PREFIX, dir=ancestor)
        os.close(handle)
        os.unlink(probe)
    except OSError as exc:
        raise CompileError(f"cannot write {path}: {os_error_text(exc)}") from exc


def read_manifest(root: Path) -> Manifest:
    """The validated manifest of the artifact directory ``root``.

    Raises:
        ArtifactError: no manifest, an unreadable one, or one that fails validation.
    """
    path = Path(root) / MANIFEST
    if not path.is_file():
        raise ArtifactError(f"{root} is not an ai-vmm artifact: it has no {MANIFEST}")
    try:
        if path.stat().st_size > MAX_MANIFEST_BYTES:
            raise ArtifactError(f"{path} is larger than any manifest ai-vmm writes")
        raw = path.read_bytes()
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {os_error_text(exc)}") from exc
    return parse_manifest(raw, str(path))


def parse_manifest(raw: bytes, where: str) -> Manifest:
    """Parse and validate manifest bytes (``where`` names them in errors)."""
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, RecursionError) as exc:
        # ValueError covers JSONDecodeError and UnicodeDecodeError.
        raise ArtifactError(f"{where} is not valid JSON ({_reason(exc)})") from exc
    if not isinstance(data, dict):
        raise ArtifactError(f"{where} does not hold a JSON object")
    return Manifest.from_json(data)


def hashed_files(manifest: Manifest) -> dict[str, tuple[str, str]]:
    """Every file the artifact may read: relative path -> (sha256, what it is for)."""
    files: dict[str, tuple[str, str]] = {}
    for part in manifest.partitions:
        for rel, digest in part.files.items():
            files[rel] = (digest, f"payload {rel} of partition {part.id}")
    for rel, digest in manifest.assets.items():
        files.setdefault(rel, (digest, f"asset {rel}"))
    return files


def verify_payloads(root: Path, manifest: Manifest) -> None:
    """Check that every payload file is present and has the sha256 the manifest records.

    Raises:
        ArtifactError: a file is missing, unreadable or changed after compile.
    """
    for rel, (expected, what) in hashed_files(manifest).items():
        path = Path(root) / rel
        if not path.is_file():
            raise ArtifactError(f"{what} is missing from {root}; recompile")
        try:
            actual = sha256_file(path)
        except OSError as exc:
            raise ArtifactError(f"cannot read {what}: {os_error_text(exc)}") from exc
        if actual != expected:
            raise ArtifactError(
                f"{what} was changed after compile (sha256 mismatch); recompile the model "
                f"or restore the file"
            )


def read_report(root: Path) -> dict[str, Any]:
    """The artifact's ``report.json`` (``{}`` when there is none).

    Raises:
        ArtifactError: the report is unreadable, not UTF-8 or not JSON.
    """
    path = Path(root) / REPORT
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {os_error_text(exc)}") from exc
    except (ValueError, RecursionError) as exc:
        raise ArtifactError(f"{path} is not valid JSON ({_reason(exc)})") from exc
    return data if isinstance(data, dict) else {}


def _reason(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text[:160]}"
