"""The compile driver: target choice, reproducibility, cache, errors, nothing half-written."""

from __future__ import annotations

import filecmp
import json
import multiprocessing
import time
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

import ai_vmm
from ai_vmm.runtime import (
    CompileError,
    DeviceError,
    ModelLoadError,
    UnsupportedModelError,
    load,
)
from tests_support import make_mlp_model

TARGETS = ["onnxruntime:CPU", "openvino:CPU"]


def _reference(path: Path, feed: dict[str, np.ndarray]) -> list[np.ndarray]:
    import onnxruntime as ort

    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feed)


@pytest.mark.parametrize("target", TARGETS)
def test_explicit_target_matches_reference(mlp_path: Path, tmp_path: Path, target: str) -> None:
    result = ai_vmm.compile(mlp_path, target, tmp_path / "m.vmm", tune=False)
    assert result.manifest["partitions"][0]["target"] == target.split(":")[0]
    feed = {"x": np.random.default_rng(5).standard_normal((4, 16)).astype(np.float32)}
    np.testing.assert_allclose(
        load(result.path)(**feed)["y"], _reference(mlp_path, feed)[0], rtol=1e-5, atol=1e-5
    )


def test_auto_measures_every_candidate(mlp_path: Path, tmp_path: Path) -> None:
    result = ai_vmm.compile(mlp_path, "auto", tmp_path / "m.vmm")
    candidates = {c["device"]: c for c in result.report["candidates"]}
    assert set(candidates) == set(TARGETS)
    assert all(c["status"] == "ok" and c["latency"]["median_ms"] > 0 for c in candidates.values())
    fastest = min(candidates, key=lambda d: candidates[d]["latency"]["median_ms"])
    chosen = result.report["chosen"]
    assert chosen["device"] == chosen["candidate"] == fastest
    assert chosen["rule"].startswith("fastest measured on this machine")
    # Honest timing: every round of every contender is in the report, with its spread.
    latency = candidates[fastest]["latency"]
    assert len(latency["buckets"]["primary"]["rounds"]) == 5
    assert latency["ci_ms"][0] <= latency["median_ms"] <= latency["ci_ms"][1]
    assert result.report["tuning"]["load_average"][0] is not None
    assert "timings_s" in result.report


def test_no_tune_reproduces_the_whole_artifact_byte_for_byte(
    mlp_path: Path, tmp_path: Path
) -> None:
    for target in ("auto", *TARGETS):
        a = ai_vmm.compile(mlp_path, target, tmp_path / f"a-{target}.vmm", tune=False).path
        b = ai_vmm.compile(mlp_path, target, tmp_path / f"b-{target}.vmm", tune=False).path
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        _, mismatch, errors = filecmp.cmpfiles(a, b, [str(f) for f in files], shallow=False)
        assert mismatch == [] and errors == [], (target, mismatch, errors)


def test_tuned_manifest_is_deterministic_for_the_same_choice(
    mlp_path: Path, tmp_path: Path
) -> None:
    a = ai_vmm.compile(mlp_path, "openvino:CPU", tmp_path / "a.vmm")
    b = ai_vmm.compile(mlp_path, "openvino:CPU", tmp_path / "b.vmm")
    raw_a = (a.path / "manifest.json").read_bytes()
    raw_b = (b.path / "manifest.json").read_bytes()

    # Tuning may pick another runtime variant (thread count) for a shape bucket on a noisy
    # machine; the same choices must give the same bytes.
    def choices(report: dict[str, Any]) -> list[tuple[Any, ...]]:
        return [(c["chosen"], c["config"], c["when"]) for c in report["buckets"]]

    if choices(a.report) == choices(b.report):
        assert raw_a == raw_b
    else:
        for manifest in (a.manifest, b.manifest):
            for key in ("partitions", "plans", "routing"):
                manifest.pop(key, None)
        assert a.manifest == b.manifest


def test_zip_output(mlp_path: Path, tmp_path: Path) -> None:
    result = ai_vmm.compile(mlp_path, "onnxruntime:CPU", tmp_path / "m.vmm.zip", tune=False)
    assert result.path.is_file()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.vmm.zip", "mlp.onnx"]
    assert load(result.path)(x=np.ones((1, 16), np.float32))["y"].shape == (1, 8)


def test_input_shapes_fix_and_bound(mlp_path: Path, tmp_path: Path) -> None:
    fixed = ai_vmm.compile(
        mlp_path, "openvino:CPU", tmp_path / "f.vmm", tune=False, input_shapes=["x[2,16]"]
    )
    assert fixed.manifest["inputs"][0]["shape"] == [2, 16]
    bounded = ai_vmm.compile(
        mlp_path, "openvino:CPU", tmp_path / "b.vmm", tune=False, input_shapes=["x[1..4,16]"]
    )
    assert bounded.manifest["inputs"][0]["shape"] == [{"min": 1, "max": 4}, 16]
    model = load(bounded.path)
    assert model(x=np.ones((4, 16), np.float32))["y"].shape == (4, 8)
    with pytest.raises(ai_vmm.InputError, match="outside the compiled range"):
        model(x=np.ones((5, 16), np.float32))


