#!/usr/bin/env python
"""``VMM().deploy`` on real models with real inputs: the must-show of issue 14, as a command.

For a real CNN (MediaPipe hand landmarks, photographs), a real transformer encoder
(paraphrase-MiniLM-L3, standard-library docstring sentences) and a real LSTM (Silero VAD, a
speech recording), each with its accuracy budget:

1. survey: one deploy that permits low precision measures every candidate;
2. (a) a latency limit the fp32 default meets (three times the best fp32 p95), with
   ``preferred_hardware = [NVIDIA_GPU, INTEL_NPU, INTEL_CPU]`` (absent here, or not this CPU's
   vendor: explain() says how it fell back);
3. (b) where INT8 is measurably faster than fp32 within the budget: a limit between the two
   (geometric mean) that fp32 alone fails (shown: ConstraintError) and INT8 meets;
4. (c) a limit below anything measured: the ConstraintError naming the best achievable;
5. the store: the (a) deploy again in this process, and in a fresh process.

Every limit comes from the survey's measured figures. Writes the tables between the markers
of ``docs/deploy.md`` and ``docs/deploy.json``.

    python scripts/deploy_real.py [--models cnn,transformer,lstm] [--seconds 1.0]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

REPO = Path(__file__).resolve().parents[1]
CACHE = Path(os.environ.get("AI_VMM_REALMODELS", Path.home() / ".cache/ai-vmm/realmodels"))
BEGIN, END = "<!-- deploy_real:begin -->", "<!-- deploy_real:end -->"
PREFERRED = ["NVIDIA_GPU", "INTEL_NPU", "INTEL_CPU"]
INT8_MARGIN = 1.25
"""INT8 must be this much faster than fp32 (best p95s) for case (b) to be tried."""

Feed = dict[str, np.ndarray]


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


def _module(name: str, path: Path) -> ModuleType:
    from ai_vmm.bench_suite import load_module

    return load_module(path, name)


def real_inputs() -> ModuleType:
    return _module("ai_vmm_models_real_inputs", REPO / "models" / "real_inputs.py")


# --- real inputs -------------------------------------------------------------------------------


def photo_crops(count: int = 36, size: int = 224) -> list[Feed]:
    """Square crops of the real photographs (data_*.png/jpg), resized, RGB in [0, 1], NHWC:
    MediaPipe's hand landmark input. Crops are seeded: the same every run."""
    from PIL import Image

    photos = sorted(p for p in CACHE.glob("data_*") if p.suffix in (".png", ".jpg"))
    rng = np.random.default_rng(14)
    feeds = []
    for index in range(count):
        with Image.open(photos[index % len(photos)]) as image:
            rgb = image.convert("RGB")
            side = int(min(rgb.size) * rng.uniform(0.4, 1.0))
            left = int(rng.integers(0, rgb.size[0] - side + 1))
            top = int(rng.integers(0, rgb.size[1] - side + 1))
            crop = rgb.crop((left, top, left + side, top + side)).resize((size, size))
        feeds.append({"input_1": (np.asarray(crop, np.float32) / 255.0)[None]})
    return feeds


def sentences(count: int = 48) -> list[Feed]:
    """Standard-library docstring sentences, one per sample, tokenized (uncased WordPiece)."""
    quant = _module("ai_vmm_models_quant_models", REPO / "models" / "quant_models.py")
    inputs = real_inputs()
    return [
        inputs.bert_tokens(CACHE / "bert_uncased_tokenizer.json", [text])
        for text in quant.docstring_sentences(count)
    ]


def speech_chunks(count: int = 48) -> list[Feed]:
    """Consecutive 32 ms windows of a real speech recording (pyannote.audio's sample), each
    with the LSTM state the model itself carried in from the previous window (run here in
    order with ONNX Runtime): what Silero VAD sees when it streams."""
    import onnxruntime as ort

    inputs = real_inputs()
    audio = inputs.load_wav_int16(CACHE / "pyannote_sample.wav")
    chunks = inputs.silero_chunks(audio, count * 512 / 16000, offset_s=6.8)
    session = ort.InferenceSession(str(CACHE / "silero_vad_openvino_16k.onnx"))
    state = np.zeros((2, 1, 128), np.float32)
    feeds = []
    for chunk in chunks:
        feed = {"input": chunk[None].astype(np.float32), "state": state}
        feeds.append(feed)
        state = session.run(None, feed)[1]
    return feeds


