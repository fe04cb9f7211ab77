"""The ONNX Runtime LM path on this CPU (docs/generate.md, "ONNX Runtime"): where a decode step
goes, and two builds or two cache executors against each other.

* ``profile ARTIFACT [--context 400] [--steps 32]``: ONNX Runtime's own profiler over decode
  steps at a context of ``--context`` tokens (random cache contents, one new token), the
  kernel time by op type in ms a step.
* ``ab ARTIFACT_A ARTIFACT_B [--context-from FILE] [--rounds 8]``: SmolLM2-style greedy
  generation (the bench's 400-token prompt, 128 new tokens, EOS blocked) of both artifacts in
  one process, alternating which goes first; decode tok/s and TTFT medians, per-round ratios,
  and whether the tokens are the same. ``--context-from`` runs ARTIFACT_A with the
  ``OnnxRuntimeContext`` of another version of ``runtime/executors/onnxruntime_lm.py`` (e.g.
  ``git show 14c67e2:runtime/executors/onnxruntime_lm.py > /tmp/old.py``, the executor before
  the preallocated buffers); ARTIFACT_B always runs the current one.

    python scripts/llm_ort_study.py profile ~/.cache/ai-vmm/bench-generate/*/onnxruntime-CPU-*.vmm
    python scripts/llm_ort_study.py ab OLD.vmm NEW.vmm
"""

from __future__ import annotations

import argparse
import collections
import importlib.util
import json
import statistics
import tempfile
from pathlib import Path
from typing import Any

import numpy as np


def profile(args: argparse.Namespace) -> None:
    import onnxruntime as ort

    root = Path(args.artifact)
    entry = root / json.loads((root / "manifest.json").read_text())["partitions"][0]["entry"]
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(Path(tempfile.mkdtemp()) / "ort")
    session = ort.InferenceSession(str(entry), options, providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(0)
    length = args.context
    feeds: dict[str, np.ndarray] = {
        "input_ids": np.array([[42]], np.int64),
        "attention_mask": np.ones((1, length + 1), np.int64),
        "position_ids": np.array([[length]], np.int64),
        "logit_index": np.zeros(1, np.int64),
    }
    for value in session.get_inputs():
        if value.name.startswith("past."):
            heads, dim = value.shape[1], value.shape[3]
            feeds[value.name] = rng.standard_normal((1, heads, length, dim), dtype=np.float32)
    runs = 3 + args.steps
    for _ in range(runs):
        session.run(["logits"], feeds)
    events = json.loads(Path(session.end_profiling()).read_text())
    by_op: collections.Counter[str] = collections.Counter()
    nodes: collections.Counter[str] = collections.Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_op[event["args"]["op_name"]] += event["dur"]
            nodes[event["args"]["op_name"]] += 1
    total = sum(by_op.values())
    print(f"| op type | ms a step | share | nodes |  (context {length}, {runs} steps)")
    print("|---|---|---|---|")
    for op, micros in by_op.most_common():
        share = 100 * micros / total
        print(f"| {op} | {micros / runs / 1000:.2f} | {share:.1f} % | {nodes[op] // runs} |")
    print(f"| all | {total / runs / 1000:.2f} | 100 % | |")


def ab(args: argparse.Namespace) -> None:
    import ai_vmm
    from ai_vmm.bench_generate import prompts
    from ai_vmm.runtime.executors import onnxruntime_lm

    models = [ai_vmm.load(Path(args.a)), ai_vmm.load(Path(args.b))]
    contexts = [onnxruntime_lm.OnnxRuntimeContext, onnxruntime_lm.OnnxRuntimeContext]
    if args.context_from:
        spec = importlib.util.spec_from_file_location("ort_context_a", args.context_from)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        contexts[0] = module.OnnxRuntimeContext
    ids = prompts(models[0].tokenizer)["long"]
    rates: list[list[float]] = [[], []]
    ttfts: list[list[float]] = [[], []]
    tokens: list[Any] = [None, None]
    for round_index in range(args.rounds):
        for i in (0, 1) if round_index % 2 == 0 else (1, 0):
            model = models[i]
            # A fresh context of the chosen class for every round (the pool would reuse one).
            model._pool = type(model._pool)()
            model._session.context = (lambda cls, s: lambda: cls(s))(contexts[i], model._session)
            out = model.generate(ids, max_new_tokens=128, min_new_tokens=128)
            rates[i].append(1 / out.tpot_s)
            ttfts[i].append(out.ttft_s * 1000)
            tokens[i] = out.tokens
        print(f"round {round_index}: A {rates[0][-1]:.2f}, B {rates[1][-1]:.2f} tok/s", flush=True)
    print("| build | decode tok/s, median [min-max] | TTFT ms, median |\n|---|---|---|")
    for name, rate, ttft in zip((args.a, args.b), rates, ttfts, strict=True):
        print(
            f"| {name} | {statistics.median(rate):.2f} [{min(rate):.2f}-{max(rate):.2f}] | "
            f"{statistics.median(ttft):.0f} |"
        )
    ratios = sorted(b / a for a, b in zip(*rates, strict=True))
    print(f"B / A per round: {', '.join(f'{r:.3f}' for r in ratios)}")
    print(f"same {len(tokens[1])} tokens: {tokens[0] == tokens[1]}")
    for model in models:
        model.close()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parts = parser.add_subparsers(dest="part", required=True)
    p = parts.add_parser("profile")
    p.add_argument("artifact")
    p.add_argument("--context", type=int, default=400)
    p.add_argument("--steps", type=int, default=32)
    a = parts.add_parser("ab")
    a.add_argument("a")
    a.add_argument("b")
    a.add_argument("--context-from", default="", help="a file with another OnnxRuntimeContext")
    a.add_argument("--rounds", type=int, default=8)
    args = parser.parse_args(argv)
    {"profile": profile, "ab": ab}[args.part](args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
