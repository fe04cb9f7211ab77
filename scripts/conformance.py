"""ONNX backend node-test conformance: the raw backends against ai-vmm's compiled artifacts.

Every node test case of the ONNX backend test suite (``collect_testcases()``, generated in memory)
runs two ways per target:

- ``raw`` ONNX Runtime: ``onnxruntime.InferenceSession`` on the uncompiled model (CPU, defaults);
- ``raw`` OpenVINO: ``openvino.Core().compile_model(model_path, "CPU")`` with
  ``INFERENCE_PRECISION_HINT: f32`` (the CPU plugin would otherwise pick bf16/f16 on hardware that
  has it, and the compiled artifacts run in f32 too);
- ``compiled`` for each target: ``ai_vmm.compile(model, target=..., tune=False)`` (verification
  on unless ``--no-verify``; with one target, tuning would only time it) then
  ``ai_vmm.load(path).run(inputs)``.

A third mode, ``torch`` (used by ``scripts/conformance_cuda.py``), runs the cuda target's ONNX ->
torch converter eagerly on the CPU.

Test data is fed as the ONNX runner does, with two conversions the raw backends need: TensorProto
data becomes numpy (``numpy_helper.to_array``) and numpy scalars become 0-d arrays (ONNX Runtime
rejects ``np.float32(1.0)`` as an input).

Each output is compared with the expected one: same shape and dtype, exact for integers, booleans
and strings, ``|got - want| <= atol + rtol * |want|`` for floats (rtol 1e-3, atol 1e-5, or the
case's own if larger; two ULPs for bfloat16) with NaN equal to NaN; sequences elementwise.

A *loss* is a case the raw backend passes on the raw model while the compiled artifact fails it:
the compiler must lose none, and the script exits 1 when it does. Cases run in worker processes
with a per-case timeout; a worker that crashes or hangs fails that one run and is replaced.

Usage::

    python scripts/conformance.py [--targets openvino,onnxruntime] [--filter REGEX] [--limit N]
        [--jobs N] [--timeout S] [--no-verify] [--out docs/conformance.md] [--json out.json]
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import datetime
import importlib
import importlib.metadata
import json
import multiprocessing
import multiprocessing.connection
import os
import re
import shlex
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

TARGETS: dict[str, str] = {"openvino": "openvino:CPU", "onnxruntime": "onnxruntime:CPU"}
"""Target name (as ``--targets`` spells it) -> the ai-vmm device it compiles for."""
MODES = ("raw", "compiled")
RTOL = 1e-3
ATOL = 1e-5
BFLOAT16_RTOL = 2.0**-6
"""Two bfloat16 ULPs, as the ONNX backend test runner allows."""
DEFAULT_TIMEOUT_S = 180.0
TASKS_PER_WORKER = 200
"""A worker is replaced after this many runs, so leaks in a backend stay bounded."""
OV_RAW_CONFIG = {"INFERENCE_PRECISION_HINT": "f32"}
_EXACT_LOW_BIT = ("int2", "uint2", "int4", "uint4")
_NODE_PACKAGE = "onnx.backend.test.case.node"


# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    """One node test case in a picklable form (TensorProto data already converted to numpy)."""

    name: str
    model: bytes
    data_sets: tuple[tuple[tuple[Any, ...], tuple[Any, ...]], ...]
    rtol: float
    atol: float


def _to_value(item: Any) -> Any:
    """Test data as the runtimes take it: numpy arrays, lists of them, or ``None``."""
    import onnx

    if isinstance(item, onnx.TensorProto):
        return onnx.numpy_helper.to_array(item)
    if isinstance(item, list | tuple):
        return [_to_value(x) for x in item]
    if item is None or isinstance(item, np.ndarray):
        return item
    return np.asarray(item)


def to_case(test_case: Any) -> Case:
    """Convert an ``onnx.backend.test.case.test_case.TestCase`` into a :class:`Case`."""
    data_sets = tuple(
        (tuple(_to_value(x) for x in inputs), tuple(_to_value(x) for x in outputs))
        for inputs, outputs in test_case.data_sets
    )
    return Case(
        name=test_case.name,
        model=test_case.model.SerializeToString(),
        data_sets=data_sets,
        rtol=float(test_case.rtol),
        atol=float(test_case.atol),
    )


def load_cases(
    pattern: str | None = None, limit: int | None = None, modules: Sequence[str] = ()
) -> list[Case]:
    """The node test cases whose name matches ``pattern`` (``re.search``), at most ``limit``.

    ``modules`` (e.g. ``["add", "gather"]``) generates only those modules of
    ``onnx.backend.test.case.node`` (fast: importing a module generates its cases); by default
    every case is generated with ``collect_testcases()`` (about 15 s).
    """
    import warnings

    node = importlib.import_module(_NODE_PACKAGE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the generators overflow float casts on purpose
        if modules:
            for module in modules:
                importlib.import_module(f"{_NODE_PACKAGE}.{module}")
            found = list(node._NodeTestCases)
        else:
            found = list(node.collect_testcases())
    regex = re.compile(pattern) if pattern else None
    selected = [c for c in found if regex is None or regex.search(c.name)]
    selected.sort(key=lambda c: c.name)
    if limit is not None:
        selected = selected[:limit]
    return [to_case(c) for c in selected]


# --------------------------------------------------------------------------------------------
# Comparison
# --------------------------------------------------------------------------------------------


def compare_value(want: Any, got: Any, rtol: float, atol: float, where: str) -> str | None:
    """``None`` when ``got`` matches ``want``, else a one-line reason."""
    if isinstance(want, list | tuple):
        if not isinstance(got, list | tuple):
            return f"{where}: expected a sequence, got {type(got).__name__}"
        if len(got) != len(want):
            return f"{where}: sequence of {len(got)}, expected {len(want)}"
        for index, (w, g) in enumerate(zip(want, got, strict=True)):
            reason = compare_value(w, g, rtol, atol, f"{where}[{index}]")
            if reason:
                return reason
        return None
    if want is None:
        return None if got is None else f"{where}: expected an empty optional"
    if got is None or isinstance(got, list | tuple | dict):
        return f"{where}: expected a tensor, got {type(got).__name__}"
    want_a, got_a = np.asarray(want), np.asarray(got)
    if got_a.shape != want_a.shape:
        return f"{where}: shape {list(got_a.shape)}, expected {list(want_a.shape)}"
    if want_a.dtype.kind in "OUS":
        if got_a.dtype.kind not in "OUS":
            return f"{where}: dtype {got_a.dtype}, expected strings"
        equal = np.array_equal(got_a.astype(object), want_a.astype(object))
        return None if equal else f"{where}: strings differ"
    if got_a.dtype != want_a.dtype:
        return f"{where}: dtype {got_a.dtype}, expected {want_a.dtype}"
    if want_a.dtype.name in _EXACT_LOW_BIT or want_a.dtype.kind in "biu":
        same = np.array_equal(got_a.astype(np.int64), want_a.astype(np.int64))
        if same:
            return None
        bad = int(np.count_nonzero(got_a.astype(np.int64) != want_a.astype(np.int64)))
        return f"{where}: {bad} of {want_a.size} values differ"
    if want_a.dtype.name == "bfloat16":
        rtol = max(rtol, BFLOAT16_RTOL)
    g64, w64 = got_a.astype(np.float64), want_a.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        same_special = (np.isnan(g64) & np.isnan(w64)) | (np.isinf(w64) & (g64 == w64))
        err = np.where(same_special, 0.0, np.abs(g64 - w64))
        err = np.where(np.isnan(err), np.inf, err)
        ok = err <= atol + rtol * np.abs(np.nan_to_num(w64))
    if bool(np.all(ok)):
        return None
    bad = int(np.size(ok) - np.count_nonzero(ok))
    return f"{where}: {bad} of {want_a.size} values differ (max abs error {float(err.max()):.3g})"


def compare_outputs(
    want: Sequence[Any], got: Sequence[Any], names: Sequence[str], rtol: float, atol: float
) -> str | None:
    """Compare every output; ``None`` when all match, else the first mismatch as a reason."""
    if len(got) != len(want):
        return f"mismatch: {len(got)} outputs, expected {len(want)}"
    for name, w, g in zip(names, want, got, strict=True):
        reason = compare_value(w, g, rtol, atol, f"output '{name}'")
        if reason:
            return "mismatch: " + reason
    return None


# --------------------------------------------------------------------------------------------
# One run (inside a worker process)
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Task:
    """One way of running one case: ``mode`` ``raw`` or ``compiled`` on ``target``."""

    case: Case
    target: str
    mode: str
    verify: bool = True


@dataclass
class Outcome:
    """What one run gave: passed, or the reason it failed."""

    case: str
    target: str
    mode: str
    passed: bool
    reason: str = ""
    seconds: float = 0.0


Runner = Callable[[bytes, Path, Sequence[Any]], list[Any]]


# OpenVINO prefixes its messages with the C++ source locations they passed through.
_SOURCE_LOCATION = re.compile(r"(Exception from|Check '[^']*' failed at) \S+:\d+:\s*")


def clean_message(exc: BaseException | str) -> str:
    """An error message on one line, without OpenVINO's C++ source locations."""
    return " ".join(_SOURCE_LOCATION.sub("", str(exc)).split())


