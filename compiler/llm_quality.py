"""What an LM compile measures: greedy parity, perplexity on real text, speed.

* Parity: greedy tokens of a candidate against ``transformers`` ``generate`` in float32 (the
  reference is computed once per compile).
* Quality of compressed weights: perplexity on real English (docstrings of the Python standard
  library) against the float build of the same target, and greedy agreement with the float
  model's replies to real chat prompts: the length of the common prefix, as a share.
* Speed: time to first token and decode tokens/s on a prompt of realistic length.
"""

from __future__ import annotations

import importlib
import inspect
import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

CHAT_PROMPTS = (
    "What is the capital of France?",
    "Explain in two sentences what a hash table is.",
    "Write a Python function that reverses a string.",
    "Give three tips for sleeping better.",
)
CORPUS_MODULES = (
    "json",
    "textwrap",
    "functools",
    "collections",
    "argparse",
    "pathlib",
    "logging",
    "subprocess",
    "itertools",
    "statistics",
    "shutil",
    "datetime",
)
CALIBRATION_MODULES = (
    "email.message",
    "http.client",
    "unittest",
    "typing",
    "asyncio",
    "threading",
    "csv",
    "random",
    "contextlib",
    "tarfile",
    "zipfile",
    "heapq",
)
"""Text that calibrates data-aware INT4 (``calibration_windows``): other modules than the
gate's, so that the gate measures the compressed model on text it was not fitted to."""


def docstring_corpus(max_chars: int = 60_000, modules: Sequence[str] = CORPUS_MODULES) -> str:
    """Real English prose: docstrings of standard-library modules and their members, in a fixed
    order (the same text on every machine with this Python)."""
    parts: list[str] = []
    for name in modules:
        module = importlib.import_module(name)
        seen: set[str] = set()
        for obj in [module, *(v for _, v in sorted(vars(module).items()))]:
            doc = inspect.getdoc(obj) if callable(obj) or obj is module else None
            if doc and len(doc) > 200 and doc not in seen:
                seen.add(doc)
                parts.append(doc)
    text = "\n\n".join(parts)
    return text[:max_chars]


def chat_prompts(tokenizer: Any) -> list[list[int]]:
    """The gate prompts as token ids: through the chat template when the model has one."""
    if tokenizer.chat_template is not None:
        return [
            list(tokenizer.apply_chat_template([{"role": "user", "content": q}]))
            for q in CHAT_PROMPTS
        ]
    corpus = docstring_corpus(20_000)
    return [tokenizer.encode(corpus[i * 3000 : i * 3000 + 300]) for i in range(len(CHAT_PROMPTS))]


def calibration_windows(
    tokenizer: Any, texts: Sequence[str] | None = None, count: int = 32, length: int = 128
) -> list[list[int]]:
    """Token windows that calibrate data-aware weight compression: up to ``count`` windows of
    ``length`` tokens from ``texts`` (the user's own text) or, without it, from docstrings of
    ``CALIBRATION_MODULES`` (real English, disjoint from the gate's text)."""
    if texts is None:
        texts = [docstring_corpus(count * length * 8, CALIBRATION_MODULES)]
    windows: list[list[int]] = []
    for text in texts:
        ids = [int(t) for t in tokenizer.encode(text)]
        for start in range(0, max(len(ids) - 1, 1), length):
            window = ids[start : start + length]
            if len(window) >= min(16, length):
                windows.append(window)
            if len(windows) == count:
                return windows
    return windows


def realistic_prompt(tokenizer: Any, tokens: int) -> list[int]:
    """``tokens`` tokens of real text (for timing)."""
    return tokenizer.encode(docstring_corpus(tokens * 8))[:tokens]


def perplexity(lm: Any, tokens: Sequence[int], window: int = 512) -> float:
    """``exp`` of the mean negative log-likelihood of ``tokens`` under ``lm``."""
    total, count = lm.log_likelihood(tokens, window=window)
    return math.exp(total / max(count, 1))


def greedy(lm: Any, prompts: Sequence[Sequence[int]], new_tokens: int) -> list[list[int]]:
    """Greedy replies (EOS blocked, so every reply has ``new_tokens`` tokens)."""
    return [
        lm.generate(list(p), max_new_tokens=new_tokens, min_new_tokens=new_tokens).tokens
        for p in prompts
    ]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    count = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        count += 1
    return count


