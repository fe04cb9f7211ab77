"""SmolLM2 on this CPU, measured apart from the crowded bench process (docs/generate.md).

Needs what ``vmmc bench MODEL --generate --baselines genai`` built first (our artifacts and
GenAI's optimum-intel exports, under ``~/.cache/ai-vmm/bench-generate/<digest>``). Four parts,
each printed as a Markdown table:

* ``engines``: GenAI's ``LLMPipeline`` with PagedAttention, the same with
  ``ATTENTION_BACKEND=SDPA`` (its export run stateful), and ours; the bench's 400-token prompt,
  128 greedy tokens, 3 interleaved rounds; fp32, and bf16 where the CPU computes in it.
* ``compressed``: INT8 and INT4 weights with f32 activations and KV cache, GenAI's stateful
  pipeline on its NNCF exports against our gated artifacts; TTFT and decode tokens/s.
* ``profile`` (``profile-int8``): OpenVINO ``PERF_COUNT`` by op type for 32 decode steps at a
  400-token context, our decoder against GenAI's export (fp32 or INT8 weights), both compiled
  stateful with the same properties.
* ``wall``: GenAI's stateful pipeline against ours, two engines in the process, measured by
  ``vmmc bench --generate``'s own loop (``run_bench``: a full-length warm-up, decode tokens/s
  by the wall clock, the whole ``generate`` less its TTFT, the same for both; 5 interleaved
  rounds); fp32, bf16 (where the CPU computes in it), INT8 and INT4 weights.
* ``pyprofile``: cProfile of a 128-token INT8 ``generate``, the time outside ``infer()``.
* ``attention``: our INT8 artifact stateful and paged against GenAI's INT8 export, stateful
  (SDPA) and with PagedAttention (its default).
* ``dq``: our INT8 artifact reloaded with the CPU plugin's activation groups (its default, 64,
  128, off): the answer to "What is the capital of France?" and decode tokens/s.

* ``order``: fp32 decode with our decoder loaded before GenAI's pipeline, after it, and three
  copies of ours, each order in a fresh process (the first loaded of decoders holding the same
  weights runs slower).
* ``alone`` (``alone-int8``, ``alone-int4``): our fp32 (INT8, INT4) decoder alone in a fresh
  process against GenAI's default pipeline (PagedAttention) alone, alternating.
* ``difference``: INT8 decode as the difference of a 128-token and a 1-token ``generate``.
* ``raw-int8``: raw INT8 decode steps from Python: ours, GenAI's export, ours ``INT8_ASYM``.

Usage: ``python scripts/llm_lean_compare.py [engines compressed profile wall dq order ...]``.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

import ai_vmm
from ai_vmm.bench_generate import CACHE, prompts
from ai_vmm.frontends.causal_lm import source_digest
from ai_vmm.targets.openvino_lm import capabilities

MODEL = Path.home() / ".cache" / "ai-vmm" / "realmodels" / "SmolLM2-135M-Instruct.Q4_1.gguf"
ROOT = CACHE / source_digest(MODEL)[:16]


def _genai_run(pipe: Any, ids: list[int]) -> tuple[float, float]:
    """TTFT ms and decode tok/s of one GenAI ``generate`` of 128 greedy tokens."""
    import openvino as ov
    import openvino_genai as genai

    array = np.array([ids], dtype=np.int64)
    config = genai.GenerationConfig()
    config.max_new_tokens = config.min_new_tokens = 128
    inputs = genai.TokenizedInputs(ov.Tensor(array), ov.Tensor(np.ones_like(array)))
    metrics = pipe.generate(inputs, config).perf_metrics
    return metrics.get_ttft().mean, 1000 / metrics.get_tpot().mean


def _ours_run(lm: Any, ids: list[int]) -> tuple[float, float]:
    """TTFT ms and decode tok/s of one ai-vmm ``generate`` of 128 greedy tokens."""
    result = lm.generate(ids, max_new_tokens=128, min_new_tokens=128)
    return result.ttft_s * 1000, result.tokens_per_s


def _print_rows(first: str, runs: dict[str, list[tuple[float, float]]]) -> None:
    for name, values in runs.items():
        ttft = statistics.median(v[0] for v in values)
        speeds = ", ".join(f"{v[1]:.1f}" for v in values)
        print(f"| {first} | {name} | {ttft:.0f} | {speeds} |")


def engines(ids: list[int]) -> None:
    import openvino_genai as genai

    print("| precision | engine | TTFT ms | decode tok/s (3 rounds) |\n|---|---|---|---|")
    for precision in ["f32", *(["bf16"] if "BF16" in capabilities("CPU") else [])]:
        props = {"INFERENCE_PRECISION_HINT": precision, "KV_CACHE_PRECISION": precision}
        scheduler = genai.SchedulerConfig()
        scheduler.enable_prefix_caching = False
        folder = str(ROOT / "genai" / "fp32")
        pipes = {
            "GenAI, PagedAttention": genai.LLMPipeline(
                folder, "CPU", scheduler_config=scheduler, **props
            ),
            "GenAI, SDPA (stateful)": genai.LLMPipeline(
                folder, "CPU", ATTENTION_BACKEND="SDPA", **props
            ),
        }
        lm = ai_vmm.load(ROOT / f"openvino-CPU-{'fp32' if precision == 'f32' else 'bf16'}.vmm")
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in [*pipes, "ai-vmm"]}
        for _ in range(3):
            for name, pipe in pipes.items():
                runs[name].append(_genai_run(pipe, ids))
            runs["ai-vmm"].append(_ours_run(lm, ids))
        _print_rows(precision, runs)
        lm.close()


def compressed(ids: list[int]) -> None:
    """INT8 and INT4 weights, f32 activations and KV cache: GenAI's stateful (SDPA) pipeline
    on its NNCF exports against ours (the bench's artifacts, as their quality gate left them),
    3 interleaved rounds."""
    import openvino_genai as genai

    props = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
    print("| weights | engine | TTFT ms | decode tok/s (3 rounds) |\n|---|---|---|---|")
    for weights in ("int8", "int4"):
        pipe = genai.LLMPipeline(
            str(ROOT / "genai" / weights), "CPU", ATTENTION_BACKEND="SDPA", **props
        )
        lm = ai_vmm.load(ROOT / f"openvino-CPU-{weights}.vmm")
        runs: dict[str, list[tuple[float, float]]] = {"GenAI, SDPA (stateful)": [], "ai-vmm": []}
        for _ in range(3):
            runs["GenAI, SDPA (stateful)"].append(_genai_run(pipe, ids))
            runs["ai-vmm"].append(_ours_run(lm, ids))
        _print_rows(weights, runs)
        lm.close()
        del pipe


def _raw_step(request: Any, names: set[str], tokens: list[int], start: int) -> None:
    """One stateful decoder step of ``tokens`` after ``start`` cached ones, straight through
    OpenVINO (ours has ``logit_index``, GenAI's export does not)."""
    n = len(tokens)
    feed = {
        "input_ids": np.array([tokens], dtype=np.int64),
        "attention_mask": np.ones((1, start + n), dtype=np.int64),
        "position_ids": np.arange(start, start + n, dtype=np.int64)[None],
        "beam_idx": np.zeros(1, dtype=np.int32),
    }
    if "logit_index" in names:
        feed["logit_index"] = np.array([n - 1], dtype=np.int64)
    request.infer(feed, share_inputs=True)


def profile(ids: list[int], weights: str = "fp32") -> None:
    import openvino as ov

    core = ov.Core()
    props = {
        "INFERENCE_PRECISION_HINT": "f32",
        "KV_CACHE_PRECISION": "f32",
        "PERFORMANCE_HINT": "LATENCY",
        "PERF_COUNT": "YES",
    }

    def run(xml: Path) -> tuple[collections.Counter[str], float]:
        compiled = core.compile_model(core.read_model(str(xml)), "CPU", props)
        request = compiled.create_infer_request()
        names = {n for port in compiled.inputs for n in port.get_names()}

        def step(tokens: list[int], start: int) -> None:
            _raw_step(request, names, tokens, start)

        step(ids, 0)
        totals: collections.Counter[str] = collections.Counter()
        started = time.perf_counter()
        for i in range(32):
            step([ids[i]], len(ids) + i)
            for info in request.profiling_info:
                totals[info.node_type] += info.real_time.total_seconds() * 1000 / 32
        return totals, (time.perf_counter() - started) / 32 * 1000

    ours, ours_ms = run(next((ROOT / f"openvino-CPU-{weights}.vmm" / "decoder").glob("*.xml")))
    theirs, theirs_ms = run(ROOT / "genai" / weights / "openvino_model.xml")
    print(f"Wall ms a decode step with PERF_COUNT: ours {ours_ms:.1f}, GenAI's {theirs_ms:.1f}\n")
    print("| op type | ours, profile ms a step | GenAI's export |\n|---|---|---|")
    for kind in sorted(set(ours) | set(theirs), key=lambda k: -(ours[k] + theirs[k])):
        if ours[kind] > 0.05 or theirs[kind] > 0.05:
            print(f"| {kind} | {ours[kind]:.2f} | {theirs[kind]:.2f} |")


def pyprofile(ids: list[int]) -> None:
    """cProfile of one 128-token INT8 generate: the time outside OpenVINO's ``infer``."""
    import cProfile
    import pstats

    with ai_vmm.load(ROOT / "openvino-CPU-int8.vmm") as lm:
        lm.generate(ids, max_new_tokens=128, min_new_tokens=128)  # warm-up
        profiler = cProfile.Profile()
        profiler.enable()
        lm.generate(ids, max_new_tokens=128, min_new_tokens=128)
        profiler.disable()
    stats = pstats.Stats(profiler)
    total = stats.total_tt  # type: ignore[attr-defined]
    infer = sum(
        tt
        for (_, _, fn), (_, _, tt, _, _) in stats.stats.items()  # type: ignore[attr-defined]
        if fn == "<built-in method openvino._pyopenvino.infer>"
    )
    print(
        f"generate {total * 1000:.0f} ms, in infer {infer * 1000:.0f} ms, outside "
        f"{(total - infer) * 1000:.0f} ms ({(total - infer) / 128 * 1000:.2f} ms a step)"
    )


def dq(ids: list[int]) -> None:
    source = ROOT / "openvino-CPU-int8.vmm"
    question = [{"role": "user", "content": "What is the capital of France?"}]
    print("| activation groups | answer | decode tok/s (400-token prompt) |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for group in (None, 64, 128, 0):
            copy = Path(tmp) / f"int8-{group}.vmm"
            shutil.copytree(source, copy)
            manifest = json.loads((copy / "manifest.json").read_text())
            config = manifest["partitions"][0]["config"]
            config.pop("dynamic_quantization_group_size", None)
            if group is not None:
                config["dynamic_quantization_group_size"] = group
            (copy / "manifest.json").write_text(json.dumps(manifest))
            with ai_vmm.load(copy) as lm:
                used = int(lm.backend_property("DYNAMIC_QUANTIZATION_GROUP_SIZE") or 0)
                answer = lm.generate(question, max_new_tokens=24).text.split("\n")[0][:60]
                speed = lm.generate(ids, max_new_tokens=64, min_new_tokens=64).tokens_per_s
            label = f"{used} (plugin default)" if group is None else (used or "off")
            print(f"| {label} | {answer} | {speed:.1f} |")


def attention(ids: list[int]) -> None:
    """Our INT8 artifact run stateful and paged (its config changed on a copy, the weights
    the same) against GenAI's INT8 export in its stateful (SDPA) and its default
    (PagedAttention) pipeline: TTFT and decode tok/s, 3 interleaved rounds."""
    import openvino_genai as genai

    props = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
    scheduler = genai.SchedulerConfig()
    scheduler.enable_prefix_caching = False
    folder = str(ROOT / "genai" / "int8")
    print("| engine | TTFT ms | decode tok/s (3 rounds) |\n|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        ours = {}
        for mode in ("stateful", "paged"):
            copy = Path(tmp) / f"int8-{mode}.vmm"
            shutil.copytree(ROOT / "openvino-CPU-int8.vmm", copy)
            manifest = json.loads((copy / "manifest.json").read_text())
            manifest["partitions"][0]["config"]["attention"] = mode
            (copy / "manifest.json").write_text(json.dumps(manifest))
            ours[f"ai-vmm, {mode}"] = ai_vmm.load(copy)
        pipes = {
            "GenAI, SDPA (stateful)": genai.LLMPipeline(
                folder, "CPU", ATTENTION_BACKEND="SDPA", **props
            ),
            "GenAI, PagedAttention (default)": genai.LLMPipeline(
                folder, "CPU", scheduler_config=scheduler, **props
            ),
        }
        runs: dict[str, list[tuple[float, float]]] = {k: [] for k in [*ours, *pipes]}
        for _ in range(3):
            for name, lm in ours.items():
                runs[name].append(_ours_run(lm, ids))
            for name, pipe in pipes.items():
                runs[name].append(_genai_run(pipe, ids))
        for name, values in runs.items():
            ttft = statistics.median(v[0] for v in values)
            print(f"| {name} | {ttft:.0f} | {', '.join(f'{v[1]:.1f}' for v in values)} |")
        for lm in ours.values():
            lm.close()


def wall(ids: list[int]) -> None:
    """``vmmc bench --generate``'s own measuring loop (``run_bench``: full-length warm-up,
    decode by the wall clock, interleaved rounds) on two engines at a time."""
    from ai_vmm.bench_generate import GenAIEngine, VmmEngine, run_bench

    cases = {  # ours, GenAI's export, the precision both compute and keep the cache in
        "fp32": ("openvino-CPU-fp32.vmm", "fp32", "f32"),
        "bf16": ("openvino-CPU-bf16.vmm", "fp32", "bf16"),
        "int8": ("openvino-CPU-int8.vmm", "int8", "f32"),
        "int4": ("openvino-CPU-int4.vmm", "int4", "f32"),
    }
    if "BF16" not in capabilities("CPU"):
        del cases["bf16"]
    print("| weights / compute | GenAI, SDPA (stateful) | ai-vmm | ai-vmm / GenAI | TTFT ms |")
    print("|---|---|---|---|---|")
    for name, (ours, export, precision) in cases.items():
        props = {
            "ATTENTION_BACKEND": "SDPA",
            "INFERENCE_PRECISION_HINT": precision,
            "KV_CACHE_PRECISION": precision,
        }
        engines: list[Any] = [
            lambda e=export, p=props, n=name: GenAIEngine(ROOT / "genai" / e, n, "SDPA", p),
            lambda o=ours, n=name: VmmEngine(ROOT / o, "ai-vmm", n, ""),
        ]
        theirs, mine = run_bench(engines, {"long": ids}, 128, 5, lambda _: None)
        length = len(ids)
        g, o = theirs.decode_tok_s[length], mine.decode_tok_s[length]
        spread = {
            row.engine: "{:.1f}-{:.1f}".format(*row.decode_spread[length]) for row in (theirs, mine)
        }
        print(
            f"| {name} / {precision} | {g:.1f} ({spread[theirs.engine]}) | {o:.1f} "
            f"({spread[mine.engine]}) | {o / g:.3f} | {theirs.ttft_ms[length]:.0f} / "
            f"{mine.ttft_ms[length]:.0f} |",
            flush=True,
        )


def _genai(weights: str = "fp32", paged: bool = False) -> Any:
    """GenAI's pipeline on its export of ``weights``: stateful (SDPA), or with ``paged`` its
    default, PagedAttention (prefix caching off, as in the bench)."""
    from ai_vmm.bench_generate import GenAIEngine

    props = {"INFERENCE_PRECISION_HINT": "f32", "KV_CACHE_PRECISION": "f32"}
    if not paged:
        props["ATTENTION_BACKEND"] = "SDPA"
    return GenAIEngine(ROOT / "genai" / weights, "GenAI", weights, props)


def _order_child(how: str, ids: list[int]) -> None:
    """One load order in this (fresh) process: fp32 decode tok/s, 8 rounds whose engine order
    alternates, by ``run_bench``'s wall-clock measure."""
    from ai_vmm.bench_generate import VmmEngine

    weights = os.environ.get("LLM_LEAN_WEIGHTS", "fp32")

    def ours() -> Any:
        return VmmEngine(ROOT / f"openvino-CPU-{weights}.vmm", "ai-vmm", weights, "")

    if how == "copies":
        engines = [ours(), ours(), ours()]
        names = ["our copy loaded 1st", "2nd", "3rd"]
    elif how in ("ours-alone", "genai-alone"):
        # GenAI as users run it: its default pipeline, PagedAttention (our decoders are paged
        # too where the compile measured it faster: the artifact's report says which)
        engines = [ours() if how == "ours-alone" else _genai(weights, paged=True)]
        names = [how]
    else:
        engines = [ours(), _genai()] if how == "ours-first" else [_genai(), ours()]
        names = [e.name for e in engines]
    for engine in engines:
        engine.run(ids, 128)
    speeds: list[list[float]] = [[] for _ in engines]
    ttfts: list[list[float]] = [[] for _ in engines]
    for round_index in range(8):
        order = range(len(engines)) if round_index % 2 == 0 else reversed(range(len(engines)))
        for i in order:
            _, ttft, rate = engines[i].run(ids, 128)
            speeds[i].append(rate)
            ttfts[i].append(ttft * 1000)
    cells = ", ".join(
        f"{n} {statistics.median(v):.1f} (TTFT {statistics.median(t):.0f} ms)"
        for n, v, t in zip(names, speeds, ttfts, strict=True)
    )
    ratio = ""
    if how in ("ours-first", "genai-first"):
        mine = 0 if how == "ours-first" else 1
        per_round = [a / b for a, b in zip(speeds[mine], speeds[1 - mine], strict=True)]
        ratio = f" | ours / GenAI a round {min(per_round):.3f}-{max(per_round):.3f}"
    print(f"| {how} | {cells}{ratio} |", flush=True)


def order(ids: list[int]) -> None:
    """Load order: each order in a fresh process (docs/generate.md, "Load order")."""
    import subprocess

    print("| load order | fp32 decode tok/s, median of 8 rounds | |\n|---|---|---|", flush=True)
    for how in ("ours-first", "genai-first", "copies"):
        subprocess.run([sys.executable, __file__, f"_order-{how}"], check=True)


def alone(ids: list[int], weights: str = "fp32") -> None:
    """The single-model case: our decoder alone in a fresh process, and GenAI's alone in
    another, 3 pairs, the first and third with ours first (no other decoder is ever loaded in
    those processes); ``weights`` fp32, int8 or int4 (f32 activations and KV cache for both)."""
    import subprocess

    ids_file = Path(tempfile.mkdtemp()) / "ids.json"
    ids_file.write_text(json.dumps(ids))
    env = {**os.environ, "LLM_LEAN_IDS": str(ids_file), "LLM_LEAN_WEIGHTS": weights}
    print(f"| process | {weights} decode tok/s (TTFT), median of 8 rounds |\n|---|---|", flush=True)
    for pair in range(3):  # which goes first alternates: the machine's speed drifts
        hows = ("ours-alone", "genai-alone") if pair % 2 == 0 else ("genai-alone", "ours-alone")
        for how in hows:
            subprocess.run([sys.executable, __file__, f"_order-{how}"], check=True, env=env)


def difference(ids: list[int]) -> None:
    """INT8 decode as the difference of a 128-token and a 1-token ``generate`` (nothing taken
    from either engine's report), 5 interleaved rounds, GenAI's stateful pipeline first."""
    from ai_vmm.bench_generate import GenAIEngine, VmmEngine

    props = {
        "ATTENTION_BACKEND": "SDPA",
        "INFERENCE_PRECISION_HINT": "f32",
        "KV_CACHE_PRECISION": "f32",
    }
    engines = {
        "GenAI": GenAIEngine(ROOT / "genai" / "int8", "GenAI", "int8", props),
        "ai-vmm": VmmEngine(ROOT / "openvino-CPU-int8.vmm", "ai-vmm", "int8", ""),
    }

    def total(engine: Any, n: int) -> float:
        started = time.perf_counter()
        engine.run(ids, n)
        return time.perf_counter() - started

    for engine in engines.values():
        total(engine, 128)
    rates: dict[str, list[float]] = {k: [] for k in engines}
    for _ in range(5):
        for name, engine in engines.items():
            one = total(engine, 1)
            rates[name].append(127 / (total(engine, 128) - one))
    g, o = (statistics.median(rates[k]) for k in ("GenAI", "ai-vmm"))
    print(f"INT8 decode by difference: GenAI {g:.1f}, ai-vmm {o:.1f} tok/s, ratio {o / g:.3f}")


def raw_int8(ids: list[int]) -> None:
    """Raw decode steps from Python (no pipeline): our INT8 decoder, GenAI's INT8 export, and
    our fp32 decoder compressed ``INT8_ASYM`` as GenAI's is; 128 steps at the 400-token
    context, 9 interleaved rounds, the same compile properties."""
    import nncf
    import openvino as ov

    core = ov.Core()
    props = {
        "INFERENCE_PRECISION_HINT": "f32",
        "KV_CACHE_PRECISION": "f32",
        "PERFORMANCE_HINT": "LATENCY",
    }
    ours_xml = next((ROOT / "openvino-CPU-int8.vmm" / "decoder").glob("*.xml"))
    fp32_xml = next((ROOT / "openvino-CPU-fp32.vmm" / "decoder").glob("*.xml"))
    models = {
        "ours": core.read_model(str(ours_xml)),
        "GenAI's export": core.read_model(str(ROOT / "genai" / "int8" / "openvino_model.xml")),
        "ours, INT8_ASYM": nncf.compress_weights(
            core.read_model(str(fp32_xml)), mode=nncf.CompressWeightsMode.INT8_ASYM
        ),
    }
    requests = {}
    for name, model in models.items():
        compiled = core.compile_model(model, "CPU", props)
        names = {n for port in compiled.inputs for n in port.get_names()}
        requests[name] = (compiled.create_infer_request(), names)

    def steps(request: Any, names: set[str], count: int = 128) -> float:
        request.reset_state()
        _raw_step(request, names, ids, 0)
        started = time.perf_counter()
        for i in range(count):
            _raw_step(request, names, [ids[i]], len(ids) + i)
        return (time.perf_counter() - started) / count * 1000

    for request, names in requests.values():
        steps(request, names, 16)
    times: dict[str, list[float]] = {k: [] for k in requests}
    for _ in range(9):
        for name, (request, names) in requests.items():
            times[name].append(steps(request, names))
    for name, values in times.items():
        print(
            f"{name}: {statistics.median(values):.2f} ms a step "
            f"({min(values):.1f}-{max(values):.1f})"
        )


def main(argv: list[str]) -> int:
    parts = argv or ["engines", "compressed", "profile", "wall", "dq"]
    if not (ROOT / "genai" / "fp32").is_dir():
        print(f"run `vmmc bench {MODEL} --generate --baselines genai` first", file=sys.stderr)
        return 2
    if os.environ.get("LLM_LEAN_IDS"):  # a child of ``alone``: no decoder loaded before
        ids = json.loads(Path(os.environ["LLM_LEAN_IDS"]).read_text())
    else:
        with ai_vmm.load(ROOT / "openvino-CPU-fp32.vmm") as lm:
            ids = prompts(lm.tokenizer)["long"]
    runs: dict[str, Callable[[list[int]], None]] = {
        "engines": engines,
        "compressed": compressed,
        "profile": profile,
        "profile-int8": lambda ids: profile(ids, "int8"),
        "wall": wall,
        "pyprofile": pyprofile,
        "dq": dq,
        "order": order,
        "attention": attention,
        "alone": alone,
        "alone-int8": lambda ids: alone(ids, "int8"),
        "alone-int4": lambda ids: alone(ids, "int4"),
        "difference": difference,
        "raw-int8": raw_int8,
    }
    if parts and parts[0].startswith("_order-"):  # a child of ``order``
        _order_child(parts[0].removeprefix("_order-"), ids)
        return 0
    for part in parts:
        print(f"\n### {part}\n")
        runs[part](ids)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