def _one_line(exc: BaseException) -> str:
    text = clean_message(exc)
    return f"{exc.__class__.__name__}: {text[:300]}" if text else exc.__class__.__name__


def _graph_names(model: bytes) -> tuple[list[str], list[str]]:
    import onnx

    proto = onnx.load_from_string(model)
    return [v.name for v in proto.graph.input], [v.name for v in proto.graph.output]


def _run_raw_onnxruntime(model: bytes, work: Path, inputs: Sequence[Any]) -> Callable[..., Any]:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(model, options, providers=["CPUExecutionProvider"])
    names = [i.name for i in session.get_inputs()]

    def run(values: Sequence[Any]) -> list[Any]:
        feed = {n: v for n, v in zip(names, values, strict=False) if v is not None}
        return list(session.run(None, feed))

    return run


def _run_raw_openvino(model: bytes, work: Path, inputs: Sequence[Any]) -> Callable[..., Any]:
    import openvino as ov

    path = work / "model.onnx"
    path.write_bytes(model)
    compiled = ov.Core().compile_model(str(path), "CPU", OV_RAW_CONFIG)
    input_names, output_names = _graph_names(model)
    ports_in = compiled.inputs
    ports_out = compiled.outputs

    def port_index(ports: Sequence[Any], name: str, fallback: int) -> int:
        for index, port in enumerate(ports):
            if name in port.get_names():
                return index
        return fallback

    def run(values: Sequence[Any]) -> list[Any]:
        by_name = dict(zip(input_names, values, strict=False))
        feed: dict[int, Any] = {}
        for index, port in enumerate(ports_in):
            name = next((n for n in port.get_names() if n in by_name), None)
            feed[index] = by_name[name] if name is not None else values[index]
        request = compiled.create_infer_request()
        request.infer(feed)
        return [
            np.array(request.get_output_tensor(port_index(ports_out, name, i)).data, copy=True)
            for i, name in enumerate(output_names)
        ]

    return run


