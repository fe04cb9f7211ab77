"""The device scheduler: which models are loaded where, within each device's memory budget.

Every model version of the repository has an entry here with a state (``UNLOADED``,
``LOADING``, ``READY``, ``FAILED``). Loading charges the model's footprint (per replica) to the
devices it runs on; when a device's budget would be exceeded, the least recently used models
there that are neither pinned nor in use are evicted first, and if that is not enough the load
fails with a message naming the budget. A model that fails to load is ``FAILED`` (not ready),
its requests get 503, and the server carries on. ``lazy`` models load on their first request.

Placement is written for N devices: a model asks for ``replicas`` per device in ``devices``,
or (``replicas = "auto"`` or device keys) for one deployment over several devices, deploy's
replica set (docs/parallel.md), whose kept replicas each become a worker. Every worker pulls
from the model's one queue; ``snapshot`` shows each worker's device and deploy's decision.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

from ai_vmm.runtime.errors import VmmError
from ai_vmm.serve import backend
from ai_vmm.serve.admission import Rejected
from ai_vmm.serve.batching import BatchStats, DynamicBatcher, Replica
from ai_vmm.serve.generation import Generator
from ai_vmm.serve.repository import ModelSpec, Repository

UNLOADED, LOADING, READY, FAILED = "UNLOADED", "LOADING", "READY", "FAILED"


@dataclass(eq=False)
class ServedModel:
    """One model version and what is loaded of it."""

    spec: ModelSpec
    state: str = UNLOADED
    reason: str = ""
    batcher: DynamicBatcher | None = None
    generator: Generator | None = None
    memory: dict[str, int] = field(default_factory=dict)
    """Bytes charged per device, all replicas together."""
    signature: Any = None
    """The first replica's loaded model (inputs/outputs for metadata)."""
    last_used: float = 0.0
    users: int = 0
    loaded: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def name(self) -> str:
        return self.spec.name

    @property
    def version(self) -> str:
        return self.spec.version

    @property
    def replicas(self) -> int:
        if self.batcher is not None:
            return len(self.batcher.replicas)
        return 1 if self.generator is not None else 0


