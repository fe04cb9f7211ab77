"""The compile cache: finished artifacts keyed by source hash, options, toolchain and devices.

Entries are complete artifact directories, written to a temporary sibling and renamed into place,
so a reader never sees half an entry. Compiles of the same key take a file lock, so two concurrent
compiles do the work once and the second is a cache hit.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from filelock import FileLock

from ai_vmm.runtime.artifact import MANIFEST, dumps_json, read_manifest, verify_payloads
from ai_vmm.runtime.errors import ArtifactError

ENV_VAR = "AI_VMM_CACHE_DIR"


def cache_root(explicit: str | Path | None) -> Path | None:
    """``--cache-dir`` if given, else ``$AI_VMM_CACHE_DIR`` if set, else no cache."""
    if explicit:
        return Path(explicit)
    env = os.environ.get(ENV_VAR)
    return Path(env) if env else None


def cache_key(parts: dict[str, Any]) -> str:
    return hashlib.sha256(dumps_json(parts)).hexdigest()[:32]


class CompileCache:
    """A directory of finished artifacts, one per key."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the lock of ``key`` (a compile of the same key elsewhere waits)."""
        with FileLock(str(self.root / f"{key}.lock")):
            yield

    def lookup(self, key: str) -> Path | None:
        """The cached artifact for ``key``, if present and intact."""
        entry = self.root / key
        if not (entry / MANIFEST).is_file():
            return None
        try:
            verify_payloads(entry, read_manifest(entry))
        except ArtifactError:
            shutil.rmtree(entry, ignore_errors=True)
            return None
        return entry

    def store(self, key: str, artifact: Path) -> None:
        """Copy a finished artifact directory into the cache under ``key``."""
        entry = self.root / key
        if entry.exists():
            return
        stage = Path(tempfile.mkdtemp(prefix=f".{key}.", dir=self.root))
        try:
            shutil.copytree(artifact, stage / "a")
            os.replace(stage / "a", entry)
        finally:
            shutil.rmtree(stage, ignore_errors=True)
