"""Reading ``NAME.vmm.zip`` artifacts: validate first, unpack only hashed files, leave nothing.

A zip is untrusted input. Its ``manifest.json`` is read and validated before anything is
written to the disk; then only the files the manifest lists with a sha256 (plus ``report.json``)
are unpacked, each checked against its hash as it is written, under ``$TMPDIR`` in a directory
this process holds locked. The directory goes when the model is closed, garbage-collected or the
interpreter exits; a rejected zip leaves nothing; a process killed meanwhile leaves a directory
the next unpack sweeps (``ai_vmm.runtime.staging``).
"""

from __future__ import annotations

import hashlib
import shutil
import struct
import tempfile
import weakref
import zipfile
import zlib
from pathlib import Path
from typing import Any

from ai_vmm.runtime.artifact import (
    MANIFEST,
    MAX_MANIFEST_BYTES,
    REPORT,
    Manifest,
    hashed_files,
    parse_manifest,
)
from ai_vmm.runtime.errors import ArtifactError
from ai_vmm.runtime.staging import (
    UNPACK_PREFIX,
    HeldDirectory,
    hold_new_directory,
    os_error_text,
    sweep_stale,
)

MAX_REPORT_BYTES = 64 << 20
"""A larger ``report.json`` in a zip is skipped (reports are kilobytes to a few megabytes)."""

# What zipfile and zlib raise on a damaged or hostile archive.
_ZIP_ERRORS = (
    zipfile.BadZipFile,
    zipfile.LargeZipFile,
    zlib.error,
    NotImplementedError,  # an unsupported compression method
    RuntimeError,  # an encrypted member
    EOFError,
    ValueError,
    struct.error,
    OverflowError,
)


class Unpacked:
    """A zip artifact unpacked under ``$TMPDIR``; ``cleanup()`` removes it (idempotent)."""

    def __init__(self, held: HeldDirectory) -> None:
        self.path = held.path
        self._finalizer = weakref.finalize(self, _remove, held)

    def cleanup(self) -> None:
        self._finalizer()

    @property
    def removed(self) -> bool:
        return not self._finalizer.alive


def _remove(held: HeldDirectory) -> None:
    held.release()
    shutil.rmtree(held.path, ignore_errors=True)


def _open(path: Path) -> zipfile.ZipFile:
    if not zipfile.is_zipfile(path):
        raise ArtifactError(f"{path} is neither an artifact directory nor an artifact zip file")
    try:
        return zipfile.ZipFile(path)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {os_error_text(exc)}") from exc
    except _ZIP_ERRORS as exc:
        raise ArtifactError(f"{path} is a corrupt zip file: {_one_line(exc)}") from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(f"{exc.__class__.__name__}: {exc}".split())[:200]


def _member(archive: zipfile.ZipFile, name: str, path: Path) -> zipfile.ZipInfo:
    try:
        return archive.getinfo(name)
    except KeyError:
        raise ArtifactError(
            f"{path} is not a complete ai-vmm artifact: it has no {name}; recompile"
        ) from None


def _read_member(archive: zipfile.ZipFile, info: zipfile.ZipInfo, path: Path, limit: int) -> bytes:
    if info.file_size > limit:
        raise ArtifactError(f"{path}: {info.filename} is larger than any ai-vmm writes")
    try:
        return archive.read(info)
    except OSError as exc:
        raise ArtifactError(f"cannot read {path}: {os_error_text(exc)}") from exc
    except _ZIP_ERRORS as exc:
        raise ArtifactError(f"{path} is a corrupt zip file: {_one_line(exc)}") from exc


def read_zip_artifact(path: str | Path) -> tuple[Manifest, dict[str, Any]]:
    """The validated manifest and the report of a zip artifact, without unpacking anything.

    Raises:
        ArtifactError: the zip is damaged, or its manifest or report is invalid.
    """
    import json

    path = Path(path)
    with _open(path) as archive:
        raw = _read_member(archive, _member(archive, MANIFEST, path), path, MAX_MANIFEST_BYTES)
        manifest = parse_manifest(raw, f"{path}:{MANIFEST}")
        report: dict[str, Any] = {}
        if REPORT in archive.namelist():
            text = _read_member(archive, archive.getinfo(REPORT), path, MAX_REPORT_BYTES)
            try:
                loaded = json.loads(text.decode("utf-8"))
            except (ValueError, RecursionError) as exc:
                raise ArtifactError(
                    f"{path}:{REPORT} is not valid JSON ({_one_line(exc)})"
                ) from exc
            report = loaded if isinstance(loaded, dict) else {}
    return manifest, report


def unpack_zip(path: str | Path) -> tuple[Unpacked, Manifest]:
    """Validate a zip artifact and unpack its hashed files (each checked) under ``$TMPDIR``.

    Raises:
        ArtifactError: the zip is damaged, its manifest invalid, a file missing or changed, or
            there is no room to unpack it. Nothing is left on the disk then.
    """
    path = Path(path)
    with _open(path) as archive:
        raw = _read_member(archive, _member(archive, MANIFEST, path), path, MAX_MANIFEST_BYTES)
        manifest = parse_manifest(raw, f"{path}:{MANIFEST}")
        wanted = hashed_files(manifest)
        members = {rel: _member(archive, rel, path) for rel in wanted}
        names = set(archive.namelist())
        report = archive.getinfo(REPORT) if REPORT in names else None
        if report is not None and report.file_size > MAX_REPORT_BYTES:
            report = None
        parent = Path(tempfile.gettempdir())
        needed = sum(info.file_size for info in members.values()) + len(raw)
        free = shutil.disk_usage(parent).free
        if needed > free:
            raise ArtifactError(
                f"{path} needs {needed / 1e6:.1f} MB to unpack and {parent} has "
                f"{free / 1e6:.1f} MB free; free some space or unpack it with unzip and load "
                f"the directory"
            )
        sweep_stale(parent, (UNPACK_PREFIX,))
        try:
            held = hold_new_directory(parent, UNPACK_PREFIX)
        except OSError as exc:
            raise ArtifactError(f"cannot unpack {path}: {os_error_text(exc)}") from exc
        unpacked = Unpacked(held)
        try:
            (held.path / MANIFEST).write_bytes(raw)
            for rel, info in members.items():
                _extract_checked(archive, info, held.path / rel, wanted[rel], path)
            if report is not None:
                _extract_checked(archive, report, held.path / REPORT, None, path)
        except ArtifactError:
            unpacked.cleanup()
            raise
        except OSError as exc:
            unpacked.cleanup()
            raise ArtifactError(
                f"cannot unpack {path} into {held.path}: {os_error_text(exc)}"
            ) from exc
        except _ZIP_ERRORS as exc:
            unpacked.cleanup()
            raise ArtifactError(f"{path} is a corrupt zip file: {_one_line(exc)}") from exc
        except BaseException:
            unpacked.cleanup()
            raise
    return unpacked, manifest


def _extract_checked(
    archive: zipfile.ZipFile,
    info: zipfile.ZipInfo,
    target: Path,
    expected: tuple[str, str] | None,
    path: Path,
) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    with archive.open(info) as source, open(target, "wb") as sink:
        for block in iter(lambda: source.read(1 << 20), b""):
            digest.update(block)
            sink.write(block)
    if expected is not None and digest.hexdigest() != expected[0]:
        raise ArtifactError(
            f"{expected[1]} in {path} was changed after compile (sha256 mismatch); recompile "
            f"the model or restore the file"
        )
