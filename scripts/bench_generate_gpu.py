"""Decode speed on an NVIDIA GPU: ai-vmm's cuda LM path against transformers, one process.

Models: SmolLM2-135M-Instruct (real weights, from the GGUF) and a 1B-class Llama with random
weights (Llama-3.2-1B's shape: 16 layers, hidden 2048, 32 heads, 8 KV heads, vocabulary
128256). Precisions fp16 and bf16; batch 1 and 16; greedy, EOS blocked.

Engines:
* ai-vmm: ``ai_vmm.compile(..., target="cuda:0", precision=...)``: static KV cache, decode
  steps replayed as CUDA graphs (``runtime/executors/cuda_lm.py``);
* transformers eager (dynamic cache);
* transformers with a static cache, which its ``generate`` compiles with
  ``torch.compile(mode="reduce-overhead")`` (its documented fast path: CUDA graphs through
  Inductor for the decode step; the prefill runs eagerly).

Decode tokens/s: for transformers, batch x (new tokens - 1) / (time of the whole generate -
time of a one-token generate); for ai-vmm, batch / the median time per output token that
``generate`` reports; medians of ``--rounds`` rounds. Writes the table between
``<!-- gpu-generate:start -->`` and ``<!-- gpu-generate:end -->`` in docs/generate.md.

    python scripts/bench_generate_gpu.py                 # on the GPU machine
    python scripts/bench_generate_gpu.py --tiny          # CPU smoke run (tiny model, seconds)

``--engines vmm,eager,compiled`` runs a subset; with ``--json`` the rows are merged into what the
file already holds (same model, precision, batch and engine replaced), so each engine can run
in its own process (``scripts/gpu_all.sh generate`` does: on the H200 one process running all
three died with a segmentation fault while the torch.compile baseline warmed up, taking every
row with it). Rounds are interleaved only among the engines of one process.
"""

from __future__ import annotations

import argparse
import faulthandler
import gc
import importlib.util
import inspect
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
SMOLLM2 = Path.home() / ".cache" / "ai-vmm" / "realmodels" / "SmolLM2-135M-Instruct.Q4_1.gguf"
GPU_ALL_COMMAND = (
    "bash scripts/gpu_all.sh OUT generate (per engine group: python3 scripts/bench_generate_gpu.py "
    "--engines E --models smollm2,llama1b --dtypes bf16 --batches 1,16 --new-tokens 64 --rounds 2 "
    "--json J); then python scripts/bench_generate_gpu.py --render-only --json "
    "docs/generate-gpu.json"
)
MAX_NEW = 512
"""The static caches of the torch.compile baseline hold prompt + this many tokens."""
DTYPES = {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}
LLAMA_1B = {
    "vocab_size": 128256,
    "hidden_size": 2048,
    "intermediate_size": 8192,
    "num_hidden_layers": 16,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "max_position_embeddings": 4096,
    "rope_theta": 500000.0,
    "tie_word_embeddings": True,
}
# SmolLM2-135M's shape, for a machine the 98 MB GGUF cannot reach (the device tool carries at
# most 64 MiB): the same architecture with random weights runs at the same speed.
SMOLLM2_SHAPE = {
    "vocab_size": 49152,
    "hidden_size": 576,
    "intermediate_size": 1536,
    "num_hidden_layers": 30,
    "num_attention_heads": 9,
    "num_key_value_heads": 3,
    "max_position_embeddings": 8192,
    "rope_theta": 100000.0,
    "rms_norm_eps": 1e-5,
    "tie_word_embeddings": True,
}


