"""``vmmc bench --suite real``: real public models at their real shapes against the baselines.

For each model of ``models/realmodels.py`` (real ONNX models with dynamic axes taken out of
wheels, and their real inputs made the way each model's package makes them):

1. compile with ``--target auto`` twice: with no hints at all, and with the real inputs as
   samples (``ai_vmm.compile(..., samples=...)``; where this build has no ``samples``
   argument, with ``input_shapes`` fixed to the first sample's shapes instead, and the report
   says so);
2. load both artifacts, plain ONNX Runtime (default session) and plain OpenVINO (default
   ``compile_model`` on CPU) in one process, check every artifact's outputs against ONNX
   Runtime on every real sample;
3. time them at the first sample's shapes in interleaved rounds (the order rotates each
   round, so drift and order effects hit everyone alike); per round, the ratio ours / best
   baseline (one direction: below 1 is faster than the better of the two plain runtimes);
   the report gives the median ratio with its interquartile range over rounds and the load
   average before and after.

The page it writes (``docs/performance-real.md`` by default) is generated whole; a compile
that fails is a row with its one-line error, not a crash.
"""

from __future__ import annotations

import inspect
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import numpy as np

from ai_vmm.bench import artifact_contender, onnxruntime_contender, openvino_contender
from ai_vmm.bench_report import Say, environment
from ai_vmm.bench_suite import load_module
from ai_vmm.runtime.errors import InputError

RTOL, ATOL = 1e-3, 1e-4
BASELINES = ("onnxruntime", "openvino")


def load_realmodels(path: Path) -> ModuleType:
    """Import ``models/realmodels.py`` by path (``models/`` is not an installed package)."""
    if not path.is_file():
        raise InputError(
            f"--suite real needs {path}: run from the repository root (models/realmodels.py)"
        )
    return load_module(path, "ai_vmm_models_realmodels")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text[:400]}"


def _compile(
    source: Path, out: Path, samples: list[dict[str, np.ndarray]] | None
) -> dict[str, Any]:
    """Compile with ``--target auto``: no hints (``samples=None``) or with the real samples."""
    import ai_vmm

    kwargs: dict[str, Any] = {}
    how = "no hints"
    if samples is not None:
        if "samples" in inspect.signature(ai_vmm.compile).parameters:
            kwargs["samples"] = samples
            how = "samples"
        else:
            # This build predates samples=: the closest hint it takes is the shapes themselves.
            kwargs["input_shapes"] = [
                f"{k}[{','.join(str(d) for d in v.shape)}]" for k, v in samples[0].items() if v.ndim
            ]
            how = "input shapes"
    start = time.perf_counter()
    try:
        result = ai_vmm.compile(source, "auto", out, **kwargs)
    except Exception as exc:  # a failed compile is a row of the table, with its error
        return {"how": how, "ok": False, "error": _one_line(exc)}
    from ai_vmm.runtime.artifact import read_manifest

    manifest = read_manifest(result.path)
    return {
        "how": how,
        "ok": True,
        "path": str(result.path),
        "compile_s": round(time.perf_counter() - start, 1),
        "chosen": sorted({f"{p.target}:{p.device}" for p in manifest.partitions}),
        "partitions": len(manifest.partitions),
        # The executor settings tuning chose (e.g. threads): they explain many ratios.
        "configs": [p.config for p in manifest.partitions],
    }


def _compare(got: Any, want: list[np.ndarray]) -> tuple[bool, float]:
    outs = list(got.values()) if isinstance(got, dict) else list(got)
    if len(outs) != len(want):
        return False, float("inf")
    worst, ok = 0.0, True
    for a, b in zip(outs, want, strict=True):
        x, y = np.asarray(a), np.asarray(b)
        if x.shape != y.shape:
            return False, float("inf")
        if x.size:
            x64, y64 = x.astype(np.float64), y.astype(np.float64)
            worst = max(worst, float(np.max(np.abs(x64 - y64))))
            ok = ok and bool(np.allclose(x64, y64, rtol=RTOL, atol=ATOL))
    return ok, worst


