"""Pipelined execution of a partitioned artifact: consecutive requests overlap across stages.

``CompiledModel.run`` runs one request through every partition before the next request starts,
so while partition 2 runs, the device of partition 1 idles. ``PipelinedModel`` gives every
partition (stage) its own thread and a bounded queue in front of it: stage k works on request n
while stage k+1 works on request n-1. At saturation a request leaves the pipeline every
``max(stage time)`` instead of every ``sum(stage times)``; a single request's latency stays
about the same (plus a queue hand-off per stage).

- Stages are the manifest's partitions in dependency order; a request carries its tensors from
  stage to stage (those no later stage or output needs are dropped on the way).
- Bounded queues (``depth`` requests in front of each stage): a full pipeline makes ``submit``
  wait (back-pressure) instead of piling requests up in memory.
- Partitions on the same device never run at the same time (a per-device lock), as in
  ``CompiledModel``: overlap comes only from different devices.
- Requests leave in the order they came (each stage is one thread, queues are FIFO).
- Threads: where several CPU stages share the host's cores, each stage's own thread pool
  would otherwise claim every core and the stages would fight over them. ``threads="auto"``
  gives each CPU partition ``cores // CPU stages`` threads (at least one); an int sets every
  CPU partition; a dict sets them by partition id; ``None`` keeps the artifact's settings.

The object looks like a ``CompiledModel`` (``run``, ``__call__``, ``inputs``, ``outputs``,
``manifest``, ``report``, ``close``, a context manager) and adds ``submit`` and ``map``, so a
``ReplicaSet`` or a ``Deployment`` can hold one.
"""

from __future__ import annotations

import os
import queue
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ai_vmm.runtime.artifact import (
    Manifest,
    PartitionSpec,
    TensorSpec,
    read_manifest,
    read_report,
    verify_payloads,
)
from ai_vmm.runtime.artifact_zip import Unpacked, unpack_zip
from ai_vmm.runtime.errors import ArtifactError
from ai_vmm.runtime.executors import Executor, create_executor
from ai_vmm.runtime.model import InputChecker, executor_config

_THREAD_KEYS = {"onnxruntime": "intra_op_num_threads", "openvino": "inference_num_threads"}
"""The partition config key that sets a CPU executor's thread count, per target."""

_STOP = object()


@dataclass(eq=False)
class _Request:
    values: dict[str, Any]
    future: Future[dict[str, Any]]
    submitted: float


@dataclass
class _StageStats:
    calls: int = 0
    busy_s: float = 0.0