def _tiny_lms() -> Any:
    spec = importlib.util.spec_from_file_location("tiny_lms", REPO / "models" / "tiny_lms.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["tiny_lms"] = module
    spec.loader.exec_module(module)
    return module


def model_dirs(names: list[str], root: Path, tiny: bool) -> dict[str, Path]:
    """Hugging Face folders (or the GGUF) of the models to measure."""
    found: dict[str, Path] = {}
    tiny_lms = _tiny_lms()
    for name in names:
        if tiny:
            found[name] = tiny_lms.save("llama", root / name)
        elif name == "smollm2" and SMOLLM2.is_file():
            found[name] = SMOLLM2
        elif name in ("smollm2", "llama1b"):
            # SmolLM2 without its GGUF here: its shape with random weights (said in the table).
            label = name if name == "llama1b" else "smollm2-shape"
            shape = LLAMA_1B if name == "llama1b" else SMOLLM2_SHAPE
            folder = root / label
            if not (folder / "config.json").is_file():
                import torch
                import transformers

                torch.manual_seed(0)
                model = transformers.LlamaForCausalLM(transformers.LlamaConfig(**shape))
                model.save_pretrained(folder)
                tiny_lms.tokenizer().save_pretrained(folder)
            found[name if name == "llama1b" else label] = folder
        else:
            raise SystemExit(f"unknown model {name!r} (smollm2, llama1b)")
    return found


def hf_engine(
    source: Path, dtype: str, device: str, compiled: bool
) -> Callable[[list[list[int]], int], float]:
    """transformers generate; returns a function (prompts, new tokens) -> decode tok/s."""
    import torch
    import transformers

    kwargs = {"gguf_file": source.name} if source.suffix == ".gguf" else {}
    folder = source.parent if source.suffix == ".gguf" else source
    model = (
        transformers.AutoModelForCausalLM.from_pretrained(
            str(folder), dtype=getattr(torch, DTYPES[dtype]), **kwargs
        )
        .to(device)
        .eval()
    )
    caches: dict[int, Any] = {}
    cache_kw = (
        "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    )
    if compiled:
        # transformers' own fast path: with a static cache, ``generate`` compiles the decode
        # step itself (``CompileConfig``, mode "reduce-overhead" on a GPU) and runs the prefill
        # eagerly. Wrapping ``model.forward`` in ``torch.compile`` as well (what this script did
        # first) compiled twice, prefill included, and died with a segmentation fault in
        # PyTorch's CUDA-graph trees on the H200 (2026-12-04, twice).
        config = transformers.CompileConfig(
            mode="reduce-overhead" if device.startswith("cuda") else "default"
        )
        if not device.startswith("cuda"):
            config._compile_all_devices = True  # the CPU smoke run compiles too
        model.generation_config.compile_config = config

    def timed(prompts: list[list[int]], new_tokens: int) -> float:
        ids = torch.tensor(prompts, device=device)

        def run(n: int) -> float:
            extra: dict[str, Any] = {}
            if compiled:
                # One static cache per batch size, of one length for every call: a new length
                # would recompile (transformers sizes its own static cache per call).
                if len(prompts) not in caches:
                    caches[len(prompts)] = transformers.StaticCache(
                        config=model.config, max_cache_len=ids.shape[1] + MAX_NEW
                    )
                extra[cache_kw] = caches[len(prompts)]
                extra[cache_kw].reset()
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            start = time.perf_counter()
            with torch.no_grad():
                model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    max_new_tokens=n,
                    min_new_tokens=n,
                    do_sample=False,
                    pad_token_id=0,
                    **extra,
                )
            if device.startswith("cuda"):
                torch.cuda.synchronize()
            return time.perf_counter() - start

        first = run(1)
        total = run(new_tokens)
        return len(prompts) * (new_tokens - 1) / max(total - first, 1e-9)

    return timed


_BUILT: set[Path] = set()


def vmm_engine(
    source: Path, dtype: str, target: str, out: Path, variant: str = ""
) -> Callable[[list[list[int]], int], float]:
    """ai-vmm's cuda LM path, compiled with ``tune=False``; ``variant`` "inductor" loads it
    with decode steps through ``torch.compile`` (``AI_VMM_CUDA_LM_COMPILE``), "full" attends
    over the whole static cache every step (the path before cache windows), for comparison;
    "tuned" compiles with the default ``tune=True`` (the compile times plain against Inductor
    decode steps and keeps the faster: what a user gets)."""
    import ai_vmm
    from ai_vmm.runtime.executors import cuda_lm

    previous = os.environ.pop("AI_VMM_CUDA_LM_COMPILE", None)
    try:
        if variant == "tuned":  # what a user's default compile gives: its own timed choice
            out = out.with_name(f"{out.stem}-tuned.vmm")
            ai_vmm.compile(source, target=target, output=out, precision=dtype, force=True)
            lm = ai_vmm.load(out)
            print(f"tuned compile chose decode_compile={lm.decode_compile}", flush=True)
        else:
            if out not in _BUILT:  # the variants of one process share the artifact
                ai_vmm.compile(
                    source, target=target, output=out, precision=dtype, tune=False, force=True
                )
                _BUILT.add(out)
            os.environ["AI_VMM_CUDA_LM_COMPILE"] = "inductor" if variant == "inductor" else "none"
            lm = ai_vmm.load(out)
    finally:
        os.environ.pop("AI_VMM_CUDA_LM_COMPILE", None)
        if previous is not None:
            os.environ["AI_VMM_CUDA_LM_COMPILE"] = previous

    def timed(prompts: list[list[int]], new_tokens: int) -> float:
        batch = prompts if len(prompts) > 1 else prompts[0]
        window = cuda_lm.MIN_WINDOW
        if variant == "full":
            cuda_lm.MIN_WINDOW = 1 << 30  # every step over the whole cache
        try:
            results = lm.generate(batch, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        finally:
            cuda_lm.MIN_WINDOW = window
        results = results if isinstance(results, list) else [results]
        tpot = statistics.median(r.tpot_s for r in results if r.tpot_s)
        return len(prompts) / tpot

    return timed


ENGINES = {
    "vmm": "ai-vmm (static cache, CUDA graphs)",
    "vmm-inductor": "ai-vmm, decode steps through Inductor",
    "vmm-full": "ai-vmm, attention over the whole cache",
    "vmm-tuned": "ai-vmm as a default (tuned) compile chooses",
    "eager": "transformers eager",
    "compiled": "transformers static cache + torch.compile",
}


def make_engine(
    key: str, source: Path, dtype: str, device: str, target: str, stem: Path
) -> Callable[[list[list[int]], int], float]:
    if key.startswith("vmm"):
        variant = key.partition("-")[2]
        return vmm_engine(source, dtype, target, Path(f"{stem}-{dtype}.vmm"), variant)
    if key in ("eager", "compiled"):
        return hf_engine(source, dtype, device, compiled=key == "compiled")
    raise SystemExit(f"unknown engine {key!r} ({', '.join(ENGINES)})")


def run(args: argparse.Namespace) -> list[dict[str, Any]]:
    import torch

    on_cpu = args.tiny or args.on_cpu
    device = "cpu" if on_cpu else "cuda:0"
    target = "cuda:cpu" if on_cpu else "cuda:0"
    root = Path(args.work)
    gpu = "CPU" if on_cpu else torch.cuda.get_device_name(0)
    rows: list[dict[str, Any]] = []
    for name, source in model_dirs(args.models.split(","), root, args.tiny).items():
        for dtype in args.dtypes.split(","):
            prompt = [(7 * i + 3) % 500 + 1 for i in range(args.prompt_tokens)]
            engines = {
                ENGINES[key]: make_engine(key, source, dtype, device, target, root / name)
                for key in args.engines.split(",")
            }
            for batch in (int(b) for b in args.batches.split(",")):
                prompts = [prompt] * batch
                for engine in engines.values():  # warm-up (compiles, captures)
                    engine(prompts, 4)
                speeds: dict[str, list[float]] = {k: [] for k in engines}
                for _ in range(args.rounds):
                    for label, engine in engines.items():
                        speeds[label].append(engine(prompts, args.new_tokens))
                for label, values in speeds.items():
                    row = {
                        "gpu": gpu,
                        "when": time.strftime("%Y-%m-%d %H:%M"),
                        "prompt_tokens": args.prompt_tokens,
                        "new_tokens": args.new_tokens,
                        "model": name,
                        "dtype": dtype,
                        "batch": batch,
                        "engine": label,
                        "decode_tok_s": round(statistics.median(values), 1),
                        "spread": [round(min(values), 1), round(max(values), 1)],
                    }
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json is not None:  # each row kept at once: a part may time out
                        args.json.write_text(json.dumps(merge(args.json, [row]), indent=2) + "\n")
            del engines
            gc.collect()
            if torch.cuda.is_available():
                torch.cuda.empty_cache()
    return rows


BASELINE = "transformers static cache + torch.compile"


def markdown(rows: list[dict[str, Any]], command: str) -> str:
    """The table of ``rows`` (sorted by model, precision, batch), each row against the
    torch.compile baseline of the same model, precision and batch (measured on the same GPU)."""
    gpus = sorted({str(r.get("gpu", "GPU not recorded")) for r in rows})
    dates = sorted({str(r["when"]) for r in rows if r.get("when")})
    when = f"{dates[0]} to {dates[-1]}" if len(dates) > 1 else (dates[0] if dates else "")
    lines = [
        f"{', '.join(gpus)}; greedy, prompt {rows[0].get('prompt_tokens', 128) if rows else 128} "
        f"tokens, {rows[0].get('new_tokens', 64) if rows else 64} new tokens, EOS blocked; "
        "decode tokens/s summed over the batch, median of the rounds [min-max]; each engine "
        "in a process of its own, one after the other on one machine "
        f"(`scripts/gpu_all.sh generate`); {when}.",
        "",
        f"Command: `{command}`",
        "",
        "| model | precision | batch | engine | decode tok/s | x torch.compile |",
        "|---|---|---|---|---|---|",
    ]
    base = {
        (r["model"], r["dtype"], r["batch"]): r["decode_tok_s"]
        for r in rows
        if r["engine"] == BASELINE
    }
    order = {name: i for i, name in enumerate(ENGINES.values())}
    for r in sorted(
        rows, key=lambda r: (r["model"], r["dtype"], r["batch"], order.get(r["engine"], 99))
    ):
        reference = base.get((r["model"], r["dtype"], r["batch"]))
        ratio = "-" if reference is None else f"{r['decode_tok_s'] / reference:.2f}x"
        engine = r["engine"]
        if rows and (r.get("prompt_tokens"), r.get("new_tokens")) != (
            rows[0].get("prompt_tokens"),
            rows[0].get("new_tokens"),
        ):
            engine += f" (prompt {r.get('prompt_tokens')}, {r.get('new_tokens')} new tokens)"
        lines.append(
            f"| {r['model']} | {r['dtype']} | {r['batch']} | {engine} | "
            f"{r['decode_tok_s']} [{r['spread'][0]}-{r['spread'][1]}] | {ratio} |"
        )
    return "\n".join(lines) + "\n"


def write_section(path: Path, body: str) -> None:
    start, end = "<!-- gpu-generate:start -->", "<!-- gpu-generate:end -->"
    text = path.read_text() if path.is_file() else "# Generation\n\n"
    block = f"{start}\n{body}{end}"
    if start in text and end in text:
        text = text[: text.index(start)] + block + text[text.index(end) + len(end) :]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    path.write_text(text)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--models", default="smollm2,llama1b")
    parser.add_argument("--dtypes", default="fp16,bf16")
    parser.add_argument("--batches", default="1,16")
    parser.add_argument("--prompt-tokens", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--engines", default="vmm,eager,compiled")
    parser.add_argument(
        "--work", default=os.path.join(tempfile.gettempdir(), "ai-vmm-gpu-generate")
    )
    parser.add_argument("--out", type=Path, default=REPO / "docs" / "generate.md")
    parser.add_argument("--json", type=Path, default=None)
    parser.add_argument(
        "--render-only",
        action="store_true",
        help="Rewrite the table in --out from the rows in --json (no run): how the table in "
        "docs/generate.md is made from docs/generate-gpu.json on any machine.",
    )
    parser.add_argument(
        "--tiny", action="store_true", help="CPU smoke run: a tiny Llama, fp32, batch 1 and 2."
    )
    parser.add_argument(
        "--on-cpu",
        action="store_true",
        help="Run the cuda LM path on the CPU (target cuda:cpu, no graphs) with the models and "
        "settings given: the same mechanisms, for a machine without a GPU (table not written).",
    )
    args = parser.parse_args(argv)
    if args.tiny:
        args.models, args.dtypes, args.batches = "tiny-llama", "fp32", "1,2"
        args.new_tokens, args.prompt_tokens, args.rounds = 8, 16, 1
    before = json.loads(args.json.read_text()) if args.json and args.json.is_file() else []
    command = "python scripts/bench_generate_gpu.py " + " ".join(
        argv if argv is not None else sys.argv[1:]
    )
    if args.render_only:
        if not before:
            parser.error("--render-only needs --json with rows")
        command = GPU_ALL_COMMAND
        write_section(args.out, markdown(before, command))
        print(f"wrote {args.out}")
        return 0
    faulthandler.enable()
    Path(args.work).mkdir(parents=True, exist_ok=True)
    rows = _merge_rows(before, run(args))
    if not (args.tiny or args.on_cpu):
        write_section(args.out, markdown(rows, command.strip()))
        print(f"wrote {args.out}")
    if args.json is not None:
        args.json.write_text(json.dumps(rows, indent=2) + "\n")
    return 0


def merge(path: Path | None, new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows already in ``path`` (if any), with this run's rows replacing their namesakes."""
    if path is None or not path.is_file():
        return new
    return _merge_rows(json.loads(path.read_text()), new)


def _merge_rows(old: list[dict[str, Any]], new: list[dict[str, Any]]) -> list[dict[str, Any]]:
    def key(row: dict[str, Any]) -> tuple[Any, ...]:
        return (row["model"], row["dtype"], row["batch"], row["engine"])

    fresh = {key(r) for r in new}
    return [r for r in old if key(r) not in fresh] + new


if __name__ == "__main__":
    raise SystemExit(main())