def check_artifact(
    path: Path, source: Path, samples: list[dict[str, np.ndarray]]
) -> dict[str, Any]:
    """Run an artifact on every real sample and compare with plain ONNX Runtime."""
    import onnxruntime as ort

    from ai_vmm.runtime import load

    session = ort.InferenceSession(str(source), providers=["CPUExecutionProvider"])
    model = load(path)
    rows = []
    for feed in samples:
        shapes = {k: list(v.shape) for k, v in feed.items()}
        try:
            ok, err = _compare(model.run(feed), session.run(None, feed))
            rows.append({"shapes": shapes, "match": ok, "max_abs": err})
        except Exception as exc:  # a run that fails at a real shape is the finding
            rows.append({"shapes": shapes, "match": False, "error": _one_line(exc)})
    return {"match": all(r["match"] for r in rows), "samples": rows}


def time_rounds(
    runs: dict[str, Callable[[], Any]], rounds: int, box_s: float, say: Say
) -> dict[str, list[float]]:
    """Per contender, the median call time (ms) of each round; the order rotates by round."""
    names = list(runs)
    medians: dict[str, list[float]] = {n: [] for n in names}
    for index in range(rounds):
        order = names[index % len(names) :] + names[: index % len(names)]
        for name in order:
            run = runs[name]
            timed: list[float] = []
            deadline = time.perf_counter() + box_s
            # At least one call: a slow model (a 736x1472 detector on a busy machine) gets
            # one timed call per round, its spread then shows across rounds.
            while not timed or time.perf_counter() < deadline:
                start = time.perf_counter()
                run()
                timed.append((time.perf_counter() - start) * 1000.0)
            medians[name].append(statistics.median(timed))
        if (index + 1) % 5 == 0:
            say(f"round {index + 1}/{rounds}")
    return medians


def round_ratio(ours: list[float], best: list[float]) -> dict[str, float]:
    per_round = sorted(o / b for o, b in zip(ours, best, strict=True))
    q1, q2, q3 = np.percentile(per_round, [25, 50, 75])
    return {"median": round(float(q2), 3), "q1": round(float(q1), 3), "q3": round(float(q3), 3)}


def bench_model(
    rm: ModuleType, name: str, rounds: int, box_s: float, work: Path, say: Say
) -> dict[str, Any]:
    """Compile, check and time one real model; everything that happened, as a dict."""
    spec = rm.MODELS[name]
    source = rm.model_path(name)
    samples = rm.samples(name)
    feed = samples[0]
    result: dict[str, Any] = {
        "model": name,
        "kind": spec.kind,
        "package": spec.package,
        "dynamic": {k: {str(a): d for a, d in v.items()} for k, v in spec.dynamic.items()},
        "shapes": {k: list(v.shape) for k, v in feed.items()},
        "sample_shapes": [{k: list(v.shape) for k, v in f.items()} for f in samples],
    }
    variants = {"nohint": None, "samples": samples}
    for variant, given in variants.items():
        say(f"compiling ({variant})")
        built = _compile(source, work / f"{name}-{variant}.vmm", given)
        if built["ok"]:
            # An artifact built for fixed shapes is checked at those shapes only.
            checked = samples if built["how"] != "input shapes" else samples[:1]
            try:
                built.update(check_artifact(Path(built["path"]), source, checked))
            except Exception as exc:  # an artifact that cannot load is the finding
                built.update({"ok": False, "error": f"load: {_one_line(exc)}"})
        result[variant] = built
    contenders = {
        "onnxruntime": onnxruntime_contender(source, feed),
        "openvino": openvino_contender(source, feed),
    }
    for variant in variants:
        if result[variant]["ok"]:
            contenders[variant] = artifact_contender(Path(result[variant]["path"]), feed)[0]
    runs: dict[str, Callable[[], Any]] = {}
    result["baseline_errors"] = {}
    for key, contender in contenders.items():
        say(f"loading {key}")
        try:
            run = contender.load()
            for _ in range(3):
                run()
        except Exception as exc:  # e.g. plain OpenVINO refusing a model: that column is n/a
            if key in BASELINES:
                result["baseline_errors"][key] = _one_line(exc)
            else:  # our artifact fails at the real shape: the check above says so too
                result[key]["match"] = False
                result[key]["timing_error"] = _one_line(exc)
            continue
        runs[key] = run
    result["load_before"] = [round(x, 2) for x in os.getloadavg()]
    medians = time_rounds(runs, rounds, box_s, say)
    result["load_after"] = [round(x, 2) for x in os.getloadavg()]
    result["p50_ms"] = {k: round(statistics.median(v), 4) for k, v in medians.items()}
    result["round_ms"] = {k: [round(x, 4) for x in v] for k, v in medians.items()}
    loaded = [b for b in BASELINES if b in medians]
    if not loaded:
        return result
    best = min(loaded, key=lambda b: result["p50_ms"][b])
    result["best_baseline"] = best
    for variant in variants:
        if variant in medians:
            # Against the baseline that is faster over all rounds, round by round (the
            # per-round minimum of two noisy times would be biased low).
            result[variant]["ratio"] = round_ratio(medians[variant], medians[best])
    return result


