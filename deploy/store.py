"""The deployment store: compiled candidates and chosen deployments, kept across processes.

Layout under the store root (default ``~/.cache/ai-vmm/deployments``)::

    sources/<digest>.onnx             framework models (nn.Module, HF folder, TFLite ...) exported
                                      to ONNX once, keyed by the source's own digest
    builds/<model>-<hardware>/        one artifact per compiled candidate (device, precision),
        <candidate>.vmm               keyed by model hash + hardware fingerprint + options
    variants/<model>-<hardware>/      the same payloads (hard links) with a thread count set in
        <candidate>-t<N>.vmm          the manifest's executor config
    deployments/<key>/model.vmm       the chosen artifact and explanation.json, keyed by model
    deployments/<key>/explanation.json  hash + hardware fingerprint + constraints + samples
    deployments/<key>/replicas/       with the replicas constraint: the kept replicas' artifacts
    models/<name>.vmm                 "our artifact store": deployments saved under a name,
                                      found by ``VMM().deploy(name)``

A second ``deploy`` of the same model with the same constraints and samples on the same
machine finds ``deployments/<key>`` and loads it without compiling or measuring anything.
Writes are staged and renamed into place (``ai_vmm.runtime.artifact.staged_directory``), and
one deploy at a time works on a key (a file lock), so concurrent deploys never see half an entry.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import importlib.metadata
import json
import os
import shutil
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

from filelock import FileLock

from ai_vmm.runtime.artifact import (
    MANIFEST,
    PartitionSpec,
    dumps_json,
    is_artifact,
    read_manifest,
    staged_directory,
)
from ai_vmm.runtime.devices import Inventory
from ai_vmm.runtime.errors import ArtifactError

DEFAULT_ROOT = Path.home() / ".cache" / "ai-vmm" / "deployments"
EXPLANATION = "explanation.json"
# 2: LM builds time stateful against paged attention (OpenVINO); 3: cuda LM builds attend over
# cache windows and time Inductor decode steps against plain ones
STORE_FORMAT = 3
_VERSIONED = ("ai-vmm", "onnx", "onnxruntime", "openvino", "nncf", "torch", "transformers")


def digest(parts: Mapping[str, Any]) -> str:
    """A short sha256 of a JSON-ready mapping (sorted keys)."""
    return hashlib.sha256(dumps_json(dict(parts))).hexdigest()[:32]


@functools.lru_cache(maxsize=1)
def versions() -> dict[str, str]:
    """Versions of the libraries that shape a compiled artifact (read once per process)."""
    found = {}
    for name in _VERSIONED:
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def hardware_fingerprint(inventory: Inventory) -> dict[str, Any]:
    """What makes this machine's measurements and payloads its own (JSON-ready)."""
    cpu = inventory.cpu
    return {
        "cpu": [cpu.model, cpu.vendor, cpu.arch, cpu.physical_cores, cpu.logical_cores],
        "isa": list(cpu.isa),
        "memory_gib": round(cpu.memory_bytes / 2**30),
        "devices": sorted(d.key for d in inventory.devices),
        "gpus": [[g.name, g.memory_bytes, g.compute_capability] for g in inventory.gpus],
        "libraries": dict(sorted(inventory.libraries.items())),
    }