def _run_compiled(target: str, verify: bool) -> Callable[..., Callable[..., Any]]:
    def prepare(model: bytes, work: Path, inputs: Sequence[Any]) -> Callable[..., Any]:
        import onnx

        import ai_vmm

        result = ai_vmm.compile(
            onnx.load_from_string(model),
            target=TARGETS[target],
            output=work / "model.vmm",
            tune=False,
            verify=verify,
        )
        compiled = ai_vmm.load(result.path)
        input_names, output_names = _graph_names(model)
        accepted = {spec.name for spec in compiled.inputs}

        def run(values: Sequence[Any]) -> list[Any]:
            feed = {n: v for n, v in zip(input_names, values, strict=False) if n in accepted}
            outs = compiled.run(feed)
            missing = [n for n in output_names if n not in outs]
            if missing:
                raise RuntimeError(f"output {missing[0]!r} missing from the artifact's results")
            return [outs[n] for n in output_names]

        return run

    return prepare


class UnsupportedCase(Exception):
    """The cuda converter's ``node_support`` rejects a node of the case (the message says why)."""


def _torch_value(value: Any) -> Any:
    import torch

    array = np.asarray(value)
    if array.dtype.name == "bfloat16":
        return torch.from_numpy(array.view(np.int16).copy()).view(torch.bfloat16)
    return torch.from_numpy(np.array(array, copy=True))


def _numpy_value(value: Any) -> Any:
    import ml_dtypes
    import torch

    value = value.detach().cpu()
    if value.dtype == torch.bfloat16:
        return value.view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return value.numpy()


