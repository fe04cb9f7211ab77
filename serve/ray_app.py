"""``ai_vmm.serve`` as a Ray Serve application: the same app, replicated over a Ray cluster.

    from ai_vmm.serve.ray_app import ray_application
    from ray import serve

    serve.run(ray_application("/shared/models", num_replicas=2), route_prefix="/")

Each Ray Serve replica runs the whole serving app of ``ai_vmm.serve.create_app`` (KServe v2 and
OpenAI protocols, tenants, admission, batching, metrics) on its own node, built there from the
repository path: artifacts travel through a path every node sees (a shared filesystem), and each
replica deploys them with ``VMM().deploy``, so every node picks the devices it has. Ray's proxy
spreads requests over the replicas (its power-of-two-choices router on ongoing requests),
retries a request on another replica when the one it picked has died before taking it, and
restarts dead replicas. ``autoscaling`` scales replicas on ongoing requests (Ray's
``target_ongoing_requests``). Within a replica the repository's models load lazily and are
evicted LRU under the memory budgets of ``serve.toml``, as in ``vmmc serve``; with
``models_per_replica`` requests are multiplexed by model id (``Multiplexed``).

``ray`` is an optional extra (``pip install ai-vmm[ray]``); nothing here is imported by the
rest of ``ai_vmm.serve``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ai_vmm.runtime.errors import DeviceError


def build_app(
    repository: str, config: dict[str, Any] | None = None, models_per_replica: int = 0
) -> Any:
    """The ASGI app of one replica (called on the replica's node, by Ray).

    With ``models_per_replica`` the app is wrapped by ``Multiplexed``.
    """
    from ai_vmm.serve.app import create_app

    app = create_app(repository, config=config)
    return Multiplexed(app, models_per_replica) if models_per_replica else app


class Multiplexed:
    """Model multiplexing by model id on Ray Serve's terms, around the serving app.

    A request that names its model in the ``serve_multiplexed_model_id`` header (the header
    Ray's proxy reads) is routed by Ray to a replica that served that model recently; here
    each such request registers its model id with ``serve.multiplexed``, which is how a
    replica tells Ray's router which models it holds (up to ``models_per_replica``, least
    recently used out). The model itself loads, lazily, in the replica's own ``ModelManager``
    (its memory budgets and LRU eviction). Every response carries ``x-ai-vmm-replica``, the
    replica that answered.
    """

    def __init__(self, app: Any, models_per_replica: int) -> None:
        from ray import serve

        self.app = app

        @serve.multiplexed(max_num_models_per_replica=models_per_replica)
        async def held(model_id: str) -> str:
            return model_id

        self._held = held
        self._replica = b""

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        from ray import serve

        if not self._replica:
            self._replica = serve.get_replica_context().replica_id.unique_id.encode()
        model_id = serve.get_multiplexed_model_id()
        if model_id:
            await self._held(model_id)

        async def tagged(message: Any) -> None:
            if message["type"] == "http.response.start":
                headers = list(message.get("headers", []))
                headers.append((b"x-ai-vmm-replica", self._replica))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, tagged)


def ray_application(
    repository: str | Path,
    *,
    config: dict[str, Any] | None = None,
    name: str = "ai_vmm",
    num_replicas: int = 2,
    autoscaling: dict[str, Any] | None = None,
    max_ongoing_requests: int = 64,
    ray_actor_options: dict[str, Any] | None = None,
    models_per_replica: int = 0,
) -> Any:
    """A Ray Serve application serving ``repository`` (``serve.run`` it, or ``serve deploy``).

    Args:
        repository: the model repository, at a path every node of the cluster can read.
        config: a serve config to use instead of the repository's ``serve.toml``.
        name: the deployment's name.
        num_replicas: replicas when not autoscaling.
        autoscaling: Ray Serve's autoscaling config, e.g. ``{"min_replicas": 1,
            "max_replicas": 4, "target_ongoing_requests": 8}``; replaces ``num_replicas``.
        max_ongoing_requests: requests one replica takes at once (Ray queues the rest; the
            app's own admission control still answers 429/503 when its queues are full).
        ray_actor_options: resources per replica (``{"num_cpus": 1, "num_gpus": 1}``).
        models_per_replica: multiplex by model id (``Multiplexed``): requests whose
            ``serve_multiplexed_model_id`` header names a model go to replicas that hold it,
            each replica holding up to this many; 0 leaves routing to load alone.

    Raises:
        DeviceError: Ray Serve is not installed (``pip install ai-vmm[ray]``).
    """
    try:
        from ray import serve
    except ImportError as exc:
        raise DeviceError(
            f"Ray Serve is not installed here (pip install 'ai-vmm[ray]'): {exc}"
        ) from exc
    root = str(Path(repository).resolve())

    # A plain function (Ray tells a builder from an ASGI app with ``inspect.isfunction``),
    # pickled with the deployment and called on each replica.
    def builder() -> Any:
        return build_app(root, config, models_per_replica)

    options: dict[str, Any] = {
        "name": name,
        "max_ongoing_requests": max_ongoing_requests,
        "ray_actor_options": ray_actor_options or {"num_cpus": 0},
        # The app drains in-flight requests on shutdown (its lifespan); give it the time.
        "graceful_shutdown_timeout_s": 30,
    }
    if autoscaling is not None:
        options["autoscaling_config"] = autoscaling
    else:
        options["num_replicas"] = num_replicas
    deployment = serve.deployment(**options)(serve.ingress(builder)())
    return deployment.bind()


__all__ = ["Multiplexed", "build_app", "ray_application"]
