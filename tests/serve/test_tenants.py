"""Tenants: hashed keys, rate limits (requests and tokens), concurrency quotas."""

from __future__ import annotations

import time
from pathlib import Path

import httpx
import pytest
from conftest import KEYS, make_repo

from ai_vmm.serve import create_app, hash_key
from ai_vmm.serve.admission import Rejected
from ai_vmm.serve.config import validate_config
from ai_vmm.serve.tenants import TenantGate, TokenBucket


def _gate(**tenant: object) -> TenantGate:
    config = validate_config(
        {"tenants": [{"name": "a", "key_sha256": hash_key(KEYS["alice"]), **tenant}]}
    )
    return TenantGate(config)


def test_keys_are_compared_by_hash_only() -> None:
    gate = _gate()
    tenant = gate.authenticate(f"Bearer {KEYS['alice']}", None)
    assert tenant is not None and tenant.name == "a"
    assert KEYS["alice"] not in repr(gate.config)  # only the hash is held
    with pytest.raises(Rejected) as error:
        gate.authenticate("Bearer " + KEYS["alice"][:-1], None)
    assert error.value.status == 401


def test_token_bucket() -> None:
    bucket = TokenBucket(10.0)
    assert bucket.take(10) == 0.0
    wait = bucket.take(5)
    assert 0.3 < wait <= 0.5  # 5 units at 10/s, less what refilled meanwhile
    big = TokenBucket(100.0)
    assert big.take(1000) == 0.0  # larger than the bucket: passes when full, leaves a debt
    assert big.take(1) > 5


def test_concurrency_quota_and_token_rate() -> None:
    gate = _gate(max_concurrency=2, tokens_per_s=100)
    tenant = gate.authenticate(None, KEYS["alice"])
    with gate.admit(tenant), gate.admit(tenant):
        with pytest.raises(Rejected) as error, gate.admit(tenant):
            pass
        assert error.value.status == 429 and error.value.retry_after
    with gate.admit(tenant):  # slots come back when requests end
        pass
    gate.take_tokens(tenant, 100)
    with pytest.raises(Rejected) as error:
        gate.take_tokens(tenant, 50)
    assert error.value.code == "token_rate_limited" and error.value.retry_after
    gate.refund_tokens(tenant, 80)  # a reply that stopped early gives tokens back
    gate.take_tokens(tenant, 50)


def test_request_rate_limit_over_http(tmp_path: Path, cnn_artifact: Path, live: type) -> None:
    key = hash_key(KEYS["bob"])
    config = f'[[tenants]]\nname = "slow"\nkey_sha256 = "{key}"\nrequests_per_s = 0.5\n'
    repo = make_repo(tmp_path / "repo", {"cnn": cnn_artifact}, config)
    body = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
                        "data": [0.0] * 3072}]}  # fmt: skip
    headers = {"Authorization": f"Bearer {KEYS['bob']}"}
    with live(create_app(repo)) as server:
        url = f"{server.url}/v2/models/cnn/infer"
        # A bucket of one request refilled every 2 s: the first passes, one right after not.
        statuses = [httpx.post(url, json=body, headers=headers) for _ in range(3)]
        assert statuses[0].status_code == 200
        refused = next(r for r in statuses[1:] if r.status_code != 200)
        assert refused.status_code == 429 and "0.5 requests/s" in refused.json()["error"]
        assert int(refused.headers["Retry-After"]) >= 1
        time.sleep(float(refused.headers["retry-after-ms"]) / 1000 + 0.6)
        assert httpx.post(url, json=body, headers=headers).status_code == 200


def test_quota_refusals_come_from_the_headers(
    tmp_path: Path, cnn_artifact: Path, live: type
) -> None:
    """A tenant over its quota is refused before its body is read (so before it is parsed), the
    refusal is logged and counted like any other, and what the headers cannot decide (a bad
    key) still gets the route's own answer."""
    key = hash_key(KEYS["bob"])
    config = f'[[tenants]]\nname = "slow"\nkey_sha256 = "{key}"\nrequests_per_s = 0.5\n'
    repo = make_repo(tmp_path / "repo", {"cnn": cnn_artifact}, config)
    body = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
                        "data": [0.0] * 3072}]}  # fmt: skip
    headers = {"Authorization": f"Bearer {KEYS['bob']}", "X-Request-Id": "early-1"}
    with live(create_app(repo)) as server:
        url = f"{server.url}/v2/models/cnn/infer"
        assert httpx.post(url, json=body, headers=headers).status_code == 200
        refused = httpx.post(url, content=b"{not json", headers=headers)
        assert refused.status_code == 429 and "0.5 requests/s" in refused.json()["error"]
        assert refused.headers["Retry-After"] and refused.headers["x-request-id"] == "early-1"
        assert refused.headers["server-timing"].startswith("app;dur=")
        metrics = httpx.get(f"{server.url}/metrics").text
        assert 'reason="rate_limited",tenant="slow"' in metrics or (
            'tenant="slow",reason="rate_limited"' in metrics
        )
        bad_key = httpx.post(url, content=b"{not json", headers={"Authorization": "Bearer no"})
        assert bad_key.status_code == 401
        # The OpenAI routes: the tenant's quota (shared across protocols) from the headers too,
        # answered the OpenAI way; the model (named in the body) is the route's business.
        completions = f"{server.url}/v1/completions"
        over = httpx.post(completions, content=b"{not json", headers=headers)
        assert over.status_code == 429 and over.headers["Retry-After"]
        assert over.json()["error"]["code"] == "rate_limited"
        assert "0.5 requests/s" in over.json()["error"]["message"]
        no_key = httpx.post(completions, content=b"{}", headers={"Authorization": "Bearer no"})
        assert no_key.status_code == 401 and "error" in no_key.json()


def test_deadline_refusals_come_from_the_headers(
    tmp_path: Path, cnn_artifact: Path, live: type
) -> None:
    """A deadline that even one row would miss is refused before the body is read, from the
    ticket the route would make (the same function: timeout header, counted from arrival); a
    timeout header that is not a number is left to the route's 400."""
    repo = make_repo(tmp_path / "repo", {"cnn": cnn_artifact})
    body = {"inputs": [{"name": "pixel_values", "shape": [1, 3, 32, 32], "datatype": "FP32",
                        "data": [0.0] * 3072}]}  # fmt: skip
    with live(create_app(repo)) as server:
        url = f"{server.url}/v2/models/cnn/infer"
        assert httpx.post(url, json=body).status_code == 200  # one call measured
        late = httpx.post(url, content=b"{not json", headers={"X-Request-Timeout-Ms": "0.001"})
        assert late.status_code == 503 and "deadline" in late.json()["error"]
        assert late.headers["Retry-After"]
        bad = httpx.post(url, content=b"{not json", headers={"X-Request-Timeout-Ms": "soon"})
        assert bad.status_code == 400 and "milliseconds" in bad.json()["error"]