def _run_torch(model: bytes, work: Path, inputs: Sequence[Any]) -> Callable[..., Any]:
    """The cuda target's ONNX -> torch module, run eagerly on the CPU (``mode="torch"``)."""
    import onnx
    import onnx_ir as ir
    import torch

    from ai_vmm.targets.cuda_convert import node_support, to_torch

    ir_model = ir.serde.deserialize_model(onnx.load_from_string(model))
    opset = ir_model.opset_imports.get("", ir_model.opset_imports.get("ai.onnx", 1))
    for node in ir_model.graph:
        reason = node_support(node, opset)
        if reason is not None:
            raise UnsupportedCase(reason)
    module = to_torch(ir_model).eval()

    def run(values: Sequence[Any]) -> list[Any]:
        with torch.no_grad():
            outs = module(*[_torch_value(v) for v in values])
        return [_numpy_value(o) for o in outs]

    return run


def run_task(task: Task) -> Outcome:
    """Run one case one way and compare with the expected outputs (never raises)."""
    started = time.perf_counter()
    outcome = Outcome(task.case.name, task.target, task.mode, passed=False)
    if task.mode == "raw":
        prepare = _run_raw_onnxruntime if task.target == "onnxruntime" else _run_raw_openvino
    elif task.mode == "torch":
        prepare = _run_torch
    else:
        prepare = _run_compiled(task.target, task.verify)
    rtol, atol = max(RTOL, task.case.rtol), max(ATOL, task.case.atol)
    with tempfile.TemporaryDirectory(prefix="conformance-") as tmp:
        try:
            _, output_names = _graph_names(task.case.model)
            run = prepare(task.case.model, Path(tmp), task.case.data_sets[0][0])
        except Exception as exc:
            outcome.reason = _prepare_reason(task.mode, exc)
        else:
            outcome.passed = True
            for inputs, expected in task.case.data_sets:
                try:
                    got = run(inputs)
                except Exception as exc:
                    outcome.passed, outcome.reason = False, "run error: " + _one_line(exc)
                    break
                reason = compare_outputs(expected, got, output_names, rtol, atol)
                if reason:
                    outcome.passed, outcome.reason = False, reason
                    break
    outcome.seconds = round(time.perf_counter() - started, 3)
    return outcome


def _prepare_reason(mode: str, exc: BaseException) -> str:
    kind = exc.__class__.__name__
    if mode == "torch":
        if isinstance(exc, UnsupportedCase):
            return f"unsupported: {clean_message(exc)[:300]}"
        return "convert error: " + _one_line(exc)
    if mode == "compiled":
        labels = {
            "UnsupportedModelError": "unsupported",
            "ModelLoadError": "model load error",
            "CompileError": "compile error",
            "InputError": "run error",
        }
        return f"{labels.get(kind, 'compile error')}: {clean_message(exc)[:300]}"
    return "load error: " + _one_line(exc)


# --------------------------------------------------------------------------------------------
# The worker pool: one process per job, replaced when it crashes, hangs or grows old
# --------------------------------------------------------------------------------------------


def _worker_main(conn: multiprocessing.connection.Connection) -> None:
    """Worker loop: receive a task, send back its outcome, until ``None`` arrives."""
    os.environ.pop("AI_VMM_CACHE_DIR", None)  # measure real compiles, never cache hits
    import logging
    import warnings

    warnings.simplefilter("ignore")
    logging.disable(logging.WARNING)  # onnxscript's folding notes; failures are in the outcome
    with contextlib.suppress(ImportError):
        import onnxruntime

        onnxruntime.set_default_logger_severity(4)  # failures are reported, not logged
    while True:
        try:
            task = conn.recv()
            if task is None:
                return
            conn.send(run_task(task))
        except (EOFError, OSError):  # the parent is gone: nothing left to report to
            return


@dataclass
class _Worker:
    process: Any
    conn: multiprocessing.connection.Connection
    done: int = 0
    task: Task | None = None
    started: float = 0.0


def _spawn(context: Any) -> _Worker:
    parent, child = context.Pipe()
    process = context.Process(target=_worker_main, args=(child,), daemon=True)
    process.start()
    child.close()
    return _Worker(process, parent)


