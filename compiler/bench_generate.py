"""``vmmc bench MODEL --generate``: LM generation speed against transformers and OpenVINO GenAI.

Every engine runs in this one process on the same token ids (a short chat prompt and a long
one), greedy with EOS blocked for ``new_tokens`` tokens; rounds are interleaved (each engine
once per round) so a noisy machine slows all of them alike; the medians of the rounds are
reported. Columns: time to first token, prefill tokens/s (prompt tokens / TTFT), decode
tokens/s (after the first token), resident memory added by loading the engine, and greedy
agreement with transformers (the common prefix of the long prompt's reply, in tokens).

Engines: ai-vmm artifacts (compiled here: OpenVINO fp32, INT8 and INT4 behind the quality gate,
ONNX Runtime fp32), ``transformers`` eager (``--baselines transformers``) and OpenVINO GenAI's
``LLMPipeline`` on optimum-intel exports (``--baselines genai``: fp32 with its default u8 KV
cache and the plugin's default precision, which is bf16 on a CPU with AMX; fp32 with f32
activations and KV cache; INT8 and INT4 group 64 with f32 activations; bf16 where the CPU has
it; prefix caching off). On a CPU with bf16 our OpenVINO build runs in bf16 too. optimum-intel needs
transformers < 5.6 for ``optimum-cli export openvino``: it runs from a separate virtual
environment (``$AI_VMM_OPTIMUM_VENV``, default ``/work/venvs/optimum``) on a Hugging Face folder
converted here from the GGUF under this process's transformers.
"""

from __future__ import annotations

import gc
import os
import statistics
import subprocess
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ai_vmm.runtime.errors import InputError

CACHE = Path.home() / ".cache" / "ai-vmm" / "bench-generate"
OPTIMUM_VENV = Path(os.environ.get("AI_VMM_OPTIMUM_VENV", "/work/venvs/optimum"))
BASELINES = ("transformers", "genai")
SHORT_QUESTION = "What is the capital of France?"


@dataclass
class Row:
    """One engine's figures."""

    engine: str
    precision: str
    notes: str = ""
    memory_mb: float = 0.0
    ttft_ms: dict[int, float] = field(default_factory=dict)
    decode_tok_s: dict[int, float] = field(default_factory=dict)
    decode_spread: dict[int, tuple[float, float]] = field(default_factory=dict)
    agreement: int | None = None
    answer: str = ""
    error: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "engine": self.engine,
            "precision": self.precision,
            "notes": self.notes,
            "memory_mb": round(self.memory_mb, 1),
            "ttft_ms": {str(k): round(v, 1) for k, v in self.ttft_ms.items()},
            "decode_tok_s": {str(k): round(v, 2) for k, v in self.decode_tok_s.items()},
            "decode_spread": {
                str(k): [round(a, 2), round(b, 2)] for k, (a, b) in self.decode_spread.items()
            },
            "agreement": self.agreement,
            "answer": self.answer,
            "error": self.error,
        }


