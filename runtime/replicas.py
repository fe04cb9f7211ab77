"""Replicas across devices: one model on several devices at once, requests spread over them.

A ``ReplicaSet`` holds one loaded copy of a model per device (an artifact compiled for the
GPU and one for the CPU beside it; CPU, iGPU and NPU artifacts on a laptop; or any objects with
``run(dict) -> dict``) and runs a stream of requests on all of them at once:

- **Proportional dispatch.** Each replica keeps its own queue. A new request goes to the
  replica where it is expected to finish first: ``(work queued or running there + this
  request) x that replica's seconds per request / its workers``. At saturation every queue
  holds about the same number of seconds of work, so requests spread in proportion to each
  replica's throughput. Seconds per request are measured on the replica itself (a moving
  average of its recent calls, per unit of ``cost``); ``calibrate`` measures them up front.
- **Work stealing.** A replica whose queue is empty takes the newest request from the replica
  with the most queued work, provided it would finish that request sooner than its owner
  would. So no device idles while another has a queue, except where taking the request would
  only make it later (a slow CPU does not take the last request from a fast GPU that will be
  free in a moment).
- **Never below the best device, measured.** Devices that share a resource (two CPU targets
  on the same cores) can be slower together than the best of them alone; stealing cannot see
  that. ``prune`` measures the set against its fastest replica alone and keeps only that one
  when the set does not beat it (docs/parallel.md, from ``scripts/bench_parallel.py
  --sections replicas``: two CPU targets' ResNet replicas on a 2-core Xeon).
- **Order where asked.** ``map(feeds, ordered=True)`` yields results in submission order;
  ``submit`` returns a ``concurrent.futures.Future`` per request.
- **Failures.** A request whose replica fails with anything but an ``InputError`` (a device
  lost, a closed model) is rerouted to another replica, which it has not tried yet, and the
  failing replica is taken out of the rotation (``enable`` puts it back); an ``InputError`` (the
  request's own fault) goes back to the caller. No request is dropped while a replica is left.

The set looks like a ``CompiledModel`` (``run``, ``__call__``, ``inputs``, ``outputs``,
``manifest``, ``close``, a context manager), so a ``Deployment`` or a server can hold one where
it holds a model. Written for any number of devices; each replica runs ``workers`` requests at
a time (one by default: one call at a time keeps a device's own threads to itself).
"""

from __future__ import annotations

import statistics
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from ai_vmm.runtime.errors import ArtifactError, InputError, VmmError
from ai_vmm.runtime.replica_signatures import check_signatures, shared_checker

EWMA = 0.2
"""Weight of the newest call in a replica's seconds-per-request average."""


class Runnable(Protocol):
    """What a replica runs: numpy arrays by name in, numpy arrays by name out."""

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]: ...


@dataclass(eq=False)
class _Job:
    inputs: Mapping[str, Any]
    cost: float
    future: Future[dict[str, Any]]
    submitted: float
    tried: set[int] = field(default_factory=set)


@dataclass(eq=False)
class _Replica:
    index: int
    name: str
    model: Any
    workers: int
    seconds: float | None
    """Seconds per unit of cost (measured); ``None`` until the first call or ``calibrate``."""
    queue: deque[_Job] = field(default_factory=deque)
    queued_cost: float = 0.0
    running_cost: float = 0.0
    enabled: bool = True
    reason: str = ""
    completed: int = 0
    failed: int = 0
    stolen: int = 0
    busy_s: float = 0.0
    threads: list[threading.Thread] = field(default_factory=list)