class ModelManager:
    """Loads, evicts and hands out the repository's models."""

    def __init__(
        self,
        repository: Repository,
        on_batch: Callable[[BatchStats], None] | None = None,
        load: Callable[..., Any] = backend.load_model,
    ) -> None:
        self.repository = repository
        self.budgets = dict(repository.config.resources.budgets)
        self._on_batch = on_batch
        self._load = load
        self._lock = asyncio.Lock()
        self.evictions = 0
        self.models: dict[str, dict[str, ServedModel]] = {}
        for spec in repository.models:
            self.models.setdefault(spec.name, {})[spec.version] = ServedModel(spec)

    async def start(self) -> None:
        """Load every ``eager`` model, one at a time (failures are recorded, not raised)."""
        for versions in self.models.values():
            for served in versions.values():
                if served.spec.config.load == "eager":
                    await self.load(served)

    def find(self, name: str, version: str | None = None) -> ServedModel:
        """The entry of ``name`` (its newest version when ``version`` is empty).

        Raises:
            Rejected: 404 for an unknown model or version.
        """
        versions = self.models.get(name)
        if not versions:
            raise Rejected(404, "model_not_found", f"model '{name}' is not in the repository")
        if not version:
            return versions[max(versions, key=lambda v: int(v) if v.isdigit() else -1)]
        if version not in versions:
            raise Rejected(
                404, "version_not_found", f"model '{name}' has no version '{version}' here"
            )
        return versions[version]

    @contextlib.asynccontextmanager
    async def use(self, name: str, version: str | None = None) -> AsyncIterator[ServedModel]:
        """A ready model for the duration of one request (loading a lazy model if need be).

        Raises:
            Rejected: 404 unknown, 503 (with Retry-After) when it failed to load.
        """
        served = self.find(name, version)
        if served.state == UNLOADED:
            # Lazy, or evicted: load it on demand; the caller waits for the load.
            await self.load(served)
        if served.state == LOADING:
            # Another request started the load: wait for it rather than refuse.
            await served.loaded.wait()
        if served.state != READY:
            raise Rejected(
                503,
                "model_not_ready",
                f"model '{name}' is not ready: {served.reason or served.state.lower()}",
                retry_after=30.0,
            )
        served.users += 1
        served.last_used = time.monotonic()
        try:
            yield served
        finally:
            served.users -= 1
            served.last_used = time.monotonic()

    async def load(self, served: ServedModel) -> None:
        """Load ``served`` (its replicas), evicting idle LRU models to fit the budgets."""
        async with self._lock:
            if served.state in (READY, LOADING):
                return
            served.state, served.reason = LOADING, ""
            served.loaded.clear()
            config = served.spec.config
            devices: list[str | None] = list(config.placement.devices) or [None]
            loop = asyncio.get_running_loop()
            loaded: list[Any] = []
            try:
                for device in devices:
                    for _ in range(config.placement.copies):
                        # Load one replica, then check its charge before loading the next.
                        load = functools.partial(
                            self._load,
                            served.spec.source,
                            kind=served.spec.kind,
                            constraints=config.deploy_constraints(),
                            device=device,
                        )
                        model = await loop.run_in_executor(None, load)
                        workers = getattr(model, "workers", None)
                        parts = workers() if callable(workers) else [model]
                        loaded += parts
                        for part in parts:
                            charge = _charge(part, config.placement.memory_bytes)
                            await self._make_room(charge, served)
                            for key, size in charge.items():
                                served.memory[key] = served.memory.get(key, 0) + size
                self._start(served, loaded)
                served.state = READY
                served.last_used = time.monotonic()
            except Exception as exc:  # whatever breaks a load breaks that model, not the server
                for model in loaded:
                    with contextlib.suppress(Exception):
                        model.close()
                served.memory = {}
                served.state = FAILED
                if isinstance(exc, Rejected):
                    served.reason = exc.message
                elif isinstance(exc, VmmError):
                    served.reason = str(exc)
                else:
                    served.reason = f"{type(exc).__name__}: {' '.join(str(exc).split())}"
            finally:
                served.loaded.set()

    def _start(self, served: ServedModel, loaded: list[Any]) -> None:
        config = served.spec.config
        served.signature = loaded[0]
        if served.spec.kind == "causal-lm":
            if len(loaded) != 1:
                raise ValueError(
                    f"model '{served.name}': one replica of a causal LM per server for now"
                )
            served.generator = Generator(
                served.name,
                loaded[0],
                config.generation,
                dict(self.repository.config.classes),
            )
            served.generator.start()
            return
        batcher = DynamicBatcher(
            served.name,
            [Replica(model, i) for i, model in enumerate(loaded)],
            config.batching,
            dict(self.repository.config.classes),
            self._on_batch,
            service_quantile=self.repository.config.server.admission_quantile,
        )
        if config.batching.max_batch and not batcher.batches:
            raise ValueError(
                f"model '{served.name}' has batching.max_batch = {config.batching.max_batch} "
                "but its inputs do not share a dynamic axis 0 (or an output's axis 0 is fixed); "
                "set max_batch = 0"
            )
        batcher.start()
        served.batcher = batcher

    async def unload(self, served: ServedModel) -> None:
        """Drain and release ``served`` (it loads again on its next request)."""
        batcher, generator = served.batcher, served.generator
        served.batcher, served.generator, served.signature = None, None, None
        served.state, served.memory = UNLOADED, {}
        served.loaded.clear()
        if batcher is not None:
            await batcher.close()
        if generator is not None:
            await generator.close()

    async def _make_room(self, charge: dict[str, int], for_model: ServedModel) -> None:
        for device, size in charge.items():
            budget = self._budget(device)
            if budget is None:
                continue
            while self._charged(device) + size > budget:
                victim = self._lru_victim(device, for_model)
                if victim is None:
                    raise Rejected(
                        507,
                        "memory_budget",
                        f"model '{for_model.name}' needs {size / 2**20:.1f} MiB on {device}; its "
                        f"budget is {budget / 2**20:.1f} MiB and "
                        f"{self._charged(device) / 2**20:.1f} MiB are held by pinned or busy "
                        "models",
                    )
                self.evictions += 1
                await self.unload(victim)

    def _budget(self, device: str) -> int | None:
        if device in self.budgets:
            return self.budgets[device]
        return self.budgets.get(device.split(":", 1)[-1])

    def _charged(self, device: str) -> int:
        bare = device.split(":", 1)[-1]
        key_is_bare = device not in self.budgets
        total = 0
        for served in self._all():
            for key, size in served.memory.items():
                if key == device or (key_is_bare and key.split(":", 1)[-1] == bare):
                    total += size
        return total

    def _lru_victim(self, device: str, for_model: ServedModel) -> ServedModel | None:
        bare = device.split(":", 1)[-1]
        candidates = [
            s
            for s in self._all()
            if s is not for_model
            and s.state == READY
            and not s.spec.config.pinned
            and s.users == 0
            and any(k == device or k.split(":", 1)[-1] == bare for k in s.memory)
        ]
        return min(candidates, key=lambda s: s.last_used) if candidates else None

    def _all(self) -> list[ServedModel]:
        return [s for versions in self.models.values() for s in versions.values()]

    @property
    def starting(self) -> bool:
        return any(s.state == LOADING for s in self._all())

    def snapshot(self) -> dict[str, Any]:
        """The allocation, for ``/v2/repository/index``, the admin endpoint and the metrics."""
        models = []
        for served in self._all():
            queue = served.batcher.queued_by_class() if served.batcher is not None else {}
            models.append(
                {
                    "name": served.name,
                    "version": served.version,
                    "state": served.state,
                    "reason": served.reason,
                    "kind": served.spec.kind,
                    "pinned": served.spec.config.pinned,
                    "replicas": served.replicas,
                    "devices": _devices(served),
                    "memory": dict(served.memory),
                    "queued": queue,
                    "in_use": served.users,
                }
            )
            if served.generator is not None:
                models[-1]["engine"] = served.generator.engine_stats()
            decision = _replica_set(served)
            if decision is not None:
                models[-1]["replica_set"] = decision
        devices: dict[str, dict[str, Any]] = {}
        for served in self._all():
            for key in served.memory:
                devices.setdefault(key, {})
        for key in self.budgets:
            devices.setdefault(key, {})
        for key, info in devices.items():
            info["budget"] = self._budget(key)
            info["charged"] = self._charged(key)
        return {"models": models, "devices": devices, "evictions": self.evictions}

    async def close(self) -> None:
        for served in self._all():
            if served.state == READY:
                await self.unload(served)


def _devices(served: ServedModel) -> list[str]:
    """Where each replica (batcher worker) of ``served`` runs, in order."""
    if served.batcher is not None:
        return [str(getattr(r.model, "device", "")) for r in served.batcher.replicas]
    if served.generator is not None and served.signature is not None:
        return [str(getattr(served.signature, "device", ""))]
    return []


def _replica_set(served: ServedModel) -> dict[str, Any] | None:
    """Deploy's replica decision for ``served`` (kept, pruned, why, measured), if it has one."""
    describe = getattr(served.signature, "replica_set", None)
    return describe() if callable(describe) else None


def _charge(model: Any, override: int | None) -> dict[str, int]:
    memory = dict(getattr(model, "memory", {}) or {})
    if override is not None:
        device = next(iter(memory), getattr(model, "device", "CPU"))
        return {device: override}
    return memory


__all__ = ["FAILED", "LOADING", "READY", "UNLOADED", "ModelManager", "ServedModel"]
