"""The server's configuration: models, batching, placement, priority classes and tenants.

Everything a deployment decides about QoS is data here, validated once at start-up; handlers
never branch on a tenant's name. A config comes from ``serve.toml`` (or ``serve.json``) at the
root of a model repository, plus an optional ``config.toml`` / ``config.json`` inside each
model's folder (see ``ai_vmm.serve.repository``). Unknown keys are errors, so a typo never
silently means "default".

Example ``serve.toml``::

    [server]
    max_body_bytes = "16MiB"

    [resources.budgets]
    CPU = "2GiB"                 # device memory budget (models are evicted LRU beyond it)

    [classes.interactive]
    rank = 0                     # lower rank is served first
    max_queue = 64
    timeout_ms = 250             # default deadline; a request may only shorten it
    overflow = "reject"          # or "delay": wait for room in the queue until the deadline
    late_margin = 0.25           # refuse earlier by how late recent answers came (<= 25 %)
    headroom = 0.2               # behind queued calls, refuse an end in the timeout's last 20 %

    [[tenants]]
    name = "web"
    key_sha256 = "9f86d081..."   # ai_vmm.serve.hash_key("the key"); keys are never stored
    models = ["resnet", "smollm2"]
    class = "interactive"
    requests_per_s = 200
    tokens_per_s = 5000
    max_concurrency = 16

    [models.resnet]
    source = "resnet.vmm"
    pinned = true
    batching = { max_batch = 8, max_queue_delay_ms = 2, preferred_sizes = [4, 8] }
    placement = { replicas = "auto" }   # every device where the set measures faster
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from ai_vmm.runtime.errors import InputError

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10: the same parser from PyPI
    import tomli as tomllib  # type: ignore[no-redef]

MODEL_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")
"""Model and tenant names: no slashes, no leading dot, so a name can never walk a path."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KiB|MiB|GiB|TiB)?\s*$", re.IGNORECASE)
_UNITS = {
    "b": 1,
    "kb": 10**3,
    "mb": 10**6,
    "gb": 10**9,
    "tb": 10**12,
    "kib": 2**10,
    "mib": 2**20,
    "gib": 2**30,
    "tib": 2**40,
}


class ServeConfigError(InputError):
    """The server configuration (or a model repository) is invalid; the message says where."""


def parse_size(value: Any) -> int:
    """Bytes from an int or a string such as ``"512MiB"`` / ``"2GB"``."""
    if isinstance(value, bool):
        raise ValueError("a size must be a number of bytes or a string such as '512MiB'")
    if isinstance(value, int):
        if value < 0:
            raise ValueError("a size cannot be negative")
        return value
    if isinstance(value, str):
        match = _SIZE.match(value)
        if match:
            return int(float(match.group(1)) * _UNITS[(match.group(2) or "b").lower()])
    raise ValueError(f"{value!r} is not a size (use bytes or e.g. '512MiB', '2GB')")