class PipelinedModel:
    """A partitioned artifact whose partitions work on consecutive requests at the same time.

    Args:
        root: the artifact directory (for ``report``).
        manifest: its manifest.
        executors: one executor per partition id.
        depth: requests that may wait in front of each stage.
    """

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        executors: Mapping[str, Executor],
        *,
        depth: int = 2,
    ) -> None:
        if depth < 1:
            raise ArtifactError("pipeline depth must be at least 1")
        self.root = root
        self.manifest = manifest
        self.depth = depth
        self._unpacked: Unpacked | None = None
        self._executors = dict(executors)
        self._checker = InputChecker(manifest.inputs)
        self._outputs = tuple(spec.name for spec in manifest.outputs)
        parts = manifest.partitions
        # What each stage must pass on: the tensors a later stage or the caller still reads.
        self._keep: list[frozenset[str]] = []
        for k in range(len(parts)):
            later = {n for p in parts[k + 1 :] for n in p.inputs}
            self._keep.append(frozenset(later | set(self._outputs)))
        locks: dict[tuple[str, str], threading.Lock] = {}
        self._locks = [locks.setdefault((p.target, p.device), threading.Lock()) for p in parts]
        self._shared = [sum(1 for q in parts if (q.target, q.device) == (p.target, p.device)) > 1
                        for p in parts]  # fmt: skip
        self._queues: list[queue.Queue[Any]] = [queue.Queue(maxsize=depth) for _ in parts]
        self._stats = [_StageStats() for _ in parts]
        self._submit_lock = threading.Lock()
        self._closed = False
        self._threads = [
            threading.Thread(
                target=self._stage, args=(k,), name=f"ai-vmm-stage-{p.id}", daemon=True
            )
            for k, p in enumerate(parts)
        ]
        for thread in self._threads:
            thread.start()

    @classmethod
    def load(
        cls,
        path: str | Path,
        *,
        depth: int = 2,
        threads: int | str | Mapping[str, int] | None = "auto",
    ) -> PipelinedModel:
        """Load an artifact (directory or zip) for pipelined execution.

        Args:
            path: the artifact.
            depth: requests that may wait in front of each stage.
            threads: threads per CPU partition: ``"auto"`` (share the cores between the CPU
                stages), a number for every CPU partition, ``{partition id: n}``, or ``None``
                (the artifact's own settings).

        Raises:
            ArtifactError: the artifact is missing, corrupt, or not a tensor model.
            DeviceError: a device it needs is not present.
        """
        root = Path(path)
        if not root.exists():
            raise ArtifactError(f"artifact {root} does not exist")
        unpacked: Unpacked | None = None
        if root.is_file():
            unpacked, manifest = unpack_zip(root)
            root = unpacked.path
        else:
            manifest = read_manifest(root)
            verify_payloads(root, manifest)
        try:
            if manifest.kind != "model":
                raise ArtifactError(
                    f"{path}: a {manifest.kind} artifact cannot be pipelined (tensor models only)"
                )
            counts = stage_threads(manifest, threads)
            executors = {
                part.id: create_executor(
                    part.target,
                    root / part.entry,
                    part.device,
                    thread_config(executor_config(manifest, part), part, counts.get(part.id)),
                    part.outputs,
                )
                for part in manifest.partitions
            }
            model = cls(root, manifest, executors, depth=depth)
        except BaseException:
            if unpacked is not None:
                unpacked.cleanup()
            raise
        model._unpacked = unpacked
        return model

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.outputs

    @property
    def partitions(self) -> tuple[PartitionSpec, ...]:
        return self.manifest.partitions

    @property
    def capacity(self) -> int:
        """Requests in flight that keep every stage busy (one per stage)."""
        return len(self.manifest.partitions)

    def report(self) -> dict[str, Any]:
        """The artifact's ``report.json``."""
        return read_report(self.root)

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        return self.run(inputs)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run one request through the pipeline and wait for its outputs."""
        return self.submit(inputs).result()

    def submit(self, inputs: Mapping[str, Any]) -> Future[dict[str, Any]]:
        """Start one request; its future resolves to the outputs by name.

        Waits while the first stage's queue is full (back-pressure).

        Raises:
            InputError: the inputs do not fit the signature (raised here, at once).
            ArtifactError: the model was closed.
        """
        values = dict(self._checker(inputs))
        future: Future[dict[str, Any]] = Future()
        future.set_running_or_notify_cancel()
        with self._submit_lock:
            if self._closed:
                raise ArtifactError(f"the model loaded from {self.root} was closed; load it again")
            self._queues[0].put(_Request(values, future, time.perf_counter()))
        return future

    def map(
        self, feeds: Iterable[Mapping[str, Any]], *, window: int | None = None
    ) -> Iterator[dict[str, Any]]:
        """Run every feed with up to ``window`` in flight (default: enough to fill every stage
        and its queue); outputs in the order of ``feeds``."""
        limit = window or (self.depth + 1) * len(self.manifest.partitions)
        pending: deque[Future[dict[str, Any]]] = deque()
        for feed in feeds:
            if len(pending) >= limit:
                yield pending.popleft().result()
            pending.append(self.submit(feed))
        while pending:
            yield pending.popleft().result()

    def stats(self) -> list[dict[str, Any]]:
        """Per stage: partition, device, calls, busy seconds, mean ms per call."""
        rows = []
        for part, stats in zip(self.manifest.partitions, self._stats, strict=True):
            rows.append(
                {
                    "partition": part.id,
                    "device": f"{part.target}:{part.device}",
                    "calls": stats.calls,
                    "busy_s": round(stats.busy_s, 6),
                    "mean_ms": round(stats.busy_s / stats.calls * 1000, 4) if stats.calls else None,
                }
            )
        return rows

    def close(self) -> None:
        """Finish the requests in flight, stop the stages, release the backends. Idempotent."""
        with self._submit_lock:
            if self._closed:
                return
            self._closed = True
            self._queues[0].put(_STOP)
        for thread in self._threads:
            thread.join()
        self._executors = {}
        if self._unpacked is not None:
            self._unpacked.cleanup()

    def __enter__(self) -> PipelinedModel:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _stage(self, k: int) -> None:
        part = self.manifest.partitions[k]
        executor = self._executors[part.id]
        inbox = self._queues[k]
        outbox = self._queues[k + 1] if k + 1 < len(self._queues) else None
        keep, lock, stats = self._keep[k], self._locks[k], self._stats[k]
        shared = self._shared[k]
        while True:
            item = inbox.get()
            if item is _STOP:
                if outbox is not None:
                    outbox.put(_STOP)
                return
            request: _Request = item
            feed = {name: request.values[name] for name in part.inputs}
            start = time.perf_counter()
            try:
                if shared:
                    with lock:
                        produced = executor.run(feed)
                else:
                    produced = executor.run(feed)
            except BaseException as exc:
                request.future.set_exception(exc)
                continue
            stats.calls += 1
            stats.busy_s += time.perf_counter() - start
            values = request.values
            values.update(produced)
            if outbox is None:
                request.future.set_result({name: values[name] for name in self._outputs})
                continue
            for name in [n for n in values if n not in keep]:
                del values[name]
            outbox.put(request)


def stage_threads(
    manifest: Manifest, threads: int | str | Mapping[str, int] | None
) -> dict[str, int]:
    """Threads per partition id for pipelined execution (see the module docstring).

    Raises:
        ArtifactError: ``threads`` is not ``"auto"``, a positive number, a dict or ``None``.
    """
    cpu = [p for p in manifest.partitions if p.device == "CPU" and p.target in _THREAD_KEYS]
    if threads is None:
        return {}
    if isinstance(threads, Mapping):
        return {str(k): int(v) for k, v in threads.items()}
    if threads == "auto":
        if len(cpu) < 2:
            return {}
        cores = os.cpu_count() or 1
        return {p.id: max(1, cores // len(cpu)) for p in cpu}
    if isinstance(threads, int) and threads > 0:
        return {p.id: threads for p in cpu}
    raise ArtifactError(f"threads must be 'auto', a positive number or a dict, not {threads!r}")


def thread_config(config: dict[str, Any], part: PartitionSpec, count: int | None) -> dict[str, Any]:
    """``config`` with ``part``'s CPU thread count set to ``count`` (unchanged for ``None`` or
    a target without a thread setting)."""
    key = _THREAD_KEYS.get(part.target)
    if count is None or key is None:
        return config
    return {**config, key: int(count)}


__all__ = ["PipelinedModel", "stage_threads", "thread_config"]
