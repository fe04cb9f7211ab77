"""vmmc inspect: the architecture, every timed variant and the reason of each choice, from a
real tuned compile; and reports of older versions (keys missing) still print."""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import pytest
from rich.console import Console

import ai_vmm
from ai_vmm.cli import main
from ai_vmm.inspection import print_inspection

REPO = Path(__file__).resolve().parents[2]


def _shown(manifest: dict[str, Any], report: dict[str, Any]) -> str:
    console = Console(file=io.StringIO(), width=200, highlight=False, color_system=None)
    print_inspection(console, Path("model.vmm"), manifest, report)
    text = console.file.getvalue()  # type: ignore[attr-defined]
    return str(text)


@pytest.fixture(scope="module")
def tuned(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The bundled tiny CNN compiled with --target auto and tuning (a few seconds)."""
    out = tmp_path_factory.mktemp("inspect") / "cnn.vmm"
    ai_vmm.compile(REPO / "models" / "bundled" / "tiny_cnn.onnx", output=out, tune_seconds=0.3)
    return out


def test_inspect_a_tuned_artifact(tuned: Path, capsys: pytest.CaptureFixture[str]) -> None:
    report = json.loads((tuned / "report.json").read_text())
    assert report["profile"]["primary_label"] == "cnn"
    capsys.readouterr()
    assert main(["inspect", str(tuned)]) == 0  # through the CLI, at the terminal's width
    assert "architecture: cnn" in capsys.readouterr().out
    manifest = json.loads((tuned / "manifest.json").read_text())
    shown = _shown(manifest, report)
    assert "architecture: cnn" in shown and "recipe: cnn" in shown
    # FLOPs at the compile's representative shapes (given to the analysis by the pipeline).
    assert "FLOPs:" in shown and "given batch=1" in shown
    chosen = report["chosen"]["device"]
    assert f"chosen: {chosen} ({report['chosen']['rule']})" in shown
    timed = [c for c in report["candidates"] if c.get("latency")]
    assert timed, "a tuned compile times its candidates"
    lines = shown.splitlines()
    for candidate in timed:
        # Every variant is a row, with its settings (threads) and its median.
        for variant in candidate["latency"]["variants"]:
            settings = (
                ", ".join(f"{k}={v}" for k, v in sorted(variant["config"].items()))
                or "default threads"
            )
            median = f"{variant['median_ms']:.4g}"
            assert any(settings in ln and median in ln for ln in lines), (settings, shown)
        # The kept variant is marked and the reason for keeping it is given.
        assert any(ln.startswith(f"  {candidate['device']}: ") for ln in lines), shown
    assert any(f"* {chosen}" in ln for ln in lines)
    assert "verification: passed" in shown


def test_older_reports_print_what_they_have() -> None:
    manifest = {
        "format_version": 1,
        "inputs": [{"name": "x", "dtype": "float32", "shape": ["batch", 4]}],
        "outputs": [{"name": "y", "dtype": "float32", "shape": ["batch", 2]}],
        "partitions": [{"id": "p0", "target": "openvino", "device": "CPU", "entry": "p0/m.xml"}],
        "compile_options": {"recipe": "default"},
    }
    old_report = {
        # No primary_label in the profile, no variants, no verification: an early report.
        "profile": {"labels": [{"label": "mlp", "confidence": 0.9, "evidence": {}}]},
        "recipe": "default",
        "candidates": [{"device": "openvino:CPU", "status": "ok", "latency": {"median_ms": 0.5}}],
        "chosen": {"device": "openvino:CPU", "rule": "only candidate"},
    }
    shown = _shown(manifest, old_report)
    assert "architecture: mlp (0.9)  recipe: default (given by --recipe)" in shown
    assert "['batch', 4]" in shown  # a shape is text, not rich markup
    assert "0.5" in shown
    bare = _shown({"partitions": []}, {})
    assert "architecture: unclassified" in bare and "chosen: ?" in bare


def test_buckets_spreads_plan_reasons_quantization_and_special_values() -> None:
    manifest = {
        "format_version": 1,
        "inputs": [{"name": "ids", "dtype": "int64", "shape": ["batch", "seq"]}],
        "outputs": [],
        "partitions": [
            {"id": "p0", "target": "onnxruntime", "device": "CPU", "entry": "p0/a.onnx"},
            {"id": "p1", "target": "openvino", "device": "CPU", "entry": "p1/b.xml"},
        ],
        "plans": [
            {"id": "short", "partitions": ["p0"], "when": {"ids": {"1": {"min": 1, "max": 63}}}},
            {"id": "long", "partitions": ["p1"], "when": {}},
        ],
    }
    report = {
        "plans": [{"id": "short", "reason": "onnxruntime 1.4x faster at seq 16"}],
        "plan": {
            "rule": "cost model",
            "nodes": [
                {"node": "a", "partition": "p0", "why": "cheapest by the cost model"},
                {"node": "b", "partition": "p1", "why": "only openvino runs it"},
            ],
        },
        "candidates": [
            {
                "device": "openvino:CPU",
                "status": "ok",
                "latency": {
                    "median_ms": 2.0,
                    "decision": "threads=4 beyond the noise (CI disjoint)",
                    "variants": [
                        {"config": {}, "median_ms": 3.0, "ci_ms": [2.8, 3.3]},
                        {"config": {"inference_num_threads": 4}, "median_ms": 2.0, "chosen": True},
                    ],
                },
            },
            {"device": "cuda:0", "status": "failed", "reason": "codegen: out of memory"},
        ],
        "chosen": {"device": "openvino:CPU", "rule": "fastest measured"},
        "quantization": {"decision": "kept float", "reason": "accuracy drop 3% > 1%"},
        "verification": {
            "passed": True,
            "outputs": {"y": {"passed": True, "cosine": 0.99999}},
            "special_values": {"status": "differs", "summary": "NaN in ids -> finite y"},
        },
    }
    shown = _shown(manifest, report)
    assert "ids[1] in 1..63" in shown and "any other shape" in shown
    assert "onnxruntime 1.4x faster at seq 16" in shown
    assert "1 nodes: only openvino runs it" in shown and "plan: cost model" in shown
    assert "ci_ms [2.8, 3.3]" in shown
    assert "* inference_num_threads=4" in shown
    assert "openvino:CPU: threads=4 beyond the noise (CI disjoint)" in shown
    assert "cuda:0: codegen: out of memory" in shown
    assert "quantization: kept float (accuracy drop 3% > 1%)" in shown
    assert "NaN/inf behaviour: differs (NaN in ids -> finite y)" in shown
