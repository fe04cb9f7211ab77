"""The accuracy gate: a quantized model's outputs against the float model's, on held-out samples.

Metrics (per output, then over all outputs):

- ``max_abs`` / ``mean_abs``: absolute error over every element.
- ``cosine``: cosine similarity of each sample's output (flattened) with the float one; the mean
  and the minimum over samples are reported.
- ``top1``: for outputs that look like class scores (float, rank 2, at least two classes), the
  share of rows whose arg-max agrees with the float model's, in percent.

``--max-accuracy-drop METRIC=VALUE`` bounds how far each metric may move from a perfect match:
``cosine=0.01`` means a mean cosine similarity of at least 0.99, ``top1=1`` at most 1 point of
top-1 disagreement, ``max_abs`` / ``mean_abs`` the error itself. Without it the gate uses
``cosine=0.01``. The gate's score is the largest drop divided by its limit: 1.0 is exactly at
the limit, above 1.0 is over it (the number the accuracy-control searches drive below 1).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import CompileError

METRICS = ("cosine", "top1", "max_abs", "mean_abs")
DEFAULT_LIMITS: dict[str, float] = {"cosine": 0.01}

Outputs = dict[str, Any]


def parse_max_drop(specs: Sequence[str]) -> dict[str, float]:
    """``["cosine=0.01", "top1=1"]`` -> ``{"cosine": 0.01, "top1": 1.0}`` (comma lists too).

    Raises:
        CompileError: an unknown metric, a missing ``=``, or a negative or non-numeric value.
    """
    limits: dict[str, float] = {}
    for spec in (part.strip() for item in specs for part in item.split(",")):
        if not spec:
            continue
        metric, sep, text = spec.partition("=")
        metric = metric.strip().lower()
        if not sep or metric not in METRICS:
            raise CompileError(
                f"--max-accuracy-drop {spec}: expected METRIC=VALUE with METRIC one of "
                f"{', '.join(METRICS)} (e.g. cosine=0.01 or top1=1)"
            )
        try:
            value = float(text)
        except ValueError:
            raise CompileError(f"--max-accuracy-drop {spec}: '{text}' is not a number") from None
        if not math.isfinite(value) or value < 0:
            raise CompileError(f"--max-accuracy-drop {spec}: the limit must be >= 0")
        limits[metric] = value
    return limits


def looks_like_class_scores(value: Any) -> bool:
    """A float array of rank 2 with at least two columns: ``[batch, classes]``."""
    array = np.asarray(value)
    return array.dtype.kind == "f" and array.ndim == 2 and array.shape[1] >= 2


def compare_outputs(
    reference: Sequence[Outputs], candidate: Sequence[Outputs], names: Sequence[str]
) -> dict[str, Any]:
    """Metrics of ``candidate`` against ``reference`` (same samples, same order)."""
    per_output: dict[str, dict[str, Any]] = {}
    all_cosines: list[float] = []
    abs_sum, abs_count, abs_max = 0.0, 0, 0.0
    agree, rows = 0, 0
    for name in names:
        cosines: list[float] = []
        out_sum, out_count, out_max = 0.0, 0, 0.0
        out_agree, out_rows, scores = 0, 0, True
        for ref_sample, got_sample in zip(reference, candidate, strict=True):
            ref = np.asarray(ref_sample[name])
            got = np.asarray(got_sample[name])
            if ref.dtype.kind not in "fc" or ref.shape != got.shape:
                scores = False
                continue
            a = ref.astype(np.float64).ravel()
            b = got.astype(np.float64).ravel()
            err = np.abs(a - b)
            err = np.where(np.isnan(err), np.inf, err)
            out_sum += float(err.sum())
            out_count += err.size
            out_max = max(out_max, float(err.max()) if err.size else 0.0)
            norm = float(np.linalg.norm(a) * np.linalg.norm(b))
            cosines.append(float(np.dot(a, b) / norm) if norm > 0 else float(np.array_equal(a, b)))
            if looks_like_class_scores(ref):
                out_agree += int(np.sum(ref.argmax(axis=1) == got.argmax(axis=1)))
                out_rows += ref.shape[0]
            else:
                scores = False
        if not cosines:
            continue
        entry: dict[str, Any] = {
            "max_abs": out_max,
            "mean_abs": out_sum / max(out_count, 1),
            "cosine": float(np.mean(cosines)),
            "min_cosine": float(np.min(cosines)),
        }
        if scores and out_rows:
            entry["top1"] = 100.0 * out_agree / out_rows
            agree, rows = agree + out_agree, rows + out_rows
        per_output[name] = entry
        all_cosines += cosines
        abs_sum, abs_count, abs_max = (
            abs_sum + out_sum,
            abs_count + out_count,
            max(abs_max, out_max),
        )
    overall: dict[str, Any] = {"samples": len(reference)}
    if all_cosines:
        overall.update(
            {
                "max_abs": abs_max,
                "mean_abs": abs_sum / max(abs_count, 1),
                "cosine": float(np.mean(all_cosines)),
                "min_cosine": float(np.min(all_cosines)),
            }
        )
    if rows:
        overall["top1"] = 100.0 * agree / rows
    return {"overall": overall, "outputs": per_output}


def drops(metrics: dict[str, Any]) -> dict[str, float]:
    """How far each metric is from a perfect match (the quantity the limits bound)."""
    found: dict[str, float] = {}
    if "cosine" in metrics:
        found["cosine"] = max(0.0, 1.0 - float(metrics["cosine"]))
    if "top1" in metrics:
        found["top1"] = max(0.0, 100.0 - float(metrics["top1"]))
    for key in ("max_abs", "mean_abs"):
        if key in metrics:
            found[key] = float(metrics[key])
    return found


@dataclass
class AccuracyGate:
    """Compares candidates with the float model's outputs on the held-out samples."""

    reference: Sequence[Outputs]
    names: tuple[str, ...]
    limits: dict[str, float] = field(default_factory=lambda: dict(DEFAULT_LIMITS))

    def score(self, candidate: Sequence[Outputs], indices: Sequence[int]) -> float:
        """Largest drop / limit over the gated metrics for the samples at ``indices``."""
        reference = [self.reference[i] for i in indices]
        metrics = compare_outputs(reference, candidate, self.names)["overall"]
        return self._score(drops(metrics))

    def evaluate(self, candidate: Sequence[Outputs]) -> dict[str, Any]:
        """Metrics, drops, limits, score and verdict for outputs on every held-out sample."""
        compared = compare_outputs(self.reference, candidate, self.names)
        found = drops(compared["overall"])
        score = self._score(found)
        missing = sorted(set(self.limits) - set(found))
        return {
            "metrics": _rounded(compared["overall"]),
            "per_output": {k: _rounded(v) for k, v in compared["outputs"].items()},
            "drops": _rounded(found),
            "limits": dict(self.limits),
            "score": round(score, 4) if math.isfinite(score) else "inf",
            "passed": score <= 1.0,
            **(
                {"not_applicable": [f"{m}: no output looks like class scores" for m in missing]}
                if missing
                else {}
            ),
        }

    def _score(self, found: dict[str, float]) -> float:
        worst = 0.0
        for metric, limit in self.limits.items():
            if metric not in found:
                continue
            drop = found[metric]
            ratio = (math.inf if drop > 1e-12 else 0.0) if limit <= 0 else drop / limit
            worst = max(worst, ratio)
        return worst


def _rounded(values: dict[str, Any]) -> dict[str, Any]:
    return {k: round(v, 6) if isinstance(v, float) else v for k, v in values.items()}