def run_real(
    realmodels_path: Path,
    out: Path,
    names: list[str] | None,
    seconds: float,
    command: str,
    say: Say,
    rounds: int = 15,
) -> list[dict[str, Any]]:
    """Benchmark the real models (default: those marked ``bench``); write ``out`` and its
    ``.json``. ``seconds`` is the time each contender gets per model, spread over ``rounds``."""
    rm = load_realmodels(realmodels_path)
    chosen = names or [n for n, m in rm.MODELS.items() if m.bench]
    unknown = sorted(set(chosen) - set(rm.MODELS))
    if unknown:
        raise InputError(f"not a real model: {', '.join(unknown)} (known: {', '.join(rm.MODELS)})")
    try:
        rm.fetch(chosen)
    except rm.FetchError as exc:
        raise InputError(f"cannot fetch the real models: {exc}") from exc
    results = []
    env = environment()
    with tempfile.TemporaryDirectory(prefix="ai-vmm-real-") as tmp:
        for index, name in enumerate(chosen, 1):
            prefix = f"[{index}/{len(chosen)}] {name}"
            say(f"{prefix}: fetching inputs")

            def model_say(message: str, prefix: str = prefix) -> None:
                say(f"{prefix}: {message}")

            result = bench_model(rm, name, rounds, seconds / rounds, Path(tmp), model_say)
            results.append(result)
            say(f"{prefix}: {summary_line(result)}")
            _write(out, results, env, command)
    return results


def summary_line(result: dict[str, Any]) -> str:
    parts = []
    for variant in ("nohint", "samples"):
        built = result[variant]
        if not built["ok"]:
            parts.append(f"{variant}: FAILED ({built['error'][:120]})")
        else:
            ratio = built.get("ratio", {}).get("median", "n/a")
            match = "match" if built["match"] else "MISMATCH"
            parts.append(f"{variant}: {','.join(built['chosen'])} {match} ours/best {ratio}")
    return "; ".join(parts)


def _write(out: Path, results: list[dict[str, Any]], env: dict[str, Any], command: str) -> None:
    from ai_vmm.bench_real_report import markdown

    env = {**env, "load_average_end": [round(x, 2) for x in os.getloadavg()]}
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(markdown(results, env, command))
    out.with_suffix(".json").write_text(
        json.dumps({"environment": env, "command": command, "results": results}, indent=2) + "\n"
    )


def suite_real(
    models_dir: Path, out: Path, models: str | None, seconds: float, command: str, say: Say
) -> None:
    """``vmmc bench --suite real`` as the CLI calls it: the default report of the ``bench``
    command (``docs/performance.md``, the zoo's page) becomes ``docs/performance-real.md``."""
    if out == Path("docs/performance.md"):
        out = Path("docs/performance-real.md")
    chosen = [m for m in (models or "").split(",") if m] or None
    run_real(models_dir / "realmodels.py", out, chosen, seconds, command, say)
    say(f"wrote {out}, {out.with_suffix('.json')}")
