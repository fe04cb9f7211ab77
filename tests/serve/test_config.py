"""The server config and the repository layout: what is accepted, and one-line errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from ai_vmm.serve.config import ServeConfigError, hash_key, parse_size, validate_config
from ai_vmm.serve.repository import open_repository

KEY = hash_key("sk-test")


def test_a_full_config_validates() -> None:
    config = validate_config(
        {
            "server": {"max_body_bytes": "2MiB", "shutdown_grace_s": 5, "admission_quantile": 0.99},
            "resources": {"budgets": {"CPU": "1.5GiB", "cuda:0": 10**9}},
            "classes": {
                "default": {},
                "rt": {"rank": 0, "max_queue": 4, "timeout_ms": 50, "overflow": "delay"},
            },
            "tenants": [
                {"name": "a", "key_sha256": KEY, "models": ["m"], "class": "rt", "admin": True}
            ],
            "models": {
                "m": {
                    "batching": {"max_batch": 8, "max_queue_delay_ms": 2, "preferred_sizes": [4]},
                    "constraints": {"max_latency_ms": 20},
                    "placement": {"replicas": 2, "devices": ["INTEL_CPU"], "memory_bytes": "1MB"},
                    "pinned": True,
                }
            },
        }
    )
    assert config.server.max_body_bytes == 2 * 2**20
    assert config.server.admission_quantile == 0.99
    assert config.resources.budgets == {"CPU": int(1.5 * 2**30), "cuda:0": 10**9}
    assert config.tenants[0].priority_class == "rt" and config.tenants[0].allows("m")
    assert not config.tenants[0].allows("other")
    assert config.models["m"].placement.memory_bytes == 10**6


@pytest.mark.parametrize(
    ("data", "words"),
    [
        ({"server": {"max_body": 5}}, "server.max_body: unknown key"),
        ({"tenants": [{"name": "a", "key_sha256": "abc"}]}, "tenants.0.key_sha256"),
        ({"tenants": [{"name": "a", "key_sha256": KEY, "class": "gold"}]}, "'gold' is not a class"),
        (
            {"tenants": [{"name": "a", "key_sha256": KEY}, {"name": "b", "key_sha256": KEY}]},
            "shares its key",
        ),
        ({"tenants": [{"name": "../a", "key_sha256": KEY}]}, "must match"),
        ({"classes": {"x": {"overflow": "drop"}}}, "classes.x.overflow"),
        ({"models": {"m": {"batching": {"max_batch": 4, "preferred_sizes": [8]}}}}, "1..max_batch"),
        ({"models": {"a/b": {}}}, "must match"),
        ({"resources": {"budgets": {"CPU": "lots"}}}, "is not a size"),
        ({"server": {"default_class": "vip"}}, "'vip' is not a class"),
        ({"server": {"admission_quantile": 0.3}}, "server.admission_quantile"),
    ],
)
def test_bad_configs_say_where(data: dict, words: str) -> None:
    with pytest.raises(ServeConfigError) as error:
        validate_config(data, "serve.toml")
    message = str(error.value)
    assert message.startswith("serve.toml: ") and words in message, message
    assert "\n" not in message


def test_parse_size() -> None:
    assert parse_size("512MiB") == 512 * 2**20
    assert parse_size("2GB") == 2 * 10**9
    assert parse_size(7) == 7
    with pytest.raises(ValueError):
        parse_size(True)


def _touch_artifact(path: Path, kind: str = "model") -> Path:
    path.mkdir(parents=True)
    extra = "" if kind == "model" else f', "kind": "{kind}"'
    (path / "manifest.json").write_text("{" + f'"format": "ai-vmm-artifact"{extra}' + "}")
    return path


def test_repository_layouts(tmp_path: Path) -> None:
    _touch_artifact(tmp_path / "a.vmm")
    (tmp_path / "b.onnx").write_bytes(b"onnx")
    (tmp_path / "lm.gguf").write_bytes(b"gguf")
    _touch_artifact(tmp_path / "c" / "1" / "model.vmm")
    _touch_artifact(tmp_path / "c" / "2" / "model.vmm")
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "weights.onnx").write_bytes(b"onnx")
    (tmp_path / "d" / "model.toml").write_text("pinned = true\n[batching]\nmax_batch = 4\n")
    _touch_artifact(tmp_path / "e", kind="causal-lm")
    (tmp_path / "README.md").write_text("not a model")
    repo = open_repository(tmp_path)
    found = {(m.name, m.version): (m.source.name, m.kind) for m in repo.models}
    assert found == {
        ("a", "1"): ("a.vmm", "model"),
        ("b", "1"): ("b.onnx", "model"),
        ("lm", "1"): ("lm.gguf", "causal-lm"),
        ("c", "2"): ("model.vmm", "model"),  # the latest version only, by default
        ("d", "1"): ("weights.onnx", "model"),
        ("e", "1"): ("e", "causal-lm"),
    }
    d = next(m for m in repo.models if m.name == "d")
    assert d.config.pinned and d.config.batching.max_batch == 4


def test_repository_versions_all_and_server_config(tmp_path: Path) -> None:
    _touch_artifact(tmp_path / "c" / "1" / "m.vmm")
    _touch_artifact(tmp_path / "c" / "3" / "m.vmm")
    _touch_artifact(tmp_path / "store" / "x.vmm")
    (tmp_path / "serve.toml").write_text(
        '[models.c]\nversions = "all"\n[models.renamed]\nsource = "store/x.vmm"\n'
    )
    repo = open_repository(tmp_path)
    assert sorted((m.name, m.version) for m in repo.models) == [
        ("c", "1"),
        ("c", "3"),
        ("renamed", "1"),
        ("store", "1"),
    ]


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (lambda p: (p / "x").mkdir(), "expected one model"),
        (
            lambda p: [(p / "x.onnx").write_bytes(b""), _touch_artifact(p / "x.vmm")],
            "appears twice",
        ),
        (lambda p: (p / "serve.toml").write_text("[models.ghost]\n"), "no source"),
        (lambda p: (p / "serve.toml").write_text("[server\n"), "not valid TOML"),
        (lambda p: (p / "-bad.onnx").write_bytes(b""), "must match"),
        (
            lambda p: [
                (p / "serve.toml").write_text('[models.m]\nsource = "m/a.onnx"\n'),
                (p / "m").mkdir(),
                (p / "m" / "a.onnx").write_bytes(b""),
                (p / "m" / "model.toml").write_text("pinned = true\n"),
            ],
            "configured twice",
        ),
    ],
)
def test_bad_repositories(tmp_path: Path, setup: object, words: str) -> None:
    setup(tmp_path)  # type: ignore[operator]
    with pytest.raises(ServeConfigError, match=words):
        open_repository(tmp_path)


def test_missing_repository(tmp_path: Path) -> None:
    with pytest.raises(ServeConfigError, match="not a directory"):
        open_repository(tmp_path / "nothing")