@dataclass
class Case:
    key: str
    title: str
    kind: str
    file: str
    samples: Callable[[], list[Feed]]
    inputs_note: str
    budgets: list[dict[str, float]] = field(default_factory=lambda: [{"cosine": 0.01}])


CASES = {
    "cnn": Case(
        "cnn",
        "MediaPipe hand landmarks (full)",
        "CNN (TFLite, exported to ONNX once)",
        "mp_hand_landmark_full.tflite",
        photo_crops,
        "36 seeded square crops of the 6 real photographs, 224x224 RGB in [0, 1]",
    ),
    "transformer": Case(
        "transformer",
        "paraphrase-MiniLM-L3-v2",
        "transformer encoder (ONNX)",
        "paraphrase_minilm_l3.onnx",
        sentences,
        "48 first sentences of standard-library module docstrings, uncased WordPiece",
        [{"cosine": 0.01}, {"cosine": 0.05}],
    ),
    "lstm": Case(
        "lstm",
        "Silero VAD 16 kHz",
        "LSTM with explicit state (ONNX)",
        "silero_vad_openvino_16k.onnx",
        speech_chunks,
        "48 consecutive 32 ms windows of a real speech recording, with the carried LSTM state",
    ),
}


# --- the cases ---------------------------------------------------------------------------------


def _nice(value: float) -> float:
    """A limit a person would write: two significant digits."""
    if value <= 0:
        return value
    digits = 1 - math.floor(math.log10(value))
    return round(value, digits)


def _p95(row: dict[str, Any]) -> float:
    return float(row["figures"]["latency_ms"]["p95"])


def _summary(deployment: Any) -> dict[str, Any]:
    chosen = deployment.explanation["chosen"]
    return {
        "chosen": chosen["key"],
        "p95_ms": _p95(chosen),
        "throughput": chosen["figures"]["throughput_per_s"],
        "accuracy_drops": chosen.get("accuracy_drops", {}),
        "preferences": deployment.explanation.get("preferences", []),
        "rule": deployment.explanation["rule"],
    }


def _deploy(vmm: Any, path: Path, limits: dict[str, Any], samples: list[Feed]) -> dict[str, Any]:
    from ai_vmm import ConstraintError

    started = time.perf_counter()
    try:
        # refresh: measured in this run, not a decision stored by an earlier one.
        with vmm.deploy(path, limits, samples, refresh=True) as deployment:
            result = {"outcome": "deployed", **_summary(deployment)}
            result["explain"] = deployment.explain()
    except ConstraintError as exc:
        result = {"outcome": "ConstraintError", "message": str(exc)}
    result["seconds"] = round(time.perf_counter() - started, 2)
    result["constraints"] = limits
    log(f"  {limits} -> {result.get('chosen', result['outcome'])}")
    return result


