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
    budget = results["checks"]["power_budget"]
    # On the CPU the watts are estimates from the process's CPU time, which move with the load
    # of a shared machine between the survey and the budget deploy: the only failure accepted
    # here is that nothing measured within the budget the second time (the GPU run is exact);
    # where the survey's choice already drew the least, there is nothing cheaper to check.
    written = ["1-preferred.txt", "2-survey.txt"]
    if budget["status"] == "SKIP":
        assert "already draws the least" in budget["detail"] and code == 0, budget
    elif budget["status"] == "FAIL":
        assert budget["detail"].startswith("nothing within"), budget
        assert code == 1
    else:
        assert budget["status"] == "PASS" and code == 0, budget
        written.append("3-budget.txt")  # the budget deploy's explanation exists when it chose
    for name in written:
        assert "candidates" in (tmp_path / "out" / name).read_text()