def distinct_share(tokens: Sequence[int], n: int = 4) -> float:
    """The share of distinct ``n``-grams among a reply's ``n``-grams: near 1 for prose, low for
    a reply that repeats itself (``la France, la France, ...``)."""
    grams = [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 1.0


def longest_common_subsequence(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common subsequence of two token lists (ROUGE-L's core)."""
    previous = [0] * (len(b) + 1)
    for x in a:
        current = [0]
        for j, y in enumerate(b):
            current.append(previous[j] + 1 if x == y else max(previous[j + 1], current[j]))
        previous = current
    return previous[-1]


def answer_overlap(replies: Sequence[Sequence[int]], references: Sequence[Sequence[int]]) -> float:
    """Mean ROUGE-L recall of the replies against the reference replies: the share of each
    reference's tokens that the reply has in the same order. A paraphrase that keeps the
    answer scores high even when it leaves the reference's exact words early (greedy
    trajectories of a 135 M-parameter model part after a few tokens under INT8); a reply that
    loses the answer or loops does not."""
    shares = [
        longest_common_subsequence(r, ref) / max(len(ref), 1)
        for r, ref in zip(replies, references, strict=True)
    ]
    return sum(shares) / max(len(shares), 1)


@dataclass
class Speed:
    """Median of a few runs: time to first token and decode tokens/s."""

    prompt_tokens: int
    new_tokens: int
    ttft_s: float
    decode_tok_s: float
    runs: int

    def to_json(self) -> dict[str, Any]:
        return {
            "prompt_tokens": self.prompt_tokens,
            "new_tokens": self.new_tokens,
            "ttft_ms": round(self.ttft_s * 1000, 2),
            "decode_tok_s": round(self.decode_tok_s, 2),
            "runs": self.runs,
        }


def speed_figures(values: Sequence[Speed]) -> dict[str, Any]:
    """Medians over rounds of ``measure_speed``: request time (TTFT + decoding), decode
    tokens/s, TTFT, and the rounds themselves (how the compile's timed choices report)."""
    return {
        "request_ms": round(
            1000 * statistics.median(v.ttft_s + v.new_tokens / v.decode_tok_s for v in values), 2
        ),
        "decode_tok_s": round(statistics.median(v.decode_tok_s for v in values), 2),
        "ttft_ms": round(1000 * statistics.median(v.ttft_s for v in values), 2),
        "rounds": [v.to_json() for v in values],
    }


CHOICE_PROMPT_TOKENS = 400
"""The request a compile's timed choices run (attention, decode steps): the bench's long prompt
(``vmmc bench --generate``), where prefill and attention show, and 64 new tokens."""
CHOICE_NEW_TOKENS = 64
CHOICE_ROUNDS = 3


def choice_prompt(lm: Any) -> list[int]:
    """The timed choices' prompt for ``lm``: real text, at most half its context."""
    return realistic_prompt(lm.tokenizer, min(CHOICE_PROMPT_TOKENS, lm.context_length // 2))


def timed_choice(chosen: str, why: str, speeds: dict[str, list[Speed]]) -> dict[str, Any]:
    """A compile's timed choice between runtime configurations, as the report records it:
    what was kept, why, and each contender's figures (:func:`speed_figures`)."""
    figures = {mode: speed_figures(values) for mode, values in speeds.items() if values}
    return {"chosen": chosen, "why": why, **figures}


def race(first: dict[str, Any], second: dict[str, Any]) -> str:
    """Two contenders' :func:`speed_figures` in one line, the first against the second."""
    request = first["rounds"][0]
    return (
        f"{first['request_ms']:.0f} against {second['request_ms']:.0f} ms a request of "
        f"{request['prompt_tokens']} + {request['new_tokens']} tokens (decode "
        f"{first['decode_tok_s']:.1f} against {second['decode_tok_s']:.1f} tok/s, TTFT "
        f"{first['ttft_ms']:.0f} against {second['ttft_ms']:.0f} ms; medians of "
        f"{len(first['rounds'])} rounds)"
    )


def measure_speed(lm: Any, prompt: Sequence[int], new_tokens: int, runs: int = 3) -> Speed:
    """Greedy runs with EOS blocked; medians of TTFT and of decode speed."""
    ttfts, speeds = [], []
    for _ in range(runs):
        result = lm.generate(list(prompt), max_new_tokens=new_tokens, min_new_tokens=new_tokens)
        ttfts.append(result.ttft_s or 0.0)
        speeds.append(result.tokens_per_s or 0.0)
    return Speed(len(prompt), new_tokens, statistics.median(ttfts), statistics.median(speeds), runs)