class ReplicaSet:
    """Copies of one model on several devices, run as one model.

    Args:
        replicas: the loaded models, one per device (anything with ``run(dict) -> dict``;
            ``CompiledModel`` and ``PipelinedModel`` included), or ``(name, model)`` pairs.
        names: a label per replica (default: the model's devices from its manifest, e.g.
            ``openvino:CPU``, or ``replica<i>``); labels must be unique.
        workers: requests each replica runs at a time (one number, or one per replica).
        seconds_per_request: known service times by name, to start from (else measured).
        max_attempts: replicas a request may try before its error goes back to the caller.

    Raises:
        ArtifactError: no replicas, duplicate names, or replicas whose inputs disagree.
    """

    def __init__(
        self,
        replicas: Sequence[Runnable | tuple[str, Runnable]],
        *,
        names: Sequence[str] | None = None,
        workers: int | Sequence[int] = 1,
        seconds_per_request: Mapping[str, float] | None = None,
        max_attempts: int = 2,
    ) -> None:
        if not replicas:
            raise ArtifactError("a replica set needs at least one replica")
        pairs = [r if isinstance(r, tuple) else (None, r) for r in replicas]
        labels = list(names) if names is not None else [n or _label(m) for n, m in pairs]
        if len(labels) != len(pairs):
            raise ArtifactError(f"{len(labels)} names for {len(pairs)} replicas")
        for i, label in enumerate(labels):
            if labels.count(label) > 1:
                labels[i] = f"{label}#{labels[:i].count(label)}"
        counts = [workers] * len(pairs) if isinstance(workers, int) else list(workers)
        if len(counts) != len(pairs) or any(c < 1 for c in counts):
            raise ArtifactError("workers must be a positive number per replica")
        known = dict(seconds_per_request or {})
        self._replicas = [
            _Replica(i, label, model, count, known.get(label))
            for i, ((_, model), label, count) in enumerate(zip(pairs, labels, counts, strict=True))
        ]
        check_signatures([(r.name, r.model) for r in self._replicas])
        self.max_attempts = max(1, int(max_attempts))
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._closing = False
        self._submitted = 0
        first = self._replicas[0].model
        self._checker = shared_checker([r.model for r in self._replicas])
        self.manifest = getattr(first, "manifest", None)
        for replica in self._replicas:
            for w in range(replica.workers):
                thread = threading.Thread(
                    target=self._work,
                    args=(replica,),
                    name=f"ai-vmm-replica-{replica.name}-{w}",
                    daemon=True,
                )
                replica.threads.append(thread)
                thread.start()

    @classmethod
    def load(cls, artifacts: Sequence[str | Path], **kwargs: Any) -> ReplicaSet:
        """Load one artifact per device (``ai_vmm.runtime.load``) into a replica set.

        Raises:
            ArtifactError, DeviceError: an artifact cannot be loaded here (those loaded are
                closed again).
        """
        from ai_vmm.runtime.model import load

        loaded: list[Any] = []
        try:
            for path in artifacts:
                loaded.append(load(path))
            return cls(loaded, **kwargs)
        except BaseException:
            for model in loaded:
                model.close()
            raise

    # -- what a CompiledModel has ---------------------------------------------------------------

    @property
    def inputs(self) -> Any:
        return getattr(self._replicas[0].model, "inputs", ())

    @property
    def outputs(self) -> Any:
        return getattr(self._replicas[0].model, "outputs", ())

    @property
    def names(self) -> list[str]:
        """The replicas' labels, in order."""
        return [r.name for r in self._replicas]

    @property
    def members(self) -> list[tuple[str, Any]]:
        """The replicas in the rotation: ``(name, model)`` pairs, in order (serve's backend
        makes a worker of each)."""
        with self._lock:
            return [(r.name, r.model) for r in self._replicas if r.enabled]

    @property
    def capacity(self) -> int:
        """Requests the enabled replicas run at once (what a caller should keep in flight,
        at least, to saturate the set)."""
        return sum(r.workers for r in self._replicas if r.enabled)

    def report(self) -> dict[str, Any]:
        """Each replica's own report (when it has one), by name."""
        return {r.name: r.model.report() for r in self._replicas if hasattr(r.model, "report")}

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        return self.run(inputs)

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Run one request on whichever replica is expected to finish it first; wait for it."""
        return self.submit(inputs).result()

    # -- the stream API ----------------------------------------------------------------------

    def submit(self, inputs: Mapping[str, Any], *, cost: float = 1.0) -> Future[dict[str, Any]]:
        """Queue one request; its future resolves to the outputs by name.

        Args:
            inputs: the request's arrays by name (checked here: a bad request raises at once).
            cost: the request's size relative to others (e.g. its batch rows): what the
                set's expected-finish arithmetic scales the measured seconds by.

        Raises:
            InputError: the inputs do not fit the model's signature.
            ArtifactError: the set is closed, or every replica is out of the rotation.
        """
        checked = self._checker(inputs) if self._checker is not None else inputs
        future: Future[dict[str, Any]] = Future()
        job = _Job(checked, max(float(cost), 1e-9), future, time.perf_counter())
        with self._lock:
            if self._closing:
                raise ArtifactError("the replica set was closed")
            target = self._choose(job)
            if target is None:
                raise ArtifactError(f"no replica can take the request: {self._down_reasons()}")
            self._enqueue(target, job)
            self._submitted += 1
        return future

    def map(
        self,
        feeds: Iterable[Mapping[str, Any]],
        *,
        ordered: bool = True,
        window: int | None = None,
    ) -> Iterator[dict[str, Any]]:
        """Run every feed, at most ``window`` in flight (default: twice the capacity).

        With ``ordered`` the outputs come in the order of ``feeds``; otherwise as they finish.
        A failed request raises its error when its turn comes.
        """
        limit = window or 2 * max(1, self.capacity)
        pending: deque[Future[dict[str, Any]]] = deque()
        done: deque[Future[dict[str, Any]]] = deque()
        finished = threading.Condition()

        def landed(future: Future[dict[str, Any]]) -> None:
            with finished:
                done.append(future)
                finished.notify()

        def take_one() -> dict[str, Any]:
            if ordered:
                return pending.popleft().result()
            with finished:
                while not done:
                    finished.wait()
                future = done.popleft()
            pending.remove(future)
            return future.result()

        for feed in feeds:
            if len(pending) >= limit:
                yield take_one()
            future = self.submit(feed)
            if not ordered:
                future.add_done_callback(landed)
            pending.append(future)
        while pending:
            yield take_one()

    def calibrate(self, sample: Mapping[str, Any], seconds: float = 0.5) -> dict[str, float]:
        """Measure each replica alone on ``sample`` (one at a time); requests per second.

        The measured seconds per request replace the running estimates, so the first
        requests of a stream are already spread in proportion.
        """
        checked = self._checker(sample) if self._checker is not None else sample
        rates: dict[str, float] = {}
        for replica in self._replicas:
            if not replica.enabled:
                continue
            replica.model.run(checked)  # warm-up
            calls, start = 0, time.perf_counter()
            while calls < 3 or time.perf_counter() - start < seconds / len(self._replicas):
                replica.model.run(checked)
                calls += 1
            per_call = (time.perf_counter() - start) / calls
            with self._lock:
                replica.seconds = per_call
            rates[replica.name] = replica.workers / per_call
        return rates

    def prune(
        self,
        sample: Mapping[str, Any],
        seconds: float = 1.0,
        rounds: int = 2,
        margin: float = 0.03,
        alone: Mapping[str, Runnable] | None = None,
    ) -> dict[str, Any]:
        """Keep the set only where it beats its best replica alone, measured.

        Replicas on devices that share a resource (two CPU targets on the same cores, a GPU
        fed by a busy CPU) can run slower together than the best of them alone. This
        saturates the set with ``sample`` requests, with each enabled replica alone and then
        with all of them, ``rounds`` interleaved times; when the whole set is not at least
        ``margin`` faster in the median than its fastest replica alone, the other replicas
        leave the rotation (``stats`` gives the reason). Returns the medians (requests/s) and
        the decision.

        ``alone``: by replica name, the model that device would run on its own, where that
        differs from its replica (a CPU replica holds back threads for its neighbours; alone
        it would use every core). Each replica is measured alone with it, and the fastest
        keeps it when the set is pruned. Copies of one device (``DEVICE#K``, ``device_of``)
        are measured and kept together: "alone" is the device with all its copies, and the
        figures are keyed by device.
        """
        enabled = [r for r in self._replicas if r.enabled]
        groups: dict[str, list[_Replica]] = {}
        for replica in enabled:  # copies of one device (``cuda:0``, ``cuda:0#1``) go together
            groups.setdefault(device_of(replica.name), []).append(replica)
        if len(groups) < 2:
            return {"kept": [r.name for r in enabled], "pruned": []}
        models = {r.name: (r.model, (alone or {}).get(r.name, r.model)) for r in enabled}
        window = seconds / ((len(groups) + 1) * rounds)
        solo: dict[str, list[float]] = {device: [] for device in groups}
        together: list[float] = []
        for _ in range(rounds):
            for device, members in groups.items():  # each device alone, as it would run alone
                for other in enabled:
                    self.enable(other.name, other in members)
                for member in members:  # nothing is in flight between windows
                    member.model = models[member.name][1]
                solo[device].append(self._saturate(sample, window))
                for member in members:
                    member.model = models[member.name][0]
            for replica in enabled:
                self.enable(replica.name, True)
            together.append(self._saturate(sample, window))
        best = max(groups, key=lambda device: statistics.median(solo[device]))
        others = [r for r in enabled if r not in groups[best]]
        best_alone, whole = statistics.median(solo[best]), statistics.median(together)
        decision: dict[str, Any] = {
            "alone": {device: round(statistics.median(v), 2) for device, v in solo.items()},
            "best_alone": {best: round(best_alone, 2)},
            "together": round(whole, 2),
            "kept": [r.name for r in enabled],
            "pruned": [],
        }
        if whole < best_alone * (1 + margin):
            why = (
                f"adds no capacity: {whole:.1f} requests/s together against {best_alone:.1f} "
                f"with {best} alone"
            )
            with self._lock:
                for replica in others:
                    replica.enabled, replica.reason = False, why
                    self._requeue_all(replica)
                for member in groups[best]:
                    shared, solo_model = models[member.name]
                    if solo_model is not shared:  # measured again from its calls
                        member.model, member.seconds = solo_model, None
                self._wake.notify_all()
            decision.update(kept=[r.name for r in groups[best]], pruned=[r.name for r in others])
        return decision

    def _saturate(self, sample: Mapping[str, Any], seconds: float) -> float:
        """Requests per second of the set with enough requests in flight to keep it busy."""
        depth = 2 * self.capacity + 1
        done = 0
        start = time.perf_counter()
        pending: deque[Future[dict[str, Any]]] = deque(self.submit(sample) for _ in range(depth))
        while time.perf_counter() - start < seconds:
            pending.popleft().result()
            done += 1
            pending.append(self.submit(sample))
        elapsed = time.perf_counter() - start
        for future in pending:
            future.result()
        return done / elapsed

    def enable(self, name: str, enabled: bool = True) -> None:
        """Put a replica back into the rotation (or take it out: its queue moves elsewhere)."""
        with self._lock:
            replica = self._by_name(name)
            replica.enabled, replica.reason = enabled, "" if enabled else "disabled by the caller"
            if not enabled:
                self._requeue_all(replica)
            self._wake.notify_all()

    def stats(self) -> dict[str, Any]:
        """Per replica: calls done, failures, stolen requests, queue, busy time, measured
        requests per second, the share of requests it would get now, whether it is in use."""
        with self._lock:
            rates = {
                r.name: (r.workers / r.seconds if r.seconds else None)
                for r in self._replicas
                if r.enabled
            }
            total = sum(v for v in rates.values() if v)
            return {
                "submitted": self._submitted,
                "replicas": [
                    {
                        "name": r.name,
                        "enabled": r.enabled,
                        "reason": r.reason,
                        "workers": r.workers,
                        "completed": r.completed,
                        "failed": r.failed,
                        "stolen": r.stolen,
                        "queued": len(r.queue),
                        "busy_s": round(r.busy_s, 6),
                        "seconds_per_request": r.seconds,
                        "requests_per_s": rates.get(r.name),
                        "share": (rates.get(r.name) or 0.0) / total if total else None,
                    }
                    for r in self._replicas
                ],
            }

    def close(self, close_models: bool = True) -> None:
        """Finish the queued requests, stop the workers and close the models. Idempotent."""
        with self._lock:
            already = self._closing
            self._closing = True
            self._wake.notify_all()
        if already:
            return
        for replica in self._replicas:
            for thread in replica.threads:
                thread.join()
        if close_models:
            for replica in self._replicas:
                close = getattr(replica.model, "close", None)
                if close is not None:
                    close()

    def __enter__(self) -> ReplicaSet:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- scheduling (called with the lock held) ------------------------------------------------

    def _finish_estimate(self, replica: _Replica, extra: float) -> float:
        """When ``replica`` would finish ``extra`` more cost, from now (seconds, estimated)."""
        seconds = replica.seconds if replica.seconds is not None else self._prior()
        return (replica.queued_cost + replica.running_cost + extra) * seconds / replica.workers

    def _prior(self) -> float:
        """Seconds per request for a replica not measured yet: the fastest measured one, so a
        new replica gets tried early (its first call measures it)."""
        known = [r.seconds for r in self._replicas if r.seconds is not None]
        return min(known) if known else 1.0

    def _choose(self, job: _Job) -> _Replica | None:
        candidates = [r for r in self._replicas if r.enabled and r.index not in job.tried]
        if not candidates:
            return None
        return min(candidates, key=lambda r: (self._finish_estimate(r, job.cost), r.index))

    def _enqueue(self, replica: _Replica, job: _Job) -> None:
        replica.queue.append(job)
        replica.queued_cost += job.cost
        self._wake.notify_all()

    def _take(self, replica: _Replica) -> _Job | None:
        """The next job for ``replica``: its own queue's head, else one worth stealing."""
        if replica.queue:
            job = replica.queue.popleft()
            replica.queued_cost -= job.cost
            return job
        mine = replica.seconds if replica.seconds is not None else self._prior()
        best: tuple[float, _Replica] | None = None
        for other in self._replicas:
            if other is replica or not other.queue:
                continue
            job = other.queue[-1]
            if replica.index in job.tried:
                continue
            # The owner would finish its newest request after everything ahead of it.
            theirs = self._finish_estimate(other, 0.0)
            gain = theirs - mine * job.cost
            if gain > 0 and (best is None or gain > best[0]):
                best = (gain, other)
        if best is None:
            return None
        victim = best[1]
        job = victim.queue.pop()
        victim.queued_cost -= job.cost
        replica.stolen += 1
        return job

    def _requeue_all(self, replica: _Replica) -> None:
        while replica.queue:
            job = replica.queue.popleft()
            replica.queued_cost -= job.cost
            self._reroute(job, f"{replica.name} left the rotation")

    def _reroute(self, job: _Job, why: str) -> bool:
        target = self._choose(job) if len(job.tried) < self.max_attempts else None
        if target is None:
            if not job.future.done():
                job.future.set_exception(
                    ArtifactError(
                        f"no replica left for the request ({why}; {self._down_reasons()})"
                    )
                )
            return False
        self._enqueue(target, job)
        return True

    def _down_reasons(self) -> str:
        down = [f"{r.name}: {r.reason}" for r in self._replicas if not r.enabled]
        return "; ".join(down) if down else "every replica was tried"

    def _by_name(self, name: str) -> _Replica:
        for replica in self._replicas:
            if replica.name == name:
                return replica
        raise ArtifactError(f"no replica named {name!r} (replicas: {', '.join(self.names)})")

    # -- the workers ---------------------------------------------------------------------------

    def _work(self, replica: _Replica) -> None:
        while True:
            with self._lock:
                while True:
                    job = self._take(replica) if replica.enabled else None
                    if job is not None:
                        break
                    if self._closing and not any(r.queue for r in self._replicas):
                        return
                    self._wake.wait()
                replica.running_cost += job.cost
            # A rerouted request's future is running already (since its first attempt).
            if not job.tried and not job.future.set_running_or_notify_cancel():
                with self._lock:
                    replica.running_cost -= job.cost
                continue
            self._run(replica, job)

    def _run(self, replica: _Replica, job: _Job) -> None:
        job.tried.add(replica.index)
        started = time.perf_counter()
        try:
            outputs = replica.model.run(job.inputs)
        except BaseException as exc:
            with self._lock:
                replica.running_cost -= job.cost
                replica.failed += 1
                if isinstance(exc, InputError) or not isinstance(exc, Exception):
                    job.future.set_exception(exc)
                else:
                    # The device, not the request: out of the rotation, the request elsewhere.
                    replica.enabled = False
                    replica.reason = _one_line(exc)
                    self._requeue_all(replica)
                    self._reroute(job, f"{replica.name} failed: {replica.reason}")
                self._wake.notify_all()
            return
        elapsed = time.perf_counter() - started
        with self._lock:
            replica.running_cost -= job.cost
            replica.completed += 1
            replica.busy_s += elapsed
            per_unit = elapsed / job.cost
            replica.seconds = (
                per_unit
                if replica.seconds is None
                else (1 - EWMA) * replica.seconds + EWMA * per_unit
            )
            self._wake.notify_all()
        job.future.set_result(outputs)


COPY_MARK = "#"
"""Replica names ``DEVICE#K`` are further copies of ``DEVICE`` (each its own executor: a GPU
fed by one thread waits on the host at every call; two copies overlap one's host work with
the other's GPU work). ``prune`` measures a device with all its copies."""


def device_of(name: str) -> str:
    """The device a replica name belongs to (``cuda:0#1`` -> ``cuda:0``)."""
    return name.split(COPY_MARK, 1)[0]


def cpu_replica_threads(
    cores: int, cpu_replicas: int, accelerators: int, spare: int = 0
) -> int | None:
    """Threads of each CPU replica in a set on one CPU: the cores split between the CPU
    replicas after a core for each accelerator replica's feeding thread (launches, copies;
    bench_parallel: CPU replicas at every core starved a GPU's feeding thread) and ``spare``
    more for the caller's own threads. ``None`` where a lone CPU replica has nothing beside it
    (it keeps its own threads)."""
    if cpu_replicas == 0 or (cpu_replicas == 1 and accelerators == 0):
        return None
    return max(1, (cores - accelerators - spare) // cpu_replicas)


def _label(model: Any) -> str:
    manifest = getattr(model, "manifest", None)
    parts = getattr(manifest, "partitions", None)
    if parts:
        return "+".join(dict.fromkeys(f"{p.target}:{p.device}" for p in parts))
    return str(getattr(model, "device", "") or "replica")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{exc.__class__.__name__}: {text[:200]}" if text else exc.__class__.__name__


__all__ = ["COPY_MARK", "ReplicaSet", "Runnable", "VmmError", "device_of"]