def run_case(vmm: Any, case: Case, seconds: float) -> dict[str, Any]:
    path = CACHE / case.file
    samples = case.samples()
    log(f"{case.title}: {len(samples)} samples")
    record: dict[str, Any] = {"title": case.title, "kind": case.kind, "inputs": case.inputs_note}
    survey = None
    for budget in case.budgets:
        log(f"survey with max_accuracy_drop {budget}")
        started = time.perf_counter()
        with vmm.deploy(path, {"max_accuracy_drop": budget}, samples, refresh=True) as deployment:
            survey = deployment.explanation
            record["survey_explain"] = deployment.explain()
        record["survey_seconds"] = round(time.perf_counter() - started, 1)
        record["budget"] = budget
        measured = [c for c in survey["candidates"] if c.get("figures")]
        fp32_best = min(_p95(c) for c in measured if c["precision"] == "fp32")
        faster = [
            c
            for c in measured
            if c["precision"] != "fp32"
            and not c.get("failed")
            and _p95(c) * INT8_MARGIN < fp32_best
        ]
        if faster:
            break
        log(f"  no low-precision candidate within {budget} is {INT8_MARGIN}x faster than fp32")
    assert survey is not None
    rows = [c for c in survey["candidates"] if c.get("figures")]
    record["candidates"] = [
        {
            "key": c["key"],
            "precision": c["precision"],
            "p95_ms": _p95(c),
            "throughput": c["figures"]["throughput_per_s"],
            "memory_mb": c["figures"]["memory_mb"],
            "watts": c["figures"].get("power", {}).get("watts"),
            "power_measured": c["figures"].get("power", {}).get("measured"),
            "drops": c.get("accuracy_drops", {}),
            "failed": c.get("failed", []),
        }
        for c in rows
    ]
    record["builds"] = survey["builds"]
    fp32 = min(_p95(c) for c in rows if c["precision"] == "fp32")
    low = [_p95(c) for c in rows if c["precision"] != "fp32" and not c.get("failed")]
    best_low = min(low) if low else None
    record["best_fp32_p95_ms"] = fp32
    record["best_low_precision_p95_ms"] = best_low
    cases: dict[str, Any] = {}
    cases["a"] = _deploy(
        vmm, path, {"max_latency_ms": _nice(3 * fp32), "preferred_hardware": PREFERRED}, samples
    )
    if best_low is not None and best_low * INT8_MARGIN < fp32:
        limit = _nice(math.sqrt(best_low * fp32))
        cases["b_fp32_only"] = _deploy(vmm, path, {"max_latency_ms": limit}, samples)
        cases["b"] = _deploy(
            vmm, path, {"max_latency_ms": limit, "max_accuracy_drop": record["budget"]}, samples
        )
    else:
        cases["b"] = {
            "outcome": "not shown",
            "message": (
                f"no low-precision candidate within {record['budget']} is {INT8_MARGIN}x faster "
                f"than fp32 here (best fp32 p95 {fp32:.3f} ms, best low precision "
                f"{'none' if best_low is None else f'{best_low:.3f} ms'})"
            ),
        }
    floor = min(_p95(c) for c in rows)
    cases["c"] = _deploy(
        vmm,
        path,
        {"max_latency_ms": _nice(0.4 * floor), "max_accuracy_drop": record["budget"]},
        samples,
    )
    record["cases"] = cases
    deployed = next((c for c in cases.values() if c["outcome"] == "deployed"), None)
    if deployed is not None:
        record["store_hit"] = _store_hit(vmm, path, deployed["constraints"], samples, seconds)
    return record


def _store_hit(
    vmm: Any, path: Path, limits: dict[str, Any], samples: list[Feed], seconds: float
) -> dict[str, Any]:
    """The (a) deploy again: in this process, and in a fresh one (imports and discovery too)."""
    started = time.perf_counter()
    vmm.deploy(path, limits, samples).close()
    in_process = time.perf_counter() - started
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp) / "samples"
        folder.mkdir()
        for index, feed in enumerate(samples):
            np.savez(folder / f"{index:04d}.npz", **feed)
        code = (
            "import time, json, sys\n"
            "t0 = time.perf_counter()\n"
            "from ai_vmm import VMM\n"
            f"vmm = VMM(store={str(vmm.store.root)!r}, measure_seconds={seconds!r})\n"
            "t1 = time.perf_counter()\n"
            f"d = vmm.deploy({str(path)!r}, json.loads(sys.argv[1]), {str(folder)!r})\n"
            "t2 = time.perf_counter()\n"
            "print(json.dumps({'total_s': t2 - t0, 'deploy_s': t2 - t1,"
            " 'import_discovery_s': t1 - t0, 'chosen': d.explanation['chosen']['key']}))\n"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, json.dumps(limits)],
            capture_output=True,
            text=True,
            check=True,
        )
    fresh = json.loads(out.stdout.strip().splitlines()[-1])
    log(f"  store hit: {in_process:.3f} s in process; fresh process {fresh}")
    return {"in_process_s": round(in_process, 3), "fresh_process": fresh}


# --- the report --------------------------------------------------------------------------------


def _limits_text(limits: dict[str, Any]) -> str:
    parts = [f"max_latency_ms={limits['max_latency_ms']:g}"]
    if "max_accuracy_drop" in limits:
        parts += [f"{k} drop <= {v:g}" for k, v in limits["max_accuracy_drop"].items()]
    if "preferred_hardware" in limits:
        parts.append("prefer " + " > ".join(limits["preferred_hardware"]))
    return "; ".join(parts)


