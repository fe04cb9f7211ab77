"""Do NaN and infinity pass through a compiled model the way they pass through the reference?

Backends disagree here, silently: on the small CNN of ``tests/compiler/test_special_values.py``
ONNX Runtime returns NaN logits for a NaN input and OpenVINO's CPU plugin returns finite ones
(its Relu maps NaN to 0; its MaxPool maps an all ``-inf`` window to a finite number). A user whose
inputs can carry NaN (a missing sensor value, a division upstream) must know whether the artifact
will hide it. Tolerance checks on ordinary samples cannot tell: they never feed such values.

``check_special_values`` feeds NaN, ``+inf`` and ``-inf`` into each floating-point input, once
filling the whole input and once in its first element only (the rest from the ordinary sample).
Where the reference returns a non-finite value, the candidate must too; where the reference
returns only finite values for a case, the case is not judged (the model legitimately absorbs it,
as a Clip does). The record is JSON-ready, for ``report.json``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

Runner = Callable[[dict[str, Any]], Mapping[str, Any]]

SPECIAL_VALUES: dict[str, float] = {"nan": np.nan, "+inf": np.inf, "-inf": -np.inf}
FILLS = ("all", "first")
MAX_INPUTS = 8
"""At most this many floating-point inputs are probed (each costs six runs of both models)."""


def check_special_values(
    reference: Runner, candidate: Runner, sample: Mapping[str, Any]
) -> dict[str, Any]:
    """Feed NaN and +/-inf where the reference propagates them; does the candidate do the same?

    Args:
        reference: runs the reference model (``{input name: array}`` -> ``{output name: array}``).
        candidate: runs the compiled model the same way.
        sample: one valid input dict; special values replace one input's values at a time.

    Returns:
        ``{"status", "passed", "cases", "summary"}``: ``status`` is ``"same"`` (every judged case
        keeps the reference's non-finite outputs), ``"differs"`` (some case turns a non-finite
        reference output finite, or the candidate fails on it), or ``"skipped"`` (no
        floating-point input, or the reference returns only finite values). ``passed`` is
        ``status != "differs"``. Each case names the input, value, fill, the non-finite counts
        per output of both models and a ``result``: ``same``, ``propagates`` (non-finite where
        the reference is, but NaN and inf mixed differently), ``lost``, ``error`` or
        ``reference finite``.
    """
    floats = [
        name
        for name, value in sample.items()
        if isinstance(value, np.ndarray) and value.dtype.kind == "f" and value.size > 0
    ][:MAX_INPUTS]
    if not floats:
        return _record("skipped", [], "the model has no floating-point input")
    cases = []
    for name in floats:
        for label, value in SPECIAL_VALUES.items():
            for fill in FILLS:
                cases.append(_case(reference, candidate, sample, name, label, value, fill))
    judged = [c for c in cases if c["result"] != "reference finite"]
    if not judged:
        return _record(
            "skipped", cases, "the reference returns only finite values for every special input"
        )
    bad = [c for c in judged if c["result"] in ("lost", "error")]
    if not bad:
        return _record(
            "same",
            cases,
            f"NaN/inf propagate as in the reference ({len(judged)} of {len(cases)} cases judged)",
        )
    first = bad[0]
    what = (
        "fails"
        if first["result"] == "error"
        else "returns finite values where the reference returns NaN/inf"
    )
    return _record(
        "differs",
        cases,
        f"the compiled model {what} in {len(bad)} of {len(judged)} cases, e.g. "
        f"{first['input']}={first['value']} ({first['fill']})",
    )


def _record(status: str, cases: list[dict[str, Any]], summary: str) -> dict[str, Any]:
    return {"status": status, "passed": status != "differs", "cases": cases, "summary": summary}


def _case(
    reference: Runner,
    candidate: Runner,
    sample: Mapping[str, Any],
    name: str,
    label: str,
    value: float,
    fill: str,
) -> dict[str, Any]:
    array = np.array(sample[name], copy=True)
    if fill == "all":
        array[...] = value
    else:
        array.reshape(-1)[0] = value
    feed = {**sample, name: array}
    case: dict[str, Any] = {"input": name, "value": label, "fill": fill}
    try:
        expected = _float_outputs(reference(dict(feed)))
    except Exception as exc:  # the reference refusing a special value is not the candidate's fault
        return case | {"result": "reference finite", "note": f"reference failed: {_text(exc)}"}
    case["reference"] = {k: _counts(v) for k, v in expected.items()}
    if not any(c["nonfinite"] for c in case["reference"].values()):
        return case | {"result": "reference finite"}
    try:
        actual = _float_outputs(candidate(dict(feed)))
    except Exception as exc:  # recorded, never raised: this is a finding, not a crash
        return case | {"result": "error", "error": _text(exc)}
    case["candidate"] = {k: _counts(v) for k, v in actual.items() if k in expected}
    case["result"] = _compare(expected, actual)
    return case


def _float_outputs(outputs: Mapping[str, Any]) -> dict[str, np.ndarray]:
    arrays = {}
    for name, value in outputs.items():
        if hasattr(value, "detach"):  # a torch tensor from a GPU partition
            value = value.detach().cpu().numpy()
        array = np.asarray(value)
        if array.dtype.kind in "fc":
            arrays[name] = array
    return arrays


def _counts(array: np.ndarray) -> dict[str, int]:
    nan = int(np.isnan(array).sum())
    posinf = int(np.isposinf(array).sum())
    neginf = int(np.isneginf(array).sum())
    return {"nonfinite": nan + posinf + neginf, "nan": nan, "+inf": posinf, "-inf": neginf}


def _compare(expected: dict[str, np.ndarray], actual: dict[str, np.ndarray]) -> str:
    result = "same"
    for name, ref in expected.items():
        out = actual.get(name)
        if out is None or out.shape != ref.shape:
            return "lost"
        ref_bad = ~np.isfinite(ref)
        if np.any(ref_bad & np.isfinite(out)):
            return "lost"
        same_nan = np.array_equal(np.isnan(ref), np.isnan(out))
        same_inf = np.array_equal(np.isposinf(ref), np.isposinf(out)) and np.array_equal(
            np.isneginf(ref), np.isneginf(out)
        )
        if not (same_nan and same_inf):
            result = "propagates"
    return result


def _text(exc: BaseException) -> str:
    return " ".join(f"{exc.__class__.__name__}: {exc}".split())[:200]


def summary_line(record: Mapping[str, Any]) -> str:
    """One line for ``vmmc inspect`` / progress output: ``NaN/inf: <status>: <summary>``."""
    return f"NaN/inf: {record.get('status', '?')}: {record.get('summary', '')}"
