"""Choosing the next token: greedy, or sampled with temperature, top-k, top-p and a repetition
penalty, in ``transformers``' order (penalty, temperature, top-k, top-p, then draw).

Each sequence draws from its own ``numpy`` generator seeded by its request, so a seeded
request gives the same tokens whatever else shares its batch.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, fields
from typing import Any

import numpy as np

from ai_vmm.runtime.errors import InputError


@dataclass(frozen=True)
class GenerationParams:
    """What one request asks of the decoder.

    Attributes:
        max_new_tokens: stop after this many generated tokens (finish reason ``length``).
        temperature: ``0`` is greedy; above ``0`` samples from ``softmax(logits / T)``.
        top_k: sample among the ``k`` most likely tokens (``0``: all).
        top_p: sample among the most likely tokens whose probabilities add up to ``p``.
        repetition_penalty: divides positive (multiplies negative) logits of tokens already
            in the prompt or the reply (``1.0``: off), as ``transformers`` does.
        stop: strings that end the reply (not included in the text).
        seed: seeds this request's sampling; the same seed gives the same reply.
        min_new_tokens: end-of-sequence tokens cannot be chosen before this many tokens (their
            logits are masked, as ``transformers``' ``min_new_tokens`` does; benchmarks and
            parity runs set it to ``max_new_tokens``).
    """

    max_new_tokens: int = 128
    temperature: float = 0.0
    top_k: int = 0
    top_p: float = 1.0
    repetition_penalty: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None
    min_new_tokens: int = 0

    def __post_init__(self) -> None:
        if isinstance(self.stop, str):
            object.__setattr__(self, "stop", (self.stop,))
        else:
            object.__setattr__(self, "stop", tuple(self.stop or ()))
        if not isinstance(self.max_new_tokens, int) or self.max_new_tokens < 1:
            raise InputError(
                f"max_new_tokens must be a positive integer, not {self.max_new_tokens!r}"
            )
        if not isinstance(self.min_new_tokens, int) or self.min_new_tokens < 0:
            raise InputError(f"min_new_tokens must be an integer >= 0, not {self.min_new_tokens!r}")
        if not self.temperature >= 0:
            raise InputError(f"temperature must be >= 0, not {self.temperature}")
        if not isinstance(self.top_k, int) or self.top_k < 0:
            raise InputError(f"top_k must be an integer >= 0, not {self.top_k!r}")
        if not 0 < self.top_p <= 1:
            raise InputError(f"top_p must be in (0, 1], not {self.top_p}")
        if not self.repetition_penalty > 0:
            raise InputError(f"repetition_penalty must be > 0, not {self.repetition_penalty}")
        if any(not isinstance(s, str) or not s for s in self.stop):
            raise InputError("stop must be a list of non-empty strings")
        if self.seed is not None and (
            isinstance(self.seed, bool) or not isinstance(self.seed, int)
        ):
            raise InputError(f"seed must be an integer, not {self.seed!r}")

    @property
    def greedy(self) -> bool:
        return self.temperature == 0

    @classmethod
    def coerce(cls, params: Any) -> GenerationParams:
        """``params`` as ``GenerationParams``: itself, a dict, or an object with those attributes
        (OpenAI's ``max_tokens`` is read as ``max_new_tokens``)."""
        if isinstance(params, cls):
            return params
        if params is None:
            return cls()
        names = {f.name for f in fields(cls)}
        if isinstance(params, Mapping):
            values = dict(params)
        else:
            values = {n: getattr(params, n) for n in [*names, "max_tokens"] if hasattr(params, n)}
        if "max_tokens" in values:
            values.setdefault("max_new_tokens", values.pop("max_tokens"))
        unknown = sorted(set(values) - names)
        if unknown:
            raise InputError(f"unknown generation parameter(s): {', '.join(unknown)}")
        if values.get("stop") is None:
            values.pop("stop", None)
        return cls(**values)


class Sampler:
    """One sequence's token choice: its parameters, its random generator, its token counts."""

    def __init__(
        self,
        params: GenerationParams,
        prompt: list[int],
        vocab_size: int,
        eos_token_ids: tuple[int, ...] = (),
    ) -> None:
        self.params = params
        self._rng = np.random.default_rng(params.seed)
        self._eos = np.array([t for t in eos_token_ids if 0 <= t < vocab_size], dtype=np.int64)
        self._step = 0
        self._seen: np.ndarray | None = None
        if params.repetition_penalty != 1.0:
            self._seen = np.zeros(vocab_size, dtype=bool)
            self._seen[[t for t in prompt if 0 <= t < vocab_size]] = True

    def choose(self, logits: np.ndarray) -> int:
        """The next token from one row of logits ``[vocab]`` (float32)."""
        params = self.params
        if self._seen is not None:
            logits = _penalize(logits[: self._seen.size], self._seen, params.repetition_penalty)
        if self._step < params.min_new_tokens and self._eos.size:
            logits = logits.copy()
            logits[self._eos] = -np.inf
        self._step += 1
        token = int(np.argmax(logits)) if params.greedy else self._draw(logits)
        if self._seen is not None and token < self._seen.size:
            self._seen[token] = True
        return token

    def blocked_if_greedy(self) -> np.ndarray | None:
        """Where this step's choice is a plain argmax (greedy, no repetition penalty): the
        tokens it must skip (EOS before ``min_new_tokens``), for a backend that takes the
        argmax itself (then :meth:`took` records its token); None otherwise."""
        if not self.params.greedy or self._seen is not None:
            return None
        return self._eos if self._step < self.params.min_new_tokens else self._eos[:0]

    def took(self, token: int) -> int:
        """Record a token chosen by the backend after :meth:`blocked_if_greedy`."""
        self._step += 1
        return int(token)

    def _draw(self, logits: np.ndarray) -> int:
        params = self.params
        scores = logits.astype(np.float64) / params.temperature
        candidates = np.arange(scores.size)
        if 0 < params.top_k < scores.size:
            candidates = np.argpartition(-scores, params.top_k - 1)[: params.top_k]
        order = candidates[np.argsort(-scores[candidates], kind="stable")]
        top = scores[order]
        probs = np.exp(top - top[0])
        probs /= probs.sum()
        if params.top_p < 1.0:
            keep = int(np.searchsorted(np.cumsum(probs), params.top_p)) + 1
            order, probs = order[:keep], probs[:keep] / probs[:keep].sum()
        cumulative = np.cumsum(probs)
        index = int(np.searchsorted(cumulative, self._rng.random() * cumulative[-1], side="right"))
        return int(order[min(index, order.size - 1)])


def _penalize(logits: np.ndarray, seen: np.ndarray, penalty: float) -> np.ndarray:
    out = logits.copy()
    picked = out[seen]
    out[seen] = np.where(picked > 0, picked / penalty, picked * penalty)
    return out