def _stop(worker: _Worker, kill: bool) -> None:
    if kill:
        worker.process.kill()
    else:
        with contextlib.suppress(OSError, BrokenPipeError):
            worker.conn.send(None)
    worker.process.join(timeout=10)
    if worker.process.is_alive():
        worker.process.kill()
        worker.process.join()
    worker.conn.close()


def run_tasks(
    tasks: Sequence[Task],
    jobs: int,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    progress: Callable[[int, int], None] | None = None,
) -> list[Outcome]:
    """Run ``tasks`` on ``jobs`` worker processes; outcomes come back in task order.

    A run that exceeds ``timeout_s`` fails with reason ``timeout``; a worker that dies (segfault,
    abort, out of memory) fails its run with reason ``crash`` and is replaced.
    """
    context = multiprocessing.get_context("spawn")
    pending = collections.deque(enumerate(tasks))
    results: dict[int, Outcome] = {}
    index_of: dict[int, int] = {}
    workers = [_spawn(context) for _ in range(max(1, min(jobs, len(tasks))))]
    try:
        while len(results) < len(tasks):
            for slot, worker in enumerate(workers):
                if worker.task is None and pending:
                    if not worker.process.is_alive():  # died between runs: replace it first
                        _stop(worker, kill=True)
                        worker = workers[slot] = _spawn(context)
                    index, task = pending.popleft()
                    worker.task, worker.started = task, time.monotonic()
                    index_of[id(worker)] = index
                    with contextlib.suppress(OSError):  # a dead pipe: _collect reports the crash
                        worker.conn.send(task)
            busy = [w for w in workers if w.task is not None]
            waitables = [w.conn for w in busy] + [w.process.sentinel for w in busy]
            multiprocessing.connection.wait(waitables, timeout=1.0)
            for slot, worker in enumerate(workers):
                if worker.task is None:
                    continue
                outcome, replace = _collect(worker, timeout_s)
                if outcome is None:
                    continue
                results[index_of.pop(id(worker))] = outcome
                worker.task = None
                worker.done += 1
                if progress:
                    progress(len(results), len(tasks))
                if replace or worker.done >= TASKS_PER_WORKER:
                    _stop(worker, kill=replace)
                    workers[slot] = _spawn(context)
    finally:
        for worker in workers:
            _stop(worker, kill=worker.task is not None)
    return [results[i] for i in range(len(tasks))]


def _collect(worker: _Worker, timeout_s: float) -> tuple[Outcome | None, bool]:
    """The outcome of ``worker``'s task if it is over (and whether the worker must go)."""
    task = worker.task
    assert task is not None
    elapsed = round(time.monotonic() - worker.started, 3)
    failed = Outcome(task.case.name, task.target, task.mode, passed=False, seconds=elapsed)
    if worker.conn.poll():
        try:
            outcome: Outcome = worker.conn.recv()
            return outcome, False
        except (EOFError, OSError):
            pass
    if not worker.process.is_alive():
        worker.process.join()
        code = worker.process.exitcode
        failed.reason = f"crash: worker died (exit code {code})"
        return failed, True
    if elapsed > timeout_s:
        failed.reason = f"timeout: no result after {timeout_s:.0f} s"
        return failed, True
    return None, False


# --------------------------------------------------------------------------------------------
# Results
# --------------------------------------------------------------------------------------------


@dataclass
class TargetSummary:
    """Pass counts, gains and losses of one target."""

    target: str
    cases: int = 0
    raw_passed: int = 0
    compiled_passed: int = 0
    gains: list[str] = field(default_factory=list)
    losses: list[tuple[str, str]] = field(default_factory=list)
    """``(case, compiled failure reason)`` for every case raw passes and compiled fails."""
    raw_reasons: list[tuple[str, int]] = field(default_factory=list)
    compiled_reasons: list[tuple[str, int]] = field(default_factory=list)


def build_tasks(cases: Iterable[Case], targets: Sequence[str], verify: bool) -> list[Task]:
    """Every (case, target, mode) run, grouped by case."""
    return [
        Task(case, target, mode, verify) for case in cases for target in targets for mode in MODES
    ]