Size = Annotated[int, BeforeValidator(parse_size)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


ADMISSION_QUANTILE = 0.97
"""The default of ``[server] admission_quantile`` (``serve.admission.ServiceTimes`` says why)."""


class ServerSettings(_Strict):
    """HTTP-level limits and behaviour."""

    max_body_bytes: Size = 64 * 2**20
    """Requests with a larger body (after decompression) get 413."""
    access_log: bool = True
    shutdown_grace_s: float = Field(default=30.0, gt=0)
    """How long a shutdown waits for in-flight requests before closing connections."""
    metrics_auth: bool = False
    """``true``: ``/metrics`` needs an admin tenant's key (else it is public, like health)."""
    default_class: str = "default"
    """The priority class of requests that come with no tenant (servers without tenants)."""
    admission_quantile: float = Field(default=ADMISSION_QUANTILE, gt=0.5, le=1.0)
    """Admission plans each model call as slow as this quantile of recent calls (observed over
    predicted): higher refuses more at once and lets fewer admitted requests expire."""


class BatchingConfig(_Strict):
    """Dynamic batching of a tensor model (Triton's dynamic batcher, same three knobs)."""

    max_batch: int | None = Field(default=None, ge=0, le=4096)
    """Most rows one model call may take; 0 runs each request on its own; unset: the batch
    deploy chose for the model (when its inputs and outputs share a batch axis)."""
    max_queue_delay_ms: float = Field(default=0.0, ge=0, le=10_000)
    """How long the oldest queued request may wait for others to join its batch."""
    preferred_sizes: tuple[int, ...] = ()
    """Batch sizes worth dispatching at once without waiting out the delay."""

    @model_validator(mode="after")
    def _check(self) -> BatchingConfig:
        bad = [s for s in self.preferred_sizes if s < 1 or s > max(self.max_batch or 4096, 1)]
        if bad:
            raise ValueError(f"preferred_sizes {bad} must lie in 1..max_batch ({self.max_batch})")
        return self


class GenerationConfig(_Strict):
    """Serving settings of a causal LM (continuous batching in the LM engine)."""

    max_batch: int = Field(default=8, ge=1, le=1024)
    """Sequences decoded together in one engine step."""
    default_max_tokens: int = Field(default=256, ge=1)
    max_tokens_limit: int = Field(default=4096, ge=1)
    """A request asking for more new tokens than this gets 400."""


class PlacementConfig(_Strict):
    """Where a model's replicas go and what they cost."""

    replicas: Annotated[int, Field(ge=1, le=64)] | Literal["auto"] | tuple[str, ...] = 1
    """A number: copies per device, each taking whole batches from the model's one queue.
    ``"auto"`` or device keys (``["openvino:CPU", "onnxruntime:CPU"]``): one deployment over
    several devices, deploy's ``replicas`` constraint (docs/parallel.md): deploy measures the
    set against its best device alone and keeps it only where it is faster; each kept
    device's replica takes batches from the model's queue."""
    devices: tuple[str, ...] = ()
    """Devices to place replicas on (deploy's device names); empty: where deploy chooses."""
    memory_bytes: Size | None = None
    """The footprint to charge against device budgets; default: measured from the artifact."""

    @field_validator("replicas", mode="before")
    @classmethod
    def _replicas(cls, value: Any) -> Any:
        wrong = (
            f'replicas must be a number, "auto" or device keys such as '
            f'["openvino:CPU", "onnxruntime:CPU"], got {value!r}'
        )
        if isinstance(value, str) and value != "auto":
            raise ValueError(wrong)
        if isinstance(value, list | tuple) and not all(
            isinstance(v, str) and ":" in v for v in value
        ):
            raise ValueError(wrong)
        return value

    @model_validator(mode="after")
    def _check(self) -> PlacementConfig:
        if not isinstance(self.replicas, int) and self.devices:
            raise ValueError(
                'replicas across devices ("auto" or device keys) choose the devices '
                "themselves; leave devices empty"
            )
        if isinstance(self.replicas, tuple) and not self.replicas:
            raise ValueError('replicas: an empty device list (give a number, "auto" or keys)')
        return self

    @property
    def across_devices(self) -> str | tuple[str, ...] | None:
        """What goes to deploy as its ``replicas`` constraint (``None``: copies per device)."""
        return None if isinstance(self.replicas, int) else self.replicas

    @property
    def copies(self) -> int:
        """Copies per device (1 with replicas across devices: deploy places those)."""
        return self.replicas if isinstance(self.replicas, int) else 1


class ModelConfig(_Strict):
    """One served model."""

    source: str | None = None
    """A model file or artifact, relative to the model's folder (or the repository)."""
    kind: Literal["auto", "model", "causal-lm"] = "auto"
    constraints: dict[str, Any] = Field(default_factory=dict)
    """Passed to ``VMM().deploy(constraints=...)`` unchanged (deploy validates them)."""
    batching: BatchingConfig = BatchingConfig()
    generation: GenerationConfig = GenerationConfig()
    placement: PlacementConfig = PlacementConfig()
    pinned: bool = False
    """Pinned models are never evicted to make room for others."""
    load: Literal["eager", "lazy"] = "eager"
    """``lazy``: load on first request (and after an eviction)."""
    versions: Literal["latest", "all"] = "latest"
    """With numbered version folders (``name/1/``, ``name/2/``): serve the highest, or all."""

    @model_validator(mode="after")
    def _one_replicas(self) -> ModelConfig:
        if self.placement.across_devices is not None and "replicas" in self.constraints:
            raise ValueError(
                "replicas is set twice (placement.replicas and constraints.replicas); keep one"
            )
        return self

    def deploy_constraints(self) -> dict[str, Any]:
        """The constraints deploy gets: ``constraints``, with ``placement.replicas`` across
        devices as its ``replicas``."""
        limits = dict(self.constraints)
        across = self.placement.across_devices
        if across is not None:
            limits["replicas"] = across if isinstance(across, str) else list(across)
        return limits


class PriorityClass(_Strict):
    """A queue policy shared by every tenant of the class."""

    rank: int = Field(default=0, ge=0, le=100)
    """Lower ranks are dispatched first."""
    max_queue: int = Field(default=256, ge=0)
    """Queued requests of this class per model beyond which the overflow policy applies."""
    timeout_ms: float = Field(default=30_000.0, gt=0)
    """Default deadline from arrival; a request's own deadline can only shorten it."""
    overflow: Literal["reject", "delay"] = "reject"
    """Queue full: refuse at once (503 + Retry-After) or wait for room until the deadline."""
    objective_p99_ms: float | None = Field(default=None, gt=0)
    """The latency objective this class is sold with (reported, and checked by the load test)."""
    late_margin: float = Field(default=0.25, ge=0, le=1)
    """Admission adds how late this class's recent answers came (the last 2 s) to its
    estimate, at most this fraction of the request's timeout; 0 turns it off."""
    headroom: float = Field(default=0.2, ge=0, lt=1)
    """Admission keeps this fraction of a request's timeout free when a tensor request would
    wait behind queued calls (dynamic batching; the LM engine's admission does not use it):
    refused at once if its estimated end falls in that last part. Those
    queued while the host was fast expire once it slows. Under 2x overload on a 2-core VM,
    0.2 took the expired share from 1.78 % of admitted requests to 0.30 %, admitting 12 %
    fewer (8 runs each, docs/serve.md). A request that goes in the next call keeps its whole
    timeout. 0 turns it off."""


class Tenant(_Strict):
    """A client of the server: one API key, what it may use, how much of it."""

    name: str
    key_sha256: str = Field(pattern=r"^[0-9a-f]{64}$")
    """sha256 hex of the API key (``ai_vmm.serve.hash_key``); keys themselves are never stored."""
    models: tuple[str, ...] = ("*",)
    """Model names this tenant may use; ``"*"`` for all."""
    priority_class: str = Field(default="default", alias="class")
    requests_per_s: float = Field(default=0.0, ge=0)
    """Sustained request rate (token bucket, a burst of one second); 0 = unlimited."""
    tokens_per_s: float = Field(default=0.0, ge=0)
    """Sustained LM tokens (prompt + generated) per second; 0 = unlimited."""
    max_concurrency: int = Field(default=0, ge=0)
    """Requests in flight at once; 0 = unlimited."""
    admin: bool = False
    """May load/unload models and read the admin endpoints."""

    def allows(self, model: str) -> bool:
        return "*" in self.models or model in self.models


class ResourceConfig(_Strict):
    """Device memory budgets: ``{device: size}``; a device without a budget is unlimited."""

    budgets: dict[str, Size] = Field(default_factory=dict)


DEFAULT_CLASSES = {"default": PriorityClass()}


class ServeConfig(_Strict):
    """The whole server configuration, validated."""

    server: ServerSettings = ServerSettings()
    resources: ResourceConfig = ResourceConfig()
    classes: dict[str, PriorityClass] = Field(default_factory=lambda: dict(DEFAULT_CLASSES))
    tenants: tuple[Tenant, ...] = ()
    models: dict[str, ModelConfig] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _cross_check(self) -> ServeConfig:
        names = set(self.classes)
        if self.server.default_class not in names:
            raise ValueError(
                f"server.default_class '{self.server.default_class}' is not a class "
                f"(classes: {', '.join(sorted(names))})"
            )
        seen_names: set[str] = set()
        seen_keys: set[str] = set()
        for i, tenant in enumerate(self.tenants):
            where = f"tenants[{i}]"
            if not MODEL_NAME.match(tenant.name):
                raise ValueError(f"{where}.name {tenant.name!r} must match {MODEL_NAME.pattern}")
            if tenant.name in seen_names:
                raise ValueError(f"{where}: tenant name '{tenant.name}' appears twice")
            if tenant.key_sha256 in seen_keys:
                raise ValueError(f"{where}: tenant '{tenant.name}' shares its key with another")
            if tenant.priority_class not in names:
                raise ValueError(
                    f"{where}.class '{tenant.priority_class}' is not a class "
                    f"(classes: {', '.join(sorted(names))})"
                )
            seen_names.add(tenant.name)
            seen_keys.add(tenant.key_sha256)
        for name in self.models:
            if not MODEL_NAME.match(name):
                raise ValueError(f"model name {name!r} must match {MODEL_NAME.pattern}")
        return self

    def tenant_class(self, tenant: Tenant | None) -> PriorityClass:
        name = self.server.default_class if tenant is None else tenant.priority_class
        return self.classes[name]


def hash_key(key: str) -> str:
    """The ``key_sha256`` to put in a tenant's config for API key ``key``.

    Keys are long random tokens (``secrets.token_urlsafe(32)``), so one sha256 is enough: there
    is nothing to brute-force, and the server compares hashes, never keys.
    """
    return hashlib.sha256(key.encode("utf-8")).hexdigest()


def read_config_file(path: Path) -> dict[str, Any]:
    """The raw dict of a ``.toml`` or ``.json`` config file (one-line errors)."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ServeConfigError(f"{path}: cannot read: {exc.strerror or exc}") from exc
    try:
        data = json.loads(text) if path.suffix == ".json" else tomllib.loads(text)
    except (json.JSONDecodeError, tomllib.TOMLDecodeError) as exc:
        raise ServeConfigError(f"{path}: not valid {path.suffix[1:].upper()}: {exc}") from exc
    if not isinstance(data, dict):
        raise ServeConfigError(f"{path}: the top level must be a table/object")
    return data


def validate_config(data: dict[str, Any], where: str = "config") -> ServeConfig:
    """A ``ServeConfig`` from a raw dict; the first problem becomes a one-line error."""
    try:
        return ServeConfig.model_validate(data)
    except ValidationError as exc:
        raise ServeConfigError(f"{where}: {_first_problem(exc)}") from exc


def validate_model_config(data: dict[str, Any], where: str) -> ModelConfig:
    """A ``ModelConfig`` from a model folder's own config file."""
    try:
        return ModelConfig.model_validate(data)
    except ValidationError as exc:
        raise ServeConfigError(f"{where}: {_first_problem(exc)}") from exc


def _first_problem(exc: ValidationError) -> str:
    errors = exc.errors()
    first = errors[0]
    loc = ".".join(str(part) for part in first["loc"])
    message = str(first["msg"]).removeprefix("Value error, ")
    if first["type"] == "extra_forbidden":
        message = "unknown key (check the spelling; see docs/serve.md for the keys)"
    more = f" (and {len(errors) - 1} more problem(s))" if len(errors) > 1 else ""
    return f"{loc}: {message}{more}" if loc else f"{message}{more}"


__all__ = [
    "MODEL_NAME",
    "BatchingConfig",
    "GenerationConfig",
    "ModelConfig",
    "PlacementConfig",
    "PriorityClass",
    "ResourceConfig",
    "ServeConfig",
    "ServeConfigError",
    "ServerSettings",
    "Tenant",
    "hash_key",
    "parse_size",
    "read_config_file",
    "validate_config",
    "validate_model_config",
]