class DeploymentStore:
    """Compiled candidates, chosen deployments and named artifacts under one root."""

    def __init__(self, root: str | Path | None = None) -> None:
        self.root = Path(root) if root is not None else DEFAULT_ROOT

    def path(self, *parts: str) -> Path:
        return self.root.joinpath(*parts)

    @contextlib.contextmanager
    def locked(self, key: str) -> Iterator[None]:
        """Hold the lock of ``key``: another deploy of the same key waits, then reuses."""
        locks = self.path("locks")
        locks.mkdir(parents=True, exist_ok=True)
        with FileLock(str(locks / f"{key}.lock")):
            yield

    def decision(self, key: str) -> tuple[Path, dict[str, Any]] | None:
        """The chosen artifact and explanation stored under ``key``, if complete."""
        entry = self.path("deployments", key)
        artifact = entry / "model.vmm"
        try:
            explanation = json.loads((entry / EXPLANATION).read_text())
        except (OSError, ValueError):
            return None
        if not isinstance(explanation, dict) or not is_artifact(artifact):
            return None
        return artifact, explanation

    def decision_path(self, key: str) -> Path:
        """Where the chosen artifact of ``key`` lives (``deployments/<key>/model.vmm``)."""
        return self.path("deployments", key, "model.vmm")

    def save_decision(
        self,
        key: str,
        artifact: Path,
        explanation: dict[str, Any],
        extra: Mapping[str, Path] | None = None,
    ) -> Path:
        """Store ``artifact`` (hard-linked) and its explanation under ``key``; the artifact path.

        ``extra``: more artifacts to keep in the entry, by their path under it (a replica
        set's devices: ``replicas/<device>.vmm``)."""
        entry = self.path("deployments", key)
        with staged_directory(entry) as tree:
            link_tree(artifact, tree / "model.vmm")
            for relative, source in (extra or {}).items():
                link_tree(source, tree / relative)
            (tree / EXPLANATION).write_bytes(dumps_json(explanation))
        return entry / "model.vmm"

    def named(self, name: str) -> Path:
        """Where a deployment saved under ``name`` lives (``models/<name>.vmm``)."""
        return self.path("models", safe_name(name) + ".vmm")

    def save_named(self, name: str, artifact: Path) -> Path:
        target = self.named(name)
        with staged_directory(target) as tree:
            link_tree(artifact, tree)
        return target


def safe_name(name: str) -> str:
    """A model ID as one path component: ``org/name`` -> ``org--name``."""
    cleaned = name.strip().replace("\\", "/").strip("/").replace("/", "--")
    return "".join(c if c.isalnum() or c in "-_.+" else "_" for c in cleaned) or "model"


def link_tree(source: Path, destination: Path) -> None:
    """Copy a directory tree, hard-linking payloads where the filesystem allows.

    JSON files (manifest, report) are always copied: a variant rewrites its manifest, and a
    hard link would rewrite the original's too.
    """

    def link(src: str, dst: str) -> None:
        if src.endswith(".json"):
            shutil.copy2(src, dst)
            return
        try:
            os.link(src, dst)
        except OSError:
            shutil.copy2(src, dst)

    shutil.copytree(source, destination, copy_function=link, dirs_exist_ok=True)


def derive_variant(source: Path, destination: Path, config: Mapping[str, Any]) -> Path:
    """``source`` with ``config`` merged into every CPU partition's executor config.

    The payloads are hard links (the manifest, which no hash covers, is rewritten), so a
    thread-count variant costs a few kilobytes. An existing intact variant is reused.

    Raises:
        ArtifactError: ``source`` is not a readable artifact.
    """
    if is_artifact(destination):
        return destination
    manifest = read_manifest(source)
    parts = tuple(_with_config(p, config) for p in manifest.partitions)
    data = replace(manifest, partitions=parts).to_json()
    try:
        with staged_directory(destination) as tree:
            link_tree(source, tree)
            (tree / MANIFEST).write_bytes(dumps_json(data))
    except OSError as exc:
        raise ArtifactError(f"cannot write {destination}: {exc}") from exc
    return destination


def _with_config(part: PartitionSpec, config: Mapping[str, Any]) -> PartitionSpec:
    if part.device.split(".")[0].upper() != "CPU":
        return part
    keys = THREAD_KEYS.get(part.target)
    if keys is None:
        return part
    merged = dict(part.config)
    for name, value in config.items():
        merged[keys if name == "threads" else name] = value
    return replace(part, config=merged)


THREAD_KEYS = {"openvino": "inference_num_threads", "onnxruntime": "intra_op_num_threads"}
"""The executor config key that sets a CPU payload's thread count, per target."""
