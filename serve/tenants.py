"""Tenants: who is calling (API keys, stored hashed), what they may use, and how much.

``TenantGate`` answers three questions for every request, in this order, from the validated
config alone: who is this (401 without a valid key), may they use this model (403, worded the
same whether the model exists or not), and is there room in their quota (429 with
``Retry-After`` when the request rate, the token rate or the concurrency quota is spent).
A server configured without tenants serves everyone as one anonymous tenant.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from ai_vmm.serve.admission import Rejected
from ai_vmm.serve.config import ServeConfig, Tenant

ANONYMOUS = "anonymous"


@dataclass
class TokenBucket:
    """A token bucket holding at most one second of ``rate`` (at least one unit).

    ``take(n)`` succeeds when the bucket holds ``n``, or when it is full (so a single request
    larger than the bucket still passes, then leaves it in debt); otherwise it says how long
    until it would succeed.
    """

    rate: float
    level: float = field(init=False)
    stamp: float = field(default_factory=time.monotonic)

    def __post_init__(self) -> None:
        self.level = self.capacity

    @property
    def capacity(self) -> float:
        return max(self.rate, 1.0)

    def _refill(self) -> None:
        now = time.monotonic()
        self.level = min(self.capacity, self.level + (now - self.stamp) * self.rate)
        self.stamp = now

    def take(self, n: float) -> float:
        """Take ``n`` units; 0.0 on success, else the seconds to wait before trying again."""
        wait = self.wait(n)
        if not wait:
            self.level -= n
        return wait

    def wait(self, n: float) -> float:
        """What ``take(n)`` would answer now, without taking anything."""
        self._refill()
        if self.level >= n or self.level >= self.capacity:
            return 0.0
        return (min(n, self.capacity) - self.level) / self.rate

    def give_back(self, n: float) -> None:
        self._refill()
        self.level = min(self.capacity, self.level + n)


@dataclass
class _TenantState:
    tenant: Tenant | None
    requests: TokenBucket | None
    tokens: TokenBucket | None
    in_flight: int = 0


class TenantGate:
    """Authentication, model allow-lists, rate limits and concurrency quotas."""

    def __init__(self, config: ServeConfig) -> None:
        self.config = config
        self.open = not config.tenants
        self._by_hash = {t.key_sha256: t for t in config.tenants}
        self._state: dict[str, _TenantState] = {
            t.name: _TenantState(
                t,
                TokenBucket(t.requests_per_s) if t.requests_per_s else None,
                TokenBucket(t.tokens_per_s) if t.tokens_per_s else None,
            )
            for t in config.tenants
        }
        self._state[ANONYMOUS] = _TenantState(None, None, None)

    def authenticate(self, authorization: str | None, api_key: str | None) -> Tenant | None:
        """The tenant whose key came with the request (``None``: the anonymous tenant).

        Raises:
            Rejected: 401 when the server has tenants and the key is missing or unknown.
        """
        if self.open:
            return None
        key = api_key
        if authorization:
            scheme, _, value = authorization.partition(" ")
            if scheme.lower() == "bearer" and value.strip():
                key = value.strip()
        if not key:
            raise Rejected(
                401,
                "missing_api_key",
                "no API key: send 'Authorization: Bearer <key>' (or an 'api-key' header)",
            )
        tenant = self._by_hash.get(hashlib.sha256(key.encode("utf-8")).hexdigest())
        if tenant is None:
            raise Rejected(401, "invalid_api_key", "the API key is not valid")
        return tenant

    def authorize(self, tenant: Tenant | None, model: str) -> None:
        """Raises ``Rejected`` (403) when ``tenant`` may not use ``model``.

        The message is the same for a model that does not exist, so a key learns nothing about
        models outside its list.
        """
        if tenant is not None and not tenant.allows(model):
            raise Rejected(403, "model_not_allowed", f"this API key may not use model '{model}'")

    def require_admin(self, tenant: Tenant | None) -> None:
        if not self.open and (tenant is None or not tenant.admin):
            raise Rejected(403, "admin_only", "this endpoint needs an admin API key")

    def visible(self, tenant: Tenant | None, names: list[str]) -> list[str]:
        return [n for n in names if tenant is None or tenant.allows(n)]

    @contextmanager
    def admit(self, tenant: Tenant | None, tokens: int = 0) -> Iterator[None]:
        """Hold one of ``tenant``'s concurrency slots while the request runs.

        Raises:
            Rejected: 429 with ``Retry-After`` when the request rate, token rate (``tokens``
                units taken now) or concurrency quota is spent.
        """
        state = self._state[ANONYMOUS if tenant is None else tenant.name]
        self.check_quota(tenant)
        if state.requests is not None:
            state.requests.take(1)
        if tokens:
            self.take_tokens(tenant, tokens)
        state.in_flight += 1
        try:
            yield
        finally:
            state.in_flight -= 1

    def check_quota(self, tenant: Tenant | None) -> None:
        """``admit``'s refusals for one more request, taking nothing (headers are enough).

        Raises:
            Rejected: 429 with ``Retry-After`` when the concurrency quota or the request rate
                is spent.
        """
        state = self._state[ANONYMOUS if tenant is None else tenant.name]
        if (
            tenant is not None
            and tenant.max_concurrency
            and (state.in_flight >= tenant.max_concurrency)
        ):
            raise Rejected(
                429,
                "concurrency_quota",
                f"this API key already has {state.in_flight} requests in flight "
                f"(its quota is {tenant.max_concurrency})",
                retry_after=0.1,
            )
        if state.requests is not None:
            wait = state.requests.wait(1)
            if wait:
                raise Rejected(
                    429,
                    "rate_limited",
                    f"this API key's rate limit of {state.requests.rate:g} requests/s is spent",
                    retry_after=wait,
                )

    def take_tokens(self, tenant: Tenant | None, tokens: int) -> None:
        """Charge ``tokens`` LM tokens to ``tenant`` now (429 when its token rate is spent)."""
        state = self._state[ANONYMOUS if tenant is None else tenant.name]
        if state.tokens is None or tokens <= 0:
            return
        wait = state.tokens.take(tokens)
        if wait:
            raise Rejected(
                429,
                "token_rate_limited",
                f"this API key's limit of {state.tokens.rate:g} tokens/s is spent",
                retry_after=wait,
            )

    def refund_tokens(self, tenant: Tenant | None, tokens: int) -> None:
        """Give back tokens charged up front but not used (a completion that stopped early)."""
        state = self._state[ANONYMOUS if tenant is None else tenant.name]
        if state.tokens is not None and tokens > 0:
            state.tokens.give_back(tokens)

    def in_flight(self) -> dict[str, int]:
        return {name: s.in_flight for name, s in self._state.items()}


def tenant_name(tenant: Tenant | None) -> str:
    return ANONYMOUS if tenant is None else tenant.name


__all__ = ["ANONYMOUS", "TenantGate", "TokenBucket", "tenant_name"]
