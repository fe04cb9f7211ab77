"""The compile cache: finished artifacts keyed by source hash, options, toolchain and devices.

Entries are complete artifact directories, written into a uniquely named, locked staging
directory and renamed into place, so a reader never sees half an entry and a compile killed
mid-write leaves only a staging directory that a later compile sweeps. Compiles of the same key
take a file lock, so two concurrent compiles do the work once and the second is a cache hit.

The cache is an optimisation: a cache directory that cannot be created, read, locked or written
(read-only, full, on a broken mount) is a warning (``CacheWarning``), never a failed compile.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import os
import shutil
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

from ai_vmm.runtime.artifact import MANIFEST, dumps_json, read_manifest, verify_payloads
from ai_vmm.runtime.errors import ArtifactError
from ai_vmm.runtime.staging import (
    fsync_directory,
    fsync_tree,
    os_error_text,
    staging_directory,
    sweep_stale,
)

ENV_VAR = "AI_VMM_CACHE_DIR"
LOCK_TIMEOUT_S = 3600.0
"""How long a compile waits for another compile of the same key before going on uncached."""


class CacheWarning(UserWarning):
    """The compile cache could not be used; the compile goes on without it."""


def cache_root(explicit: str | Path | None) -> Path | None:
    """``--cache-dir`` if given, else ``$AI_VMM_CACHE_DIR`` if set, else no cache."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else None


def cache_key(parts: dict[str, Any]) -> str:
    """The key of a cache entry: ``parts`` (source digest, options, toolchain versions, ...) and
    the fingerprint of ai-vmm's own code, so that a changed compiler never serves what an
    earlier one built (the version number alone does not change between releases)."""
    return hashlib.sha256(dumps_json({**parts, "code": code_fingerprint()})).hexdigest()[:32]


@functools.cache
def code_fingerprint(package: Path | None = None) -> str:
    """A digest of every Python file of the ai-vmm package (``package``: its directory)."""
    if package is None:
        import ai_vmm

        package = Path(ai_vmm.__file__).parent
    root = package
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        try:
            digest.update(hashlib.sha256(path.read_bytes()).digest())
        except OSError:
            digest.update(b"unreadable")
    return digest.hexdigest()[:16]


def _warn(message: str) -> None:
    warnings.warn(" ".join(message.split()), CacheWarning, stacklevel=3)


class CompileCache:
    """A directory of finished artifacts, one per key.

    Never raises for filesystem trouble: a cache that cannot be used warns once and behaves as
    an empty cache that stores nothing.
    """

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.usable = True
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            self._disable(f"cannot create cache directory {self.root}: {os_error_text(exc)}")
            return
        sweep_stale(self.root)

    def _disable(self, reason: str) -> None:
        if self.usable:
            _warn(f"compile cache not used: {reason}")
        self.usable = False

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the lock of ``key`` (a compile of the same key elsewhere waits)."""
        if not self.usable:
            yield
            return
        lock = FileLock(str(self.root / f"{key}.lock"), timeout=LOCK_TIMEOUT_S)
        try:
            lock.acquire()
        except (OSError, Timeout) as exc:
            reason = os_error_text(exc) if isinstance(exc, OSError) else str(exc)
            self._disable(f"cannot lock {self.root / key}: {reason}")
            yield
            return
        try:
            yield
        finally:
            lock.release()

    def lookup(self, key: str) -> Path | None:
        """The cached artifact for ``key``, if present and intact."""
        if not self.usable:
            return None
        entry = self.root / key
        try:
            if not (entry / MANIFEST).is_file():
                return None
            verify_payloads(entry, read_manifest(entry))
        except (ArtifactError, OSError):
            # A damaged entry is dropped; the compile rebuilds it.
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return entry

    def store(self, key: str, artifact: Path) -> bool:
        """Copy a finished artifact directory into the cache under ``key``; False if not stored.

        A failure (full disk, read-only directory, ...) warns and leaves no partial entry.
        """
        if not self.usable:
            return False
        entry = self.root / key
        if entry.exists():
            return True
        try:
            with staging_directory(self.root) as stage:
                shutil.copytree(artifact, stage / "entry")
                fsync_tree(stage / "entry")
                try:
                    os.rename(stage / "entry", entry)
                except OSError:
                    if entry.is_dir():
                        return True  # another compile stored the same key meanwhile
                    raise
                fsync_directory(self.root)
        except OSError as exc:
            _warn(f"compile cache entry {key} not stored: {os_error_text(exc)}")
            return False
        return True
