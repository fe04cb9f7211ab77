"""ONNX backend node tests through the cuda target's ONNX -> torch converter, eagerly on the CPU.

Measures the op coverage of ``targets/cuda_convert.py`` without a GPU: every node test case of
the ONNX backend suite (the cases and the comparison of ``scripts/conformance.py``) runs as

1. ``node_support(node, opset)`` on every node of the main graph: a rejected node makes the case
   *unsupported* (the reason is kept and grouped: op not mapped, subgraph, element type, ...);
2. ``to_torch(model)`` (an ``onnx_ir`` model) in eval mode, called under ``torch.no_grad()`` on
   CPU tensors made from the case's inputs;
3. the outputs compared with the expected ones exactly as ``scripts/conformance.py`` does.

Each case ends as *pass*, *mismatch*, *error* (conversion or run exception, timeout, crash) or
*unsupported*. Cases run in ``scripts/conformance.py``'s worker pool, so a case that hangs or
crashes fails alone (``--timeout``). The report goes to ``docs/conformance-cuda.md``.

Usage::

    python scripts/conformance_cuda.py [--filter REGEX] [--limit N] [--jobs N] [--timeout S]
        [--out docs/conformance-cuda.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import datetime
import importlib.metadata
import json
import os
import re
import shlex
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

import conformance
from conformance import Case, Outcome, Task

TARGET = "cuda"
MODE = "torch"
DEFAULT_TIMEOUT_S = 60.0
STATUSES = ("pass", "mismatch", "error", "unsupported")


@dataclass
class CaseResult:
    """One case: its op (see :func:`case_op`), status and one-line reason."""

    case: str
    op: str
    status: str
    reason: str
    seconds: float


def status_of(outcome: Outcome) -> str:
    """``pass``, ``mismatch``, ``error`` or ``unsupported`` from a torch-mode outcome."""
    if outcome.passed:
        return "pass"
    if outcome.reason.startswith("unsupported:"):
        return "unsupported"
    if outcome.reason.startswith("mismatch:"):
        return "mismatch"
    return "error"


_UNSUPPORTED_KINDS = (
    ("is not in our ONNX->torch op mapping", "op not mapped"),
    ("has a subgraph", "subgraph (control flow)"),
    ("uses element type", "element type"),
    ("Cast to ", "element type"),
    ("ops are not converted to torch", "non-standard domain"),
    (" before opset ", "opset"),
    ("(sequences/optionals)", "sequence/optional type"),
)


def unsupported_kind(reason: str) -> str:
    """The family of a ``node_support`` rejection (``op not mapped``, ``subgraph``, ...)."""
    for needle, kind in _UNSUPPORTED_KINDS:
        if needle in reason:
            return kind
    return "op feature"


_SCHEMAS: list[str] | None = None
_NAME_ALIASES = {
    "sce": "SoftmaxCrossEntropyLoss",
    "nllloss": "NegativeLogLikelihoodLoss",
    "mvn": "MeanVarianceNormalization",
    "flexattention": "FlexAttention",
}
"""Case-name prefixes (underscores removed) that do not spell their op."""


def _schema_names() -> list[str]:
    global _SCHEMAS
    if _SCHEMAS is None:
        import onnx.defs

        names = {s.name for s in onnx.defs.get_all_schemas_with_history() if s.domain == ""}
        _SCHEMAS = sorted(names, key=len, reverse=True)
    return _SCHEMAS


def case_op(case: Case) -> str:
    """The op a case tests: its graph's one op type (Constant aside), else from its name.

    Multi-op graphs (``*_expanded`` function bodies, a few composite tests) are attributed to
    the longest ONNX op name that prefixes the case name with underscores removed
    (``test_layer_normalization_2d_expanded`` -> ``LayerNormalization``).
    """
    import onnx

    graph = onnx.load_from_string(case.model).graph
    ops = sorted({n.op_type for n in graph.node if n.op_type != "Constant"})
    if len(ops) == 1 and not case.name.endswith("_expanded"):
        return ops[0]
    key = case.name.removeprefix("test_").replace("_", "").lower()
    for prefix, name in _NAME_ALIASES.items():
        if key.startswith(prefix):
            return name
    for name in _schema_names():
        if key.startswith(name.lower()):
            return name
    return ops[0] if len(ops) == 1 else "+".join(ops) or "(none)"


def run(cases: Sequence[Case], jobs: int, timeout_s: float) -> list[CaseResult]:
    """Run every case through the converter; results in case order."""
    tasks = [Task(case, TARGET, MODE) for case in cases]
    started = time.monotonic()

    def progress(done: int, total: int) -> None:
        if done % 200 == 0 or done == total:
            minutes = (time.monotonic() - started) / 60
            print(f"[conformance-cuda] {done}/{total} ({minutes:.1f} min)", file=sys.stderr)

    outcomes = conformance.run_tasks(tasks, jobs, timeout_s, progress)
    return [
        CaseResult(o.case, case_op(c), status_of(o), o.reason, o.seconds)
        for c, o in zip(cases, outcomes, strict=True)
    ]


def versions() -> dict[str, str]:
    found = {}
    for name in ("torch", "onnx", "onnx-ir", "numpy", "ai-vmm"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("`", "'")


def _not_mapped_op(reason: str) -> str:
    match = re.search(r"unsupported: (\w+) is not in our", reason)
    return match.group(1) if match else "?"


def _rejection_key(reason: str) -> str:
    reason = reason.removeprefix("unsupported: ")
    match = re.search(r"(?:uses element type|^Cast to) (\w+)", reason)
    return f"element type {match.group(1)}" if match else reason


def render_markdown(results: Sequence[CaseResult], command: str, elapsed_s: float) -> str:
    """The ``docs/conformance-cuda.md`` report."""
    count = collections.Counter(r.status for r in results)
    convertible = len(results) - count["unsupported"]
    kinds = collections.Counter(
        unsupported_kind(r.reason) for r in results if r.status == "unsupported"
    )
    unmapped = collections.Counter(
        _not_mapped_op(r.reason)
        for r in results
        if r.status == "unsupported" and unsupported_kind(r.reason) == "op not mapped"
    )
    other_unsupported = collections.Counter(
        _rejection_key(r.reason)
        for r in results
        if r.status == "unsupported" and unsupported_kind(r.reason) != "op not mapped"
    )
    per_op: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for r in results:
        per_op[r.op][r.status] += 1
    conversion_errors = sum(
        1 for r in results if r.status == "error" and "ConversionError" in r.reason
    )
    lines = [
        "# ONNX node tests through the cuda target's ONNX -> torch converter (CPU, eager)",
        "",
        "Generated by `scripts/conformance_cuda.py`; do not edit by hand.",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- command: `{command}`",
        f"- wall time: {elapsed_s / 60:.1f} min",
        "",
        "This measures the op coverage of `targets/cuda_convert.py` on the ONNX backend node "
        "test suite (the cases `scripts/conformance.py` runs, generated in memory by "
        "`onnx.backend.test.case.node.collect_testcases()`). Per case: `node_support(node, "
        "opset)` on every node of the main graph (a rejected node makes the case "
        "**unsupported**); otherwise `to_torch(onnx_ir model)` in eval mode, called under "
        "`torch.no_grad()` on CPU tensors made from the inputs, and the outputs compared as "
        "`scripts/conformance.py` compares them: same shape and dtype, exact for integers and "
        f"booleans, floats within rtol {conformance.RTOL:g} / atol {conformance.ATOL:g} (or "
        "the case's own if larger; two ULPs for bfloat16), NaN equal to NaN. **error** is an "
        "exception while converting or running (or a timeout / crash of the worker); "
        "**mismatch** wrong values, shape or dtype. This is the eager module on the CPU, not "
        "the AOTInductor-compiled one on the GPU: export and Inductor can fail or differ where "
        "eager passes.",
        "",
        "| cases | convertible (node_support accepts) | passed | mismatched | errors "
        "| unsupported |",
        "|---:|---:|---:|---:|---:|---:|",
        f"| {len(results)} | {convertible} | {count['pass']} | {count['mismatch']} | "
        f"{count['error']} | {count['unsupported']} |",
        "",
        f"Of the errors, {conversion_errors} are a `ConversionError` raised while running "
        "(a feature of the op the converter does not handle although `node_support` accepted "
        "the node).",
        "",
        "## Unsupported cases by reason",
        "",
        "| reason | cases |",
        "|---|---:|",
    ]
    lines += [f"| {_md(kind)} | {n} |" for kind, n in kinds.most_common()]
    lines += [
        "",
        "Ops not in the mapping (cases whose first rejected node is that op): "
        + ", ".join(f"{op} ({n})" for op, n in sorted(unmapped.items()))
        + ".",
        "",
        "The other rejections (element types grouped over ops):",
        "",
        "| rejection | cases |",
        "|---|---:|",
    ]
    lines += [f"| {_md(reason)} | {n} |" for reason, n in sorted(other_unsupported.items())]
    lines += [
        "",
        "## Per op",
        "",
        "A case counts for the op it tests: its graph's single op type (Constant aside), or for "
        "graphs of several ops (`*_expanded` function bodies and a few composite tests) the "
        "ONNX op its name starts with. failed = mismatched + errors.",
        "",
        "| op | cases | passed | failed | unsupported |",
        "|---|---:|---:|---:|---:|",
    ]
    for op in sorted(per_op, key=str.lower):
        c = per_op[op]
        lines.append(
            f"| {_md(op)} | {sum(c.values())} | {c['pass']} | "
            f"{c['mismatch'] + c['error']} | {c['unsupported']} |"
        )
    failures = [r for r in results if r.status in ("mismatch", "error")]
    families = collections.Counter(conformance.reason_family(r.reason) for r in failures)
    dependent = [
        r
        for r in failures
        if "computed from tensor data" in r.reason or "Range over computed" in r.reason
    ]
    expanded = sum(1 for r in dependent if "_expanded" in r.case)
    lines += [
        "",
        "## Failures by reason",
        "",
        f"{len(dependent)} of the {len(failures)} failures are the converter refusing a "
        "shape-like argument computed from tensor data (Reshape shape, Reduce* axes, Pad pads, "
        "Range bounds, ...): `torch.export` cannot read tensor data, so the converter takes "
        "these only from constants, initializers or `Shape` arithmetic, as exported models "
        "give them. In the single-op cases the argument is a graph input of the node test; in "
        f"the {expanded} `_expanded` cases among them it can also be computed inside the "
        "function body by shape arithmetic the converter does not follow.",
        "",
        "| cases | reason |",
        "|---:|---|",
    ]
    lines += [f"| {n} | {_md(reason)} |" for reason, n in families.most_common()]
    lines += ["", f"## Failures ({len(failures)})", ""]
    lines += [f"- `{r.case}` ({r.op}): {_md(r.reason)}" for r in failures] or ["None."]
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--filter", default=None, help="regex on case names (re.search)")
    parser.add_argument("--limit", type=int, default=None, help="at most N cases")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, help="s per case")
    parser.add_argument("--out", default="docs/conformance-cuda.md", help="markdown report")
    parser.add_argument("--json", default=None, help="also write every result as JSON here")
    args = parser.parse_args(argv)
    started = time.monotonic()
    cases = conformance.load_cases(args.filter, args.limit)
    print(f"[conformance-cuda] {len(cases)} cases, {args.jobs} jobs", file=sys.stderr)
    results = run(cases, args.jobs, args.timeout)
    elapsed = time.monotonic() - started
    command = "python scripts/conformance_cuda.py " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(render_markdown(results, command.strip(), elapsed))
    if args.json:
        Path(args.json).write_text(
            json.dumps({"versions": versions(), "results": [asdict(r) for r in results]}, indent=1)
        )
    count = collections.Counter(r.status for r in results)
    print(", ".join(f"{s} {count[s]}" for s in STATUSES) + f" of {len(results)} cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