def summarize(outcomes: Sequence[Outcome], targets: Sequence[str]) -> dict[str, TargetSummary]:
    """Per target: pass counts, gains, losses and the most common failure reasons."""
    table = {(o.case, o.target, o.mode): o for o in outcomes}
    summaries: dict[str, TargetSummary] = {}
    for target in targets:
        summary = TargetSummary(target)
        raw_fail: collections.Counter[str] = collections.Counter()
        compiled_fail: collections.Counter[str] = collections.Counter()
        names = sorted({o.case for o in outcomes if o.target == target})
        for name in names:
            raw, compiled = table.get((name, target, "raw")), table.get((name, target, "compiled"))
            if raw is None or compiled is None:
                continue
            summary.cases += 1
            summary.raw_passed += raw.passed
            summary.compiled_passed += compiled.passed
            if not raw.passed:
                raw_fail[reason_family(raw.reason)] += 1
            if not compiled.passed:
                compiled_fail[reason_family(compiled.reason)] += 1
            if compiled.passed and not raw.passed:
                summary.gains.append(name)
            if raw.passed and not compiled.passed:
                summary.losses.append((name, compiled.reason))
        summary.raw_reasons = raw_fail.most_common(8)
        summary.compiled_reasons = compiled_fail.most_common(8)
        summaries[target] = summary
    return summaries


_VARIABLE = re.compile(
    r"'[^']*'|\"[^\"]*\"|\[[^\]]*\]|\b0x[0-9a-f]+\b|\b\d+(\.\d+)?(e[-+]?\d+)?\b|/tmp/\S+", re.I
)


_OP_LIST = re.compile(r"(operations?:|nodes?:)\s*[\w\-.,; ]+")


def reason_family(reason: str) -> str:
    """A failure reason with names, numbers and shapes blanked, so similar failures group."""
    text = _VARIABLE.sub("…", clean_message(reason))
    text = _OP_LIST.sub(r"\1 …", text)
    text = re.sub(r"(…[\s,]*)+", "… ", text).strip()
    return text[:110] + ("…" if len(text) > 110 else "")


