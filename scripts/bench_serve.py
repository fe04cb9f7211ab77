"""Benchmark of ``vmmc serve`` on localhost: load, overload, priorities, continuous batching.

Writes its tables between the ``bench_serve`` markers of docs/serve.md.

The served model is paraphrase-MiniLM-L3 (a real BERT-style sentence encoder, compiled here),
on real English sentences (Python standard library docstrings) tokenized to 16 tokens; each
request asks for the pooled sentence embedding and every answer is compared with the same
artifact run in this process. The server runs as ``vmmc serve`` in a subprocess (so it does not
share a GIL with the load driver, ``ai_vmm.serve.loadgen``); both share this machine's cores.

1. capacity: requests kept in flight (closed loop), answers per second;
2. a stated load (half the capacity, open loop): p50/p99 latency, throughput, nothing lost
   or wrong;
3. twice the capacity with a deadline per request: refusals come at once (503 + Retry-After)
   and admitted requests meet their deadline;
4. a high-priority tenant at a fifth of the capacity while a low-priority tenant floods at
   twice the capacity: its p99 against its objective; and the same load with both tenants in
   one class, for contrast (each tenant from its own driver process, as separate clients);
5. (with ``--llm``) continuous batching: tokens/s of 8 concurrent streams against 8 in a row.

    python scripts/bench_serve.py [--seconds 6] [--out docs/serve.md] [--llm PATH.gguf]

Figures depend on the machine and its load; the load average is recorded with them.
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import multiprocessing
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from ai_vmm.serve import hash_key
from ai_vmm.serve.loadgen import Case, Stream, Summary, measure_capacity, run, summarize

REAL = Path.home() / ".cache" / "ai-vmm" / "realmodels"
KEYS = {
    "bench": "sk-bench-0001",
    "gold": "sk-gold-0002",
    "free": "sk-free-0003",
    "flat": "sk-flat-0004",
}
SEQ = 16


def sentences(count: int) -> list[str]:
    """Real English sentences: first lines of standard-library docstrings."""
    import collections
    import json as json_module
    import pathlib as pathlib_module
    import statistics as statistics_module

    found: list[str] = []
    for module in (collections, json_module, pathlib_module, statistics_module, inspect, os):
        for _, obj in inspect.getmembers(module):
            doc = inspect.getdoc(obj)
            if doc and 20 < len(doc.splitlines()[0]) < 120:
                found.append(doc.splitlines()[0])
    unique = list(dict.fromkeys(found))
    return unique[:count]


def make_cases(artifact: Path, count: int = 32) -> list[Case]:
    """Requests of one tokenized sentence each, with their expected embeddings."""
    from tokenizers import Tokenizer

    import ai_vmm.runtime as rt

    tokenizer = Tokenizer.from_file(str(REAL / "bert_uncased_tokenizer.json"))
    tokenizer.enable_padding(length=SEQ)
    tokenizer.enable_truncation(SEQ)
    model = rt.load(artifact)
    cases = []
    for encoding in tokenizer.encode_batch(sentences(count)):
        ids = np.array([encoding.ids], dtype=np.int64)
        mask = np.array([encoding.attention_mask], dtype=np.int64)
        expected = model.run({"input_ids": ids, "attention_mask": mask})["461"]
        cases.append(Case({"input_ids": ids, "attention_mask": mask}, "461", expected))
    return cases


def compile_encoder(work: Path) -> Path:
    import ai_vmm

    out = work / "minilm.vmm"
    if not (out / "manifest.json").is_file():
        ai_vmm.compile(REAL / "paraphrase_minilm_l3.onnx", output=out, tune=False, verify=False)
    return out


@dataclass(frozen=True)
class Objectives:
    """Deadlines and objectives derived from the measured service time of a full batch."""

    batch_ms: float
    """Mean time of one model call in the capacity run (mostly full batches)."""

    @property
    def deadline_ms(self) -> float:
        return max(8 * self.batch_ms, 100.0)

    @property
    def gold_objective_ms(self) -> float:
        return max(6 * self.batch_ms, 100.0)


def server_config(
    obj: Objectives | None,
    class_settings: dict[str, float] | None = None,
    quantile: float | None = None,
) -> str:
    """``class_settings``: lines set in every class (``late_margin``, ``headroom``)."""
    gold = obj.gold_objective_ms if obj else 10_000
    margin = "".join(f"{k} = {v}\n" for k, v in (class_settings or {}).items())
    admission = "" if quantile is None else f"admission_quantile = {quantile}\n"
    tenants = "\n".join(
        f'[[tenants]]\nname = "{name}"\nkey_sha256 = "{hash_key(key)}"\nclass = "{cls}"\n'
        for name, key, cls in (
            ("bench", KEYS["bench"], "default"),
            ("gold", KEYS["gold"], "gold"),
            ("free", KEYS["free"], "free"),
            ("flat", KEYS["flat"], "free"),
        )
    )
    return f"""[server]