def test_unknown_domain_node_is_unsupported_everywhere(tmp_path: Path) -> None:
    onnx.save(make_mlp_model(domain_node=True), tmp_path / "odd.onnx")
    with pytest.raises(UnsupportedModelError, match=r"mystery \(.*com\.example"):
        ai_vmm.compile(tmp_path / "odd.onnx", "auto", tmp_path / "odd.vmm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["odd.onnx"]


def test_bad_options_and_devices(mlp_path: Path, tmp_path: Path) -> None:
    with pytest.raises(DeviceError, match=r"available: openvino:CPU, onnxruntime:CPU"):
        ai_vmm.compile(mlp_path, "openvino:NPU", tmp_path / "x.vmm")
    with pytest.raises(CompileError, match="unknown target 'tensorflowlite'"):
        ai_vmm.compile(mlp_path, "tensorflowlite:CPU", tmp_path / "x.vmm")
    with pytest.raises(CompileError, match="unknown precision 'fp8'"):
        ai_vmm.compile(mlp_path, "auto", tmp_path / "x.vmm", precision="fp8")
    with pytest.raises(CompileError, match="'nope', which is not a model input"):
        ai_vmm.compile(mlp_path, "auto", tmp_path / "x.vmm", input_shapes=["nope[1,16]"])
    with pytest.raises(CompileError, match="fixed to 16 in the model"):
        ai_vmm.compile(mlp_path, "auto", tmp_path / "x.vmm", input_shapes=["x[1,15]"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["mlp.onnx"]


def test_bad_model_files(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="does not exist"):
        ai_vmm.compile(tmp_path / "absent.onnx", output=tmp_path / "a.vmm")
    (tmp_path / "text.onnx").write_text("this is not a model")
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        ai_vmm.compile(tmp_path / "text.onnx", output=tmp_path / "b.vmm")
    whole = make_mlp_model().SerializeToString()
    (tmp_path / "cut.onnx").write_bytes(whole[: len(whole) // 2])
    with pytest.raises(ModelLoadError, match="not a readable ONNX model"):
        ai_vmm.compile(tmp_path / "cut.onnx", output=tmp_path / "c.vmm")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cut.onnx", "text.onnx"]


def test_failed_recompile_keeps_the_old_artifact(mlp_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.vmm"
    ai_vmm.compile(mlp_path, "onnxruntime:CPU", out, tune=False)
    before = (out / "manifest.json").read_bytes()
    onnx.save(make_mlp_model(domain_node=True), tmp_path / "odd.onnx")
    with pytest.raises(UnsupportedModelError):
        ai_vmm.compile(tmp_path / "odd.onnx", "onnxruntime:CPU", out, tune=False)
    assert (out / "manifest.json").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.vmm", "mlp.onnx", "odd.onnx"]


def test_cache_hit_is_fast_and_says_so(mlp_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    first = ai_vmm.compile(mlp_path, "auto", tmp_path / "a.vmm", cache_dir=cache)
    assert not first.cache_hit
    messages: list[str] = []
    start = time.perf_counter()
    second = ai_vmm.compile(
        mlp_path, "auto", tmp_path / "b.vmm", cache_dir=cache, progress=messages.append
    )
    assert time.perf_counter() - start < 1.0
    assert second.cache_hit and any(m.startswith("cache hit") for m in messages)
    assert (tmp_path / "a.vmm/manifest.json").read_bytes() == (
        tmp_path / "b.vmm/manifest.json"
    ).read_bytes()
    other = ai_vmm.compile(mlp_path, "auto", tmp_path / "c.vmm", cache_dir=cache, rtol=1e-2)
    assert not other.cache_hit


def test_cache_from_environment(
    mlp_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AI_VMM_CACHE_DIR", str(tmp_path / "envcache"))
    ai_vmm.compile(mlp_path, "onnxruntime:CPU", tmp_path / "a.vmm", tune=False)
    assert ai_vmm.compile(mlp_path, "onnxruntime:CPU", tmp_path / "b.vmm", tune=False).cache_hit


def _compile_into(args: tuple[str, str, str]) -> bool:
    model, out, cache = args
    return bool(
        ai_vmm.compile(model, "onnxruntime:CPU", out, tune=False, cache_dir=cache).cache_hit
    )


def test_concurrent_compiles_share_the_cache_safely(mlp_path: Path, tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    jobs = [(str(mlp_path), str(tmp_path / f"o{i}.vmm"), str(cache)) for i in range(4)]
    with multiprocessing.get_context("spawn").Pool(4) as pool:
        hits = pool.map(_compile_into, jobs)
    assert hits.count(False) == 1, hits
    entries = [p for p in cache.iterdir() if p.is_dir()]
    assert len(entries) == 1
    manifests = {(tmp_path / f"o{i}.vmm/manifest.json").read_bytes() for i in range(4)}
    assert len(manifests) == 1
    assert json.loads(manifests.pop())["partitions"][0]["target"] == "onnxruntime"


def test_model_proto_input(tmp_path: Path) -> None:
    result = ai_vmm.compile(make_mlp_model(), "onnxruntime:CPU", tmp_path / "p.vmm", tune=False)
    assert load(result.path)(x=np.zeros((1, 16), np.float32))["y"].shape == (1, 8)