def versions() -> dict[str, str]:
    """Versions of the libraries the numbers depend on."""
    found = {}
    for name in ("onnx", "onnxruntime", "openvino", "ai-vmm", "onnx-ir", "onnxscript", "numpy"):
        try:
            found[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            found[name] = "absent"
    return found


def render_markdown(
    summaries: dict[str, TargetSummary],
    command: str,
    verify: bool,
    elapsed_s: float,
    outcomes: Sequence[Outcome],
) -> str:
    """The ``docs/conformance.md`` report."""
    lines = [
        "# ONNX backend node-test conformance",
        "",
        "Generated by `scripts/conformance.py`; do not edit by hand.",
        "",
        f"- date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M UTC}",
        "- versions: " + ", ".join(f"{k} {v}" for k, v in versions().items()),
        f"- command: `{command}`",
        f"- verification at compile: {'on (the default)' if verify else 'off (--no-verify)'}",
        f"- wall time: {elapsed_s / 60:.1f} min",
        "",
        "Each case runs two ways per target, in one process pool. **raw**: the backend on the "
        "uncompiled model, `onnxruntime.InferenceSession` (CPU provider, default options) and "
        '`openvino.Core().compile_model(path, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})` '
        "(f32 so that the CPU plugin does not pick bf16/f16 on hardware that has them; the "
        "compiled OpenVINO artifacts run with the same f32 hint). **compiled**: "
        "`ai_vmm.compile(model, target=..., tune=False)` then `ai_vmm.load(path).run(inputs)`.",
        "",
        "Test data goes in as the ONNX runner gives it, with two conversions the raw backends "
        "need: TensorProto data becomes numpy (`onnx.numpy_helper.to_array`) and numpy scalars "
        "become 0-d arrays (ONNX Runtime rejects `np.float32(1.0)` as an input). A run that "
        "crashes its worker or exceeds the per-run timeout fails with reason `crash` or "
        "`timeout`.",
        "",
        f"Outputs must match in shape and dtype; integers, booleans and strings exactly; floats "
        f"with rtol {RTOL:g}, atol {ATOL:g} (or the case's own if larger; two ULPs for bfloat16), "
        f"NaN equal to NaN; sequences elementwise. A **loss** is a case the raw backend passes "
        f"and the compiled artifact fails; a **gain** the reverse.",
        "",
        "| target | cases | raw passes | compiled passes | gains | losses |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for s in summaries.values():
        lines.append(
            f"| {s.target} | {s.cases} | {s.raw_passed} | {s.compiled_passed} | "
            f"{len(s.gains)} | {len(s.losses)} |"
        )
    slowest = sorted(outcomes, key=lambda o: -o.seconds)[:5]
    lines += [
        "",
        "Slowest runs: "
        + ", ".join(f"{o.case} ({o.target} {o.mode}, {o.seconds:.1f} s)" for o in slowest)
        + ".",
    ]
    for s in summaries.values():
        lines += ["", f"## {s.target}", "", f"### Losses ({len(s.losses)})", ""]
        lines += [f"- `{name}`: {_md(reason)}" for name, reason in s.losses] or ["None."]
        lines += ["", f"### Gains ({len(s.gains)})", ""]
        lines += [", ".join(f"`{name}`" for name in s.gains) or "None."]
        for label, reasons in (("raw", s.raw_reasons), ("compiled", s.compiled_reasons)):
            lines += [
                "",
                f"### Most common failure reasons, {label}",
                "",
                "| cases | reason |",
                "|---:|---|",
            ]
            lines += [f"| {count} | {_md(reason)} |" for reason, count in reasons]
    return "\n".join(lines) + "\n"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ").replace("`", "'")


def run_conformance(
    cases: Sequence[Case],
    targets: Sequence[str],
    jobs: int,
    verify: bool = True,
    timeout_s: float = DEFAULT_TIMEOUT_S,
    quiet: bool = False,
) -> tuple[list[Outcome], dict[str, TargetSummary]]:
    """Run every case on every target both ways; return the outcomes and per-target summaries."""
    tasks = build_tasks(cases, targets, verify)
    started = time.monotonic()
    per_case = len(targets) * len(MODES)

    def progress(done: int, total: int) -> None:
        if quiet or (done % (50 * per_case) and done != total):
            return
        minutes = (time.monotonic() - started) / 60
        print(
            f"[conformance] {done // per_case}/{total // per_case} cases ({minutes:.1f} min)",
            file=sys.stderr,
            flush=True,
        )

    outcomes = run_tasks(tasks, jobs, timeout_s, progress)
    return outcomes, summarize(outcomes, targets)


def _parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument(
        "--targets",
        default=",".join(TARGETS),
        help="comma-separated: openvino, onnxruntime (default both)",
    )
    parser.add_argument("--filter", default=None, help="regex on case names (re.search)")
    parser.add_argument("--limit", type=int, default=None, help="at most N cases")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="worker processes")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_S,
        help="seconds per run before it counts as a failure",
    )
    parser.add_argument("--no-verify", action="store_true", help="compile with verify=False")
    parser.add_argument("--out", default="docs/conformance.md", help="markdown report path")
    parser.add_argument("--json", default=None, help="also write every outcome as JSON here")
    args = parser.parse_args(argv)
    args.target_list = [t.strip() for t in args.targets.split(",") if t.strip()]
    unknown = sorted(set(args.target_list) - set(TARGETS))
    if unknown:
        parser.error(f"unknown target {', '.join(unknown)} (known: {', '.join(TARGETS)})")
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite, write the report; 1 if the compiler loses any case, else 0."""
    args = _parse_args(argv)
    started = time.monotonic()
    cases = load_cases(args.filter, args.limit)
    print(
        f"[conformance] {len(cases)} cases x {len(args.target_list)} targets, {args.jobs} jobs",
        file=sys.stderr,
        flush=True,
    )
    outcomes, summaries = run_conformance(
        cases, args.target_list, args.jobs, not args.no_verify, args.timeout
    )
    elapsed = time.monotonic() - started
    command = "python scripts/conformance.py " + shlex.join(
        sys.argv[1:] if argv is None else list(argv)
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(
        render_markdown(summaries, command.strip(), not args.no_verify, elapsed, outcomes)
    )
    if args.json:
        Path(args.json).write_text(
            json.dumps(
                {
                    "versions": versions(),
                    "summaries": {k: asdict(v) for k, v in summaries.items()},
                    "outcomes": [asdict(o) for o in outcomes],
                },
                indent=1,
            )
        )
    for s in summaries.values():
        print(
            f"{s.target}: {s.cases} cases, raw {s.raw_passed}, compiled {s.compiled_passed}, "
            f"gains {len(s.gains)}, losses {len(s.losses)}"
        )
        for name, reason in s.losses:
            print(f"  LOSS {name}: {reason}")
    return 1 if any(s.losses for s in summaries.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