access_log = false
{admission}
[classes.default]
rank = 1
max_queue = 256
timeout_ms = 10000
{margin}
[classes.gold]
rank = 0
max_queue = 64
timeout_ms = {gold:.0f}
objective_p99_ms = {gold:.0f}
{margin}
[classes.free]
rank = 2
max_queue = 32
timeout_ms = 2000
{margin}
[models.minilm]
batching = {{ max_batch = 8, max_queue_delay_ms = 2, preferred_sizes = [8] }}

{tenants}"""


@contextmanager
def server(repo: Path) -> Iterator[str]:
    """``vmmc serve repo`` on a free port; yields its base URL."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    vmmc = shutil.which("vmmc") or "vmmc"
    proc = subprocess.Popen(
        [vmmc, "serve", str(repo), "--port", str(port), "--log-level", "warning"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"vmmc serve exited: {proc.stdout.read()[-2000:]}")  # type: ignore[union-attr]
            try:
                if httpx.get(f"{url}/v2/health/ready", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("vmmc serve did not become ready")
            time.sleep(0.1)
        yield url
    finally:
        proc.terminate()
        try:
            proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()


def batch_time_ms(url: str) -> float:
    """The median model-call time at the largest batch seen, from the server's histogram."""
    text = httpx.get(f"{url}/metrics").text
    total = count = 0.0
    for line in text.splitlines():
        if line.startswith('vmm_inference_seconds_sum{model="minilm"}'):
            total = float(line.split()[-1])
        if line.startswith('vmm_inference_seconds_count{model="minilm"}'):
            count = float(line.split()[-1])
    return 1000 * total / count if count else float("nan")


@dataclass
class Results:
    capacity_rps: float
    objectives: Objectives
    stated: list[Summary]
    overload: list[Summary]
    priority: list[Summary]
    flat: list[Summary]
    llm: dict[str, Any] | None = None


@contextmanager
def _deadline_server(
    work: Path, seconds: float, class_settings: dict[str, float], quantile: float | None
) -> Iterator[tuple[str, float, Objectives, list[Case]]]:
    """Phase 1 measures capacity and the service time of a full batch; phase 2 starts the
    server with the deadlines and objectives derived from it: (url, capacity, objectives,
    cases)."""
    artifact = compile_encoder(work)
    cases = make_cases(artifact)
    repo = work / "repo"
    repo.mkdir(exist_ok=True)
    link = repo / "minilm.vmm"
    if not link.exists():
        link.symlink_to(artifact, target_is_directory=True)
    bench = Stream("bench", KEYS["bench"], 0, cases)
    (repo / "serve.toml").write_text(server_config(None))
    with server(repo) as url:
        measure_capacity(url, "minilm", bench, concurrency=32, seconds=1.0)  # warm-up
        capacity = measure_capacity(url, "minilm", bench, concurrency=32, seconds=seconds)
        objectives = Objectives(batch_time_ms(url))
    (repo / "serve.toml").write_text(server_config(objectives, class_settings, quantile))
    with server(repo) as url:
        measure_capacity(url, "minilm", bench, concurrency=32, seconds=0.5)  # warm-up
        # Measured again on this server: other work on the machine moves the figure, and a
        # pessimistic capacity would make "twice the capacity" no overload at all.
        capacity = max(
            capacity, measure_capacity(url, "minilm", bench, concurrency=32, seconds=seconds)
        )
        yield url, capacity, objectives, cases


def run_all(
    work: Path,
    seconds: float,
    class_settings: dict[str, float] | None = None,
    quantile: float | None = None,
) -> Results:
    """Every scenario above on a fresh repository under ``work``."""
    settings = class_settings or {}
    with _deadline_server(work, seconds, settings, quantile) as (url, capacity, obj, cases):
        stated = Stream("bench", KEYS["bench"], capacity / 2, cases)
        stated_rows = _run("stated", url, [stated], seconds)
        over = Stream("bench", KEYS["bench"], 2 * capacity, cases, obj.deadline_ms)
        overload_rows = _run("overload", url, [over], seconds)
        gold = Stream("gold", KEYS["gold"], capacity / 5, cases)
        flood = Stream("free", KEYS["free"], 2 * capacity, cases)
        priority_rows = _run("priority", url, [gold, flood], seconds)
        flat = Stream("flat", KEYS["flat"], capacity / 5, cases)
        flat_rows = _run("one class", url, [flat, flood], seconds)
    return Results(capacity, obj, stated_rows, overload_rows, priority_rows, flat_rows)


def run_overloads(
    work: Path,
    seconds: float,
    runs: int,
    class_settings: dict[str, float],
    quantile: float | None,
) -> None:
    """The overload run alone, ``runs`` times on one server, a line each (``--overload-runs``:
    how admission's settings trade expired requests against throughput; docs/serve.md)."""
    with _deadline_server(work, seconds, class_settings, quantile) as (
        url,
        capacity,
        obj,
        cases,
    ):
        print(f"capacity {capacity:.0f} requests/s, deadline {obj.deadline_ms:.0f} ms")
        for index in range(runs):
            over = Stream("bench", KEYS["bench"], 2 * capacity, cases, obj.deadline_ms)
            (row,) = _run("overload", url, [over], seconds)
            print(
                f"run {index + 1}: admitted {row.ok + row.expired}, expired {row.expired}, "
                f"late by the server's clock {row.server_late}, by the driver's {row.late}, "
                f"throughput {row.throughput_rps:.0f}/s ({row.throughput_rps / capacity:.2f} "
                "of capacity)",
                flush=True,
            )


def _run(name: str, url: str, streams: list[Stream], seconds: float) -> list[Summary]:
    if len(streams) == 1:
        outcomes, elapsed = run(url, "minilm", streams, seconds)
    else:
        # One driver process per tenant, as tenants are separate clients: on one event loop,
        # sending the flood delayed the other tenant's requests and the reading of its answers
        # in the driver itself (2 cores: tens of ms at p99), which no server could help.
        context = multiprocessing.get_context("fork")
        with ProcessPoolExecutor(len(streams), mp_context=context) as pool:
            jobs = [pool.submit(run, url, "minilm", [stream], seconds) for stream in streams]
            results = [job.result() for job in jobs]
        outcomes = [outcome for part, _ in results for outcome in part]
        elapsed = max(seconds for _, seconds in results)
    return summarize(name, outcomes, sum(s.rate for s in streams), elapsed)


LLM_PROMPTS = [
    "Write one sentence about the sea.",
    "Name three fruits and their colours.",
    "What is a compiler?",
    "Give me a tip for learning to cook.",
    "Why is the sky blue?",
    "Describe a cat in one sentence.",
    "What does a librarian do?",
    "Suggest a name for a small boat.",
]


async def _stream_chat(session: Any, url: str, prompt: str, max_tokens: int) -> dict[str, float]:
    """One streamed chat completion: time to first token, end, completion tokens."""
    import json as json_module

    body = {
        "model": "llm",
        "messages": [{"role": "user", "content": prompt}],
        "max_tokens": max_tokens,
        "temperature": 0,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    start = time.monotonic()
    first = None
    tokens = 0
    async with session.post(f"{url}/v1/chat/completions", json=body) as response:
        assert response.status == 200, await response.text()
        async for raw in response.content:
            line = raw.decode().strip()
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json_module.loads(line[6:])
            if event.get("usage"):
                tokens = event["usage"]["completion_tokens"]
            for choice in event.get("choices", []):
                if first is None and choice.get("delta", {}).get("content"):
                    first = time.monotonic() - start
    return {"ttft": first or 0.0, "total": time.monotonic() - start, "tokens": tokens}


def run_llm(work: Path, gguf: Path, max_tokens: int = 64) -> dict[str, Any]:
    """Continuous batching over HTTP: 8 streamed chats at once against the same 8 in a row."""
    import aiohttp

    repo = work / "llm-repo"
    repo.mkdir(exist_ok=True)
    link = repo / "llm.gguf"
    if not link.exists():
        link.symlink_to(gguf)
    (repo / "serve.toml").write_text(
        "[server]\naccess_log = false\n[models.llm]\ngeneration = { max_batch = 8 }\n"
    )
    with server(repo) as url:

        async def measure() -> tuple[list[dict[str, float]], float, list[dict[str, float]], float]:
            async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=1800)) as session:
                await _stream_chat(session, url, "Hello", 8)  # warm-up
                start = time.monotonic()
                sequential = [await _stream_chat(session, url, p, max_tokens) for p in LLM_PROMPTS]
                seq_s = time.monotonic() - start
                start = time.monotonic()
                concurrent = await asyncio.gather(
                    *(_stream_chat(session, url, p, max_tokens) for p in LLM_PROMPTS)
                )
                return sequential, seq_s, list(concurrent), time.monotonic() - start

        sequential, seq_s, concurrent, con_s = asyncio.run(measure())
    rows = []
    for name, runs, seconds in (
        ("8 in a row", sequential, seq_s),
        ("8 at once", concurrent, con_s),
    ):
        tokens = sum(r["tokens"] for r in runs)
        ttfts = sorted(r["ttft"] * 1000 for r in runs)
        rows.append((name, tokens, seconds, tokens / seconds, ttfts[len(ttfts) // 2], ttfts[-1]))
    lines = [
        f"SmolLM2-135M-Instruct (`{gguf.name}`, deployed by `vmmc serve`), 8 chat prompts, "
        f"greedy, at most {max_tokens} new tokens each, streamed over `/v1/chat/completions`; "
        "the same 8 requests one after another, then all at once (the engine's continuous "
        "batching, `generation.max_batch = 8`).",
        "",
        "| requests | completion tokens | seconds | tokens/s | TTFT p50 ms | TTFT max ms |",
        "|---|---|---|---|---|---|",
        *(
            f"| {n} | {t} | {sec:.2f} | {rate:.1f} | {p50:.0f} | {mx:.0f} |"
            for n, t, sec, rate, p50, mx in rows
        ),
        "",
        "Speed-up of 8 concurrent streams over 8 sequential ones: "
        f"**{rows[1][3] / rows[0][3]:.2f}x** tokens/s.",
    ]
    return {"lines": lines, "rows": rows}


def _fmt(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def markdown(results: Results, seconds: float, command: str) -> str:
    o = results.objectives
    load = os.getloadavg()
    lines = [
        "### Load, overload and priorities on localhost",
        "",
        f"Regenerate: `{command}` ({seconds:g} s per run). Machine: {platform.machine()}, "
        f"{os.cpu_count()} cores, Python {platform.python_version()}; load average at the end "
        f"{load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f} (1/5/15 min). Server and load driver "
        "share these cores.",
        "",
        *(
            [
                f"**The machine was busy with other work** (load average {load[0]:.1f} on "
                f"{os.cpu_count()} cores): the server, the driver and that work shared the cores, "
                "so latencies (the driver's most of all) are pessimistic. Rerun on a quiet "
                "machine for figures to quote.",
                "",
            ]
            if load[0] > (os.cpu_count() or 1)
            else []
        ),
        "Model: paraphrase-MiniLM-L3 (real weights), one tokenized English sentence (16 tokens) "
        "per request, the pooled embedding back as a binary tensor; dynamic batching "
        "`max_batch = 8, max_queue_delay_ms = 2, preferred_sizes = [8]`. Every answer is "
        "compared with the same artifact run in the driver's process (rtol 1e-4).",
        "",
        f"Capacity (32 requests kept in flight): **{results.capacity_rps:.1f} requests/s**; "
        f"mean model call {o.batch_ms:.1f} ms. From it: the overload deadline "
        f"{o.deadline_ms:.0f} ms (8 calls) and the gold class objective {o.gold_objective_ms:.0f} "
        "ms p99 (6 calls).",
        "",
        "| run | tenant | offered req/s | sent | ok | wrong | lost | refused (no Retry-After) "
        "| expired 504 | p50 ms | p99 ms | server p99 ms | refusal p99 ms (server) "
        "| late (server) | throughput req/s |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for row in [*results.stated, *results.overload, *results.priority, *results.flat]:
        lines.append(
            f"| {row.name} | {row.tenant} | {row.offered_rps:.1f} | {row.sent} | {row.ok} | "
            f"{row.wrong} | {row.lost} | {row.refused} ({row.refused_without_retry_after}) | "
            f"{row.expired} | {_fmt(row.p50_ms)} | {_fmt(row.p99_ms)} | "
            f"{_fmt(row.server_p99_ms)} | {_fmt(row.refusal_p99_ms)} "
            f"({_fmt(row.refusal_server_p99_ms)}) | "
            f"{row.late} ({row.server_late}) | {row.throughput_rps:.1f} |"
        )
    lines += [
        "",
        "- **stated**: half the capacity, open loop (requests sent on schedule whatever the "
        "server does).",
        f"- **overload**: twice the capacity, each request with `X-Request-Timeout-Ms: "
        f"{o.deadline_ms:.0f}`; *late* counts answers after their deadline as the driver "
        "measured (in brackets: by the server's own clock, `Server-Timing`, which leaves out "
        "the network and the time before the server's event loop reads the request); "
        "*expired 504*: admitted, then answered 504 by the deadline instead of late. "
        + "; ".join(
            f"Admitted `{r.tenant}`: {r.ok + r.expired}, answered in time by the server's "
            f"clock {r.ok - r.server_late} "
            f"({100 * (r.ok - r.server_late) / max(r.ok + r.expired, 1):.1f} %)"
            for r in results.overload
        )
        + ".",
        f"- **priority**: tenant `gold` (class rank 0, objective {o.gold_objective_ms:.0f} ms) "
        "at a fifth of the capacity while `free` (rank 2, queue of 32, 2 s timeout) floods at "
        "twice it, each tenant sent from its own driver process.",
        "- **one class**: the same load with the fifth-of-capacity tenant (`flat`) in `free`'s "
        "class: what priorities buy.",
    ]
    if results.llm:
        lines += ["", "### Continuous batching", "", *results.llm["lines"]]
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--out", type=Path, default=Path("docs/serve.md"))
    parser.add_argument("--work", type=Path, default=None, help="Keep artifacts here.")
    parser.add_argument(
        "--llm",
        type=Path,
        default=REAL / "SmolLM2-135M-Instruct.Q4_1.gguf",
        help="A causal LM for the continuous-batching figures ('none' to skip).",
    )
    parser.add_argument(
        "--late-margin",
        type=float,
        default=None,
        help="Every class's late_margin (default: the server's, 0.25; 0 turns it off).",
    )
    parser.add_argument(
        "--headroom",
        type=float,
        default=None,
        help="Every class's headroom (default: the server's, 0.2; 0 turns it off).",
    )
    parser.add_argument(
        "--admission-quantile",
        type=float,
        default=None,
        help="The server's admission_quantile (default: the server's, 0.97).",
    )
    parser.add_argument(
        "--overload-runs",
        type=int,
        default=0,
        help="Only the overload run, this many times, a line each (docs/serve.md not written).",
    )
    args = parser.parse_args(argv)
    work = args.work or Path(tempfile.mkdtemp(prefix="bench-serve-"))
    work.mkdir(parents=True, exist_ok=True)
    settings = {
        key: value
        for key, value in (("late_margin", args.late_margin), ("headroom", args.headroom))
        if value is not None
    }
    if args.overload_runs:
        run_overloads(work, args.seconds, args.overload_runs, settings, args.admission_quantile)
        return 0
    results = run_all(work, args.seconds, settings, args.admission_quantile)
    if str(args.llm) != "none":
        results.llm = run_llm(work, args.llm)
    given = list(argv or sys.argv[1:])
    if "--work" in given:  # a local scratch path says nothing to a reader
        at = given.index("--work")
        del given[at : at + 2]
    command = "python scripts/bench_serve.py" + "".join(f" {a}" for a in given)
    text = markdown(results, args.seconds, command)
    write_section(args.out, text)
    print(text)
    return 0


BEGIN, END = "<!-- bench_serve:begin -->", "<!-- bench_serve:end -->"


def write_section(path: Path, text: str) -> None:
    """Put ``text`` between the markers of ``path`` (the guide around it stays as written)."""
    old = path.read_text() if path.is_file() else ""
    if BEGIN in old and END in old:
        head, rest = old.split(BEGIN, 1)
        tail = rest.split(END, 1)[1]
        path.write_text(f"{head}{BEGIN}\n{text}{END}{tail}")
    else:
        path.write_text(text)


if __name__ == "__main__":
    sys.exit(main())
