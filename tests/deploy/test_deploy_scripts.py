"""The deploy scripts run: the GPU check as a CPU dry run with the stand-in NVML (no GPU here)."""

from __future__ import annotations

import json
from pathlib import Path

from tests_support import load_module

REPO = Path(__file__).resolve().parents[2]


def test_gpu_check_dry_run_on_the_cpu(tmp_path: Path) -> None:
    script = load_module(REPO / "scripts" / "deploy_gpu_check.py", "deploy_gpu_check")
    code = script.main(
        [
            "--fake-nvml",
            "--model", str(REPO / "models" / "bundled" / "tiny_cnn.onnx"),
            "--out", str(tmp_path / "out"),
            "--store", str(tmp_path / "store"),
            "--seconds", "0.1",
            "--max-batch", "4",
        ]
    )  # fmt: skip
    results = json.loads((tmp_path / "out" / "gpu-check.json").read_text())
    assert results["gpu_present"] is False
    assert results["checks"]["preferred_gpu"]["status"] == "SKIP"
    # The budget below the survey's draw chose another setting within it (estimated watts here).
    assert results["checks"]["power_budget"]["status"] == "PASS", results["checks"]
    assert code == 0
    for name in ("1-preferred.txt", "2-survey.txt", "3-budget.txt"):
        assert "candidates" in (tmp_path / "out" / name).read_text()