class Engine:
    """An engine under test: ``run(ids, n) -> (tokens, ttft_s, decode_tok_s)``."""

    name = ""
    precision = ""
    notes = ""

    def run(self, ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
        raise NotImplementedError

    def close(self) -> None:
        pass


class VmmEngine(Engine):
    def __init__(self, artifact: Path, label: str, precision: str, notes: str) -> None:
        import ai_vmm

        self.lm = ai_vmm.load(artifact)
        self.name, self.precision, self.notes = label, precision, notes

    def run(self, ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
        start = time.perf_counter()
        result = self.lm.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        ttft = float(result.ttft_s or 0)
        return list(result.tokens), ttft, _decode_rate(new_tokens, start, ttft)

    def close(self) -> None:
        self.lm.close()


class TransformersEngine(Engine):
    name, precision, notes = "transformers eager", "fp32", "reference"

    def __init__(self, model: Any) -> None:
        self.model = model

    def run(self, ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
        import torch
        from transformers.generation.streamers import BaseStreamer

        class Clock(BaseStreamer):  # type: ignore[misc]
            def __init__(self) -> None:
                self.times: list[float] = []

            def put(self, value: Any) -> None:
                self.times.append(time.perf_counter())

            def end(self) -> None:
                pass

        clock = Clock()
        tensor = torch.tensor([ids])
        start = time.perf_counter()
        with torch.no_grad():
            out = self.model.generate(
                tensor,
                attention_mask=torch.ones_like(tensor),
                max_new_tokens=new_tokens,
                min_new_tokens=new_tokens,
                do_sample=False,
                streamer=clock,
                pad_token_id=0,
            )
        ttft = clock.times[1] - start  # times[0] is the prompt
        return [int(t) for t in out[0, len(ids) :]], ttft, _decode_rate(new_tokens, start, ttft)


class GenAIEngine(Engine):
    def __init__(
        self, folder: Path, precision: str, notes: str, properties: dict[str, str]
    ) -> None:
        """``properties``: OpenVINO CPU properties (``INFERENCE_PRECISION_HINT``,
        ``KV_CACHE_PRECISION``); none: the plugin's defaults (bf16 on a CPU with AMX).
        ``ATTENTION_BACKEND="SDPA"`` runs GenAI's stateful pipeline instead of its default
        PagedAttention one (which alone takes a scheduler configuration)."""
        import openvino_genai as genai

        props: dict[str, Any] = dict(properties)
        if props.get("ATTENTION_BACKEND") != "SDPA":
            scheduler = genai.SchedulerConfig()
            scheduler.enable_prefix_caching = False  # a repeated prompt would skip its prefill
            props["scheduler_config"] = scheduler
        self.pipe = genai.LLMPipeline(str(folder), "CPU", **props)
        self._genai = genai
        self.name = "OpenVINO GenAI"
        self.precision, self.notes = precision, notes

    def run(self, ids: list[int], new_tokens: int) -> tuple[list[int], float, float]:
        import numpy as np
        import openvino as ov

        genai = self._genai
        config = genai.GenerationConfig()
        config.max_new_tokens = new_tokens
        config.min_new_tokens = new_tokens
        array = np.array([ids], dtype=np.int64)
        inputs = genai.TokenizedInputs(ov.Tensor(array), ov.Tensor(np.ones_like(array)))
        start = time.perf_counter()
        result = self.pipe.generate(inputs, config)
        ttft = result.perf_metrics.get_ttft().mean / 1000.0
        return [int(t) for t in result.tokens[0]], ttft, _decode_rate(new_tokens, start, ttft)


def _decode_rate(new_tokens: int, start: float, ttft: float) -> float:
    """Tokens after the first per second, from the wall clock of the whole ``generate`` (called
    right after ``start``) less its time to first token: the same measure for every engine
    (GenAI's own TPOT and ours had differed in what they leave out)."""
    return (new_tokens - 1) / max(time.perf_counter() - start - ttft, 1e-9)


def prompts(tokenizer: Any, long_tokens: int = 400) -> dict[str, list[int]]:
    """The short chat prompt and a long one (standard-library prose as the user message)."""
    from ai_vmm.llm_quality import docstring_corpus

    chat = tokenizer.chat_template is not None

    def encode(text: str) -> list[int]:
        if chat:
            return list(tokenizer.apply_chat_template([{"role": "user", "content": text}]))
        return list(tokenizer.encode(text))

    short = encode(SHORT_QUESTION)
    corpus = docstring_corpus(20_000)
    low, high = 0, len(corpus)
    while low < high:  # the longest prefix of the prose that keeps the prompt <= long_tokens
        mid = (low + high + 1) // 2
        if len(encode(corpus[:mid] + "\n\nSummarize the text above.")) <= long_tokens:
            low = mid
        else:
            high = mid - 1
    long = encode(corpus[:low] + "\n\nSummarize the text above.")
    return {"short": short, "long": long}


def run_bench(
    engines: Sequence[Callable[[], Engine]],
    cases: dict[str, list[int]],
    new_tokens: int,
    rounds: int,
    say: Callable[[str], None],
) -> list[Row]:
    """Load each engine (measuring the memory it adds), then interleaved timed rounds."""
    import psutil

    process = psutil.Process()
    loaded: list[tuple[Engine, Row]] = []
    for factory in engines:
        gc.collect()
        before = process.memory_info().rss
        try:
            engine = factory()
        except Exception as exc:
            say(f"skipped an engine: {type(exc).__name__}: {exc}")
            continue
        row = Row(engine.name, engine.precision, engine.notes)
        row.memory_mb = (process.memory_info().rss - before) / 2**20
        say(f"loaded {engine.name} {engine.precision} (+{row.memory_mb:.0f} MB)")
        for ids in cases.values():
            # Warm-up at the full length: every context length a timed run meets once, so
            # kernels made per shape are made here (a 4-token warm-up left our first rounds
            # slow: docs/generate.md).
            engine.run(ids, new_tokens)
        loaded.append((engine, row))
    samples: dict[tuple[int, int], list[tuple[float, float]]] = {}
    first_tokens: dict[tuple[int, str], list[int]] = {}
    for round_index in range(rounds):
        for index, (engine, row) in enumerate(loaded):
            for case, ids in cases.items():
                try:
                    tokens, ttft, speed = engine.run(ids, new_tokens)
                except Exception as exc:
                    row.error = f"{type(exc).__name__}: {exc}"
                    continue
                samples.setdefault((index, len(ids)), []).append((ttft, speed))
                first_tokens.setdefault((index, case), tokens)
            say(f"round {round_index + 1}/{rounds}: {engine.name} {engine.precision}")
    reference = next(
        (i for i, (engine, _) in enumerate(loaded) if isinstance(engine, TransformersEngine)), None
    )
    for index, (engine, row) in enumerate(loaded):
        for length in {len(ids) for ids in cases.values()}:
            runs = samples.get((index, length), [])
            if runs:
                row.ttft_ms[length] = 1000 * statistics.median(r[0] for r in runs)
                row.decode_tok_s[length] = statistics.median(r[1] for r in runs)
                row.decode_spread[length] = (min(r[1] for r in runs), max(r[1] for r in runs))
        if reference is not None and (index, "long") in first_tokens:
            from ai_vmm.llm_quality import common_prefix

            row.agreement = common_prefix(
                first_tokens[(index, "long")], first_tokens[(reference, "long")]
            )
        row.answer = _answer(engine, first_tokens.get((index, "short"), []))
        engine.close()
    return [row for _, row in loaded]


def _answer(engine: Engine, tokens: list[int]) -> str:
    lm = getattr(engine, "lm", None)
    if lm is None or not tokens:
        return ""
    text: str = lm.tokenizer.decode(tokens)
    return text.split("\n")[0][:80]


def genai_exports(hf_dir: Path, root: Path, say: Callable[[str], None]) -> dict[str, Path]:
    """optimum-intel exports (fp32, int8, int4 group 64) of ``hf_dir``, made once.

    Raises:
        InputError: the optimum virtual environment is missing.
    """
    cli = OPTIMUM_VENV / "bin" / "optimum-cli"
    if not cli.is_file():
        raise InputError(
            f"OpenVINO GenAI baselines need optimum-intel in {OPTIMUM_VENV} (python -m venv "
            f"--system-site-packages {OPTIMUM_VENV}; {OPTIMUM_VENV}/bin/pip install "
            f"'transformers<5.6'; {OPTIMUM_VENV}/bin/pip install --no-deps optimum-intel optimum "
            f"'kernels>=0.12,<0.13')"
        )
    found: dict[str, Path] = {}
    for fmt, extra in (
        ("fp32", []),
        ("int8", []),
        ("int4", ["--group-size", "64", "--ratio", "1.0"]),
    ):
        out = root / fmt
        if not (out / "openvino_model.xml").is_file():
            say(f"optimum-cli export openvino --weight-format {fmt}")
            command = [
                str(cli), "export", "openvino", "--model", str(hf_dir),
                "--task", "text-generation-with-past", "--weight-format", fmt, *extra, str(out),
            ]  # fmt: skip
            done = subprocess.run(command, capture_output=True, text=True, check=False)
            if done.returncode != 0:
                tail = " ".join((done.stderr or done.stdout).split())[-300:]
                hint = (
                    f" (transformers 5.5 needs kernels 0.12 beside it: {OPTIMUM_VENV}/bin/pip "
                    f"install --no-deps 'kernels>=0.12,<0.13')"
                    if "kernels" in tail
                    else ""
                )
                raise InputError(f"optimum-cli export ({fmt}) failed: {tail}{hint}")
        found[fmt] = out
    return found


def hf_folder(source: Any, root: Path) -> Path:
    """A Hugging Face folder of the model (a GGUF is dequantized here, under this
    transformers: saving a GGUF-loaded model is refused, so its weights go into a fresh model
    of the same config)."""
    out = root / "hf"
    if (out / "config.json").is_file():
        return out
    import transformers

    model, tokenizer = source.model, source.tokenizer
    fresh = type(model)(model.config)
    fresh.load_state_dict(model.state_dict())
    fresh.config.quantization_config = None
    if hasattr(fresh.config, "quantization_config"):
        del fresh.config.quantization_config
    fresh.save_pretrained(out)
    tokenizer.save_pretrained(out)
    generation = getattr(model, "generation_config", None)
    if generation is not None:
        transformers.GenerationConfig.from_dict(generation.to_dict()).save_pretrained(out)
    return out