def markdown(records: dict[str, Any], environment: dict[str, Any]) -> str:
    lines = [
        f"Measured {environment['date']} on {environment['cpu']} ({environment['cores']} cores); "
        f"load average {environment['load_before']} before, {environment['load_after']} after "
        f"(a shared machine: read the figures as this run's, the decisions as the point). "
        f"Command: `{environment['command']}`.",
        "",
        "| model | case | constraints | outcome | p95 ms | deploy s |",
        "|---|---|---|---|---|---|",
    ]
    labels = {
        "a": "(a) fp32 meets",
        "b_fp32_only": "(b) same limit, fp32 only",
        "b": "(b) only INT8 meets",
        "c": "(c) nothing meets",
    }
    for record in records.values():
        for name, case in record["cases"].items():
            if case["outcome"] == "not shown":
                lines.append(
                    f"| {record['title']} | {labels[name]} | | not shown: {case['message']} | | |"
                )
                continue
            outcome = (
                f"**{case['chosen']}**"
                if case["outcome"] == "deployed"
                else f"ConstraintError: {case['message']}"
            )
            p95 = f"{case['p95_ms']:.3f}" if case["outcome"] == "deployed" else ""
            lines.append(
                f"| {record['title']} | {labels[name]} | {_limits_text(case['constraints'])} | "
                f"{outcome} | {p95} | {case['seconds']} |"
            )
    lines += ["", "The first deployed case again, served from the deployment store:", ""]
    lines += ["| model | same process s | fresh process s (of which import + discovery) |"]
    lines += ["|---|---|---|"]
    for record in records.values():
        hit = record.get("store_hit")
        if hit is None:
            lines.append(f"| {record['title']} | no case deployed | |")
            continue
        fresh = hit["fresh_process"]
        lines.append(
            f"| {record['title']} | {hit['in_process_s']:.3f} | {fresh['total_s']:.2f} "
            f"({fresh['import_discovery_s']:.2f}) |"
        )
    for record in records.values():
        lines += [
            "",
            f"#### {record['title']}: every candidate of the survey",
            "",
            f"{record['kind']}; inputs: {record['inputs']}; accuracy budget "
            f"{', '.join(f'{k} {v:g}' for k, v in record['budget'].items())} on the held-out "
            f"quarter; survey (compiles included) {record['survey_seconds']} s.",
            "",
            "| candidate | p95 ms | /s | MB | W | accuracy drop | verdict |",
            "|---|---|---|---|---|---|---|",
        ]
        for row in record["candidates"]:
            watts = row["watts"]
            mark = "" if row["power_measured"] else " (est.)"
            drops = ", ".join(
                f"{k} {v:.4g}" for k, v in sorted(row["drops"].items()) if k == "cosine"
            )
            lines.append(
                f"| {row['key']} | {row['p95_ms']:.3f} | {row['throughput']:.1f} | "
                f"{row['memory_mb']} | {'-' if watts is None else f'{watts:.1f}{mark}'} | "
                f"{drops} | {'; '.join(row['failed']) or 'meets'} |"
            )
        refused = [b for b in record["builds"] if b["status"] not in ("built", "reused")]
        for build in refused:
            lines.append(f"\n{build['id']}: {build['status']}: {build.get('reason', '')}")
    example = next(iter(records.values()))["cases"]["a"].get("explain", "")
    if example:
        lines += ["", "`explain()` of the first (a) deploy:", "", "```", example, "```"]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="cnn,transformer,lstm")
    parser.add_argument("--seconds", type=float, default=1.0, help="measuring time a candidate")
    parser.add_argument("--store", type=Path, default=Path.home() / ".cache/ai-vmm/deploy-real")
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "deploy.md")
    parser.add_argument("--json", type=Path, default=REPO / "docs" / "deploy.json")
    args = parser.parse_args(argv)
    from ai_vmm import VMM

    environment = {
        "date": time.strftime("%Y-%m-%d"),
        "cpu": platform.processor() or platform.machine(),
        "cores": os.cpu_count(),
        "load_before": ", ".join(f"{v:.1f}" for v in os.getloadavg()),
        "command": "python scripts/deploy_real.py " + " ".join(argv or sys.argv[1:]),
    }
    vmm = VMM(store=args.store, measure_seconds=args.seconds, progress=lambda m: log(f"    {m}"))
    environment["cpu"] = vmm.inventory.cpu.model
    environment["cores"] = vmm.inventory.cpu.physical_cores
    records = {}
    for key in [k.strip() for k in args.models.split(",") if k.strip()]:
        records[key] = run_case(vmm, CASES[key], args.seconds)
    environment["load_after"] = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    args.json.write_text(json.dumps({"environment": environment, "models": records}, indent=1))
    text = args.out.read_text() if args.out.is_file() else f"{BEGIN}\n{END}\n"
    head, _, rest = text.partition(BEGIN)
    _, _, tail = rest.partition(END)
    args.out.write_text(f"{head}{BEGIN}\n{markdown(records, environment)}{END}{tail}")
    log(f"wrote {args.out} and {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
