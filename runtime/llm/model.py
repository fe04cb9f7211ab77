"""``CausalLM``: a loaded ``causal-lm`` artifact that generates text.

``ai_vmm.runtime.load(path)`` returns one for a ``causal-lm`` artifact. ``generate`` runs in
the caller's thread (batches of prompts share decode steps there too); ``engine()`` starts the
continuous-batching engine for servers.
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, cast

import numpy as np

from ai_vmm.runtime.artifact import Manifest, TensorSpec, read_report
from ai_vmm.runtime.errors import InputError
from ai_vmm.runtime.llm.engine import Engine
from ai_vmm.runtime.llm.sampling import GenerationParams
from ai_vmm.runtime.llm.scheduler import GenerationResult, Scheduler, TokenEvent
from ai_vmm.runtime.llm.session import DecoderSession, KvContext, open_session
from ai_vmm.runtime.llm.spec import LMSpec
from ai_vmm.runtime.llm.tokenizer import Tokenizer

Prompt = str | Sequence[Mapping[str, Any]] | Sequence[int]


class CausalLM:
    """A causal language model compiled by ai-vmm.

    Attributes:
        tokenizer: ``encode``, ``decode``, ``apply_chat_template`` (the model's own).
        manifest: the artifact's manifest; ``spec`` its validated ``llm`` section.
        target, device: where the decoder runs (``openvino``/``CPU``, ...).
    """

    kind = "causal-lm"

    def __init__(
        self,
        root: Path,
        manifest: Manifest,
        spec: LMSpec,
        session: DecoderSession,
        tokenizer: Tokenizer,
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.spec = spec
        self.tokenizer = tokenizer
        self._session = session
        self._pool: queue.SimpleQueue[KvContext] = queue.SimpleQueue()
        self._engines: list[Engine] = []
        self._lock = threading.Lock()
        self._closed = False
        self._unpacked: Any = None
        """Set by ``ai_vmm.runtime.load`` for a zip artifact: its unpacked files, removed at
        ``close()``."""

    # -- description ---------------------------------------------------------------------

    @property
    def target(self) -> str:
        return self.spec.partition.target

    @property
    def device(self) -> str:
        return self.spec.partition.device

    @property
    def context_length(self) -> int:
        return self.spec.context_length

    @property
    def inputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.inputs

    @property
    def outputs(self) -> tuple[TensorSpec, ...]:
        return self.manifest.outputs

    @property
    def attention(self) -> tuple[str, str | None]:
        """How the backend runs attention (OpenVINO: ``stateful`` or ``paged``; others: their
        kind of cache), and why it differs from what the artifact asked for, if it does."""
        return (
            str(getattr(self._session, "attention", self.spec.decoder_kind)),
            getattr(self._session, "attention_note", None),
        )

    @property
    def decode_compile(self) -> tuple[str, str | None]:
        """How decode steps run (cuda: ``inductor`` or ``none``; other backends ``none``), and
        why they run plain although the artifact asked for Inductor, if so."""
        return (
            str(getattr(self._session, "decode_compile", "none")),
            getattr(self._session, "decode_note", None),
        )

    def report(self) -> dict[str, Any]:
        """The artifact's ``report.json`` (what was built and why)."""
        return read_report(self.root)

    # -- prompts -------------------------------------------------------------------------

    def encode_prompt(self, prompt: Prompt) -> list[int]:
        """Token ids of one prompt: a string (the tokenizer adds its special tokens), a chat
        (a list of ``{"role", "content"}`` messages, through the chat template) or token ids.

        Raises:
            InputError: anything else, an empty prompt, or one longer than the context.
        """
        if isinstance(prompt, str):
            ids = self.tokenizer.encode(prompt)
        elif _is_messages(prompt):
            ids = list(self.tokenizer.apply_chat_template(prompt))  # type: ignore[arg-type]
        elif _is_token_ids(prompt):
            ids = [int(t) for t in cast("Sequence[int]", prompt)]
        else:
            raise InputError(
                "a prompt is a string, a list of chat messages ({'role', 'content'}) or a list "
                f"of token ids, not {type(prompt).__name__}"
            )
        self._check_prompt(ids)
        return ids

    def _check_prompt(self, ids: Sequence[int], params: GenerationParams | None = None) -> None:
        if not ids:
            raise InputError("the prompt is empty (no tokens)")
        if len(ids) >= self.context_length:
            raise InputError(
                f"the prompt has {len(ids)} tokens; this model's context is "
                f"{self.context_length} tokens (leave room for the reply)"
            )
        bad = [t for t in ids if not 0 <= int(t) < self.spec.vocab_size]
        if bad:
            raise InputError(
                f"token id {bad[0]} is outside the vocabulary (0..{self.spec.vocab_size - 1})"
            )

    # -- generation ----------------------------------------------------------------------

    def generate(
        self,
        prompt: Prompt | Sequence[Prompt],
        *,
        max_new_tokens: int = 128,
        temperature: float = 0.0,
        top_k: int = 0,
        top_p: float = 1.0,
        repetition_penalty: float = 1.0,
        stop: str | Sequence[str] | None = None,
        seed: int | None = None,
        stream: bool = False,
        min_new_tokens: int = 0,
    ) -> GenerationResult | list[GenerationResult] | TextStream:
        """Generate a reply to one prompt, or to each of a list of prompts (batched together).

        Args:
            prompt: a string, a chat (list of ``{"role", "content"}`` messages), a list of token
                ids, or a list of strings / chats (one result per item, in order).
            max_new_tokens: at most this many new tokens per reply.
            temperature: ``0`` (default) is greedy; above ``0`` samples.
            top_k: sample among the ``k`` most likely tokens (``0``: all).
            top_p: nucleus sampling threshold.
            repetition_penalty: ``transformers``' repetition penalty (``1.0``: off).
            stop: strings that end a reply (left out of its text).
            seed: seeds sampling; the same seed and prompt give the same reply.
            stream: return an iterator of text pieces instead (one prompt only); its
                ``result`` is the ``GenerationResult`` once it is exhausted.
            min_new_tokens: no end of sequence before this many tokens (EOS logits masked).

        Returns:
            A ``GenerationResult``, a list of them, or (``stream=True``) a ``TextStream``.

        Raises:
            InputError: a bad prompt or parameter.
        """
        params = GenerationParams(
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            stop=() if stop is None else (stop,) if isinstance(stop, str) else tuple(stop),
            seed=seed,
            min_new_tokens=min_new_tokens,
        )
        single = isinstance(prompt, str) or _is_messages(prompt) or _is_token_ids(prompt)
        if not single and not isinstance(prompt, Sequence):
            raise InputError(
                "generate() takes a prompt string, chat messages, token ids or a list of "
                f"prompts, not {type(prompt).__name__}"
            )
        prompts = [prompt] if single else list(prompt)
        if not prompts:
            raise InputError("generate() got an empty list of prompts")
        encoded = [self.encode_prompt(p) for p in prompts]  # type: ignore[arg-type]
        if stream:
            if not single:
                raise InputError("stream=True takes one prompt, not a list")
            return TextStream(self, encoded[0], params)
        scheduler = self._scheduler(len(encoded))
        handles = [scheduler.submit(ids, params) for ids in encoded]
        try:
            while scheduler.has_work():
                scheduler.step()
        finally:
            self._give_back(scheduler)
        results = [h.wait(0) for h in handles]
        out = [r for r in results if r is not None]
        return out[0] if single else out

    def engine(self, max_batch: int = 8) -> Engine:
        """Start a continuous-batching engine on this model (see ``ai_vmm.runtime.llm.engine``)."""
        if max_batch < 1:
            raise InputError(f"max_batch must be >= 1, not {max_batch}")
        engine = Engine(
            self._scheduler(max_batch),
            lambda ids, params: self._check_prompt(ids, params),
            self._give_back,
        )
        with self._lock:
            self._engines.append(engine)
        return engine

    def log_likelihood(self, ids: Sequence[int], *, window: int = 512) -> tuple[float, int]:
        """Sum of ``-log p(token | previous tokens)`` over ``ids[1:]`` and how many tokens,
        in windows of ``window`` tokens that each continue the cache (for perplexity)."""
        ids = [int(t) for t in ids]
        self._check_prompt(ids[: self.context_length - 1])
        context = self._take_context()
        total, count, position = 0.0, 0, 0
        try:
            context.reset()
            limit = min(len(ids), self.context_length)
            while position < limit - 1:
                chunk = ids[position : min(position + window, limit)]
                n = len(chunk)
                logits = context.forward(
                    np.array([chunk], np.int64),
                    np.ones((1, position + n), np.int64),
                    np.arange(position, position + n, dtype=np.int64)[None],
                    np.arange(n, dtype=np.int64),
                )[0].astype(np.float64)
                targets = ids[position + 1 : position + n + 1]
                rows = logits[: len(targets)]
                peak = rows.max(axis=1, keepdims=True)
                logz = np.log(np.exp(rows - peak).sum(axis=1)) + peak[:, 0]
                total += float((logz - rows[np.arange(len(targets)), targets]).sum())
                count += len(targets)
                position += n
        finally:
            context.reset()
            self._pool.put(context)
        return total, count

    def run(self, inputs: Mapping[str, Any]) -> dict[str, Any]:
        """Tensor models run tensors; a causal LM generates (this says so, in one line)."""
        raise InputError(
            "this artifact is a causal LM: generate text with lm.generate(...) or "
            "`vmmc generate ARTIFACT PROMPT`, not with tensors"
        )

    def __call__(self, **inputs: Any) -> dict[str, Any]:
        return self.run(inputs)

    # -- plumbing ------------------------------------------------------------------------

    def _scheduler(self, max_batch: int) -> Scheduler:
        if self._closed:
            raise InputError("this model is closed")
        tok = self.spec.tokenizer
        return Scheduler(
            self._session,
            self.tokenizer,
            vocab_size=self.spec.vocab_size,
            context_length=self.context_length,
            pad_token_id=tok.pad_token_id,
            max_batch=max_batch,
            contexts=self._take_context,
        )

    def _take_context(self) -> KvContext:
        try:
            return self._pool.get_nowait()
        except queue.Empty:
            return self._session.context()

    def _give_back(self, scheduler: Scheduler) -> None:
        for context in scheduler.contexts():
            context.reset()
            if self._pool.qsize() < 2:
                self._pool.put(context)

    def backend_property(self, name: str) -> Any:
        """A property of the compiled decoder as its backend reports it (OpenVINO's
        ``get_property``, e.g. ``DYNAMIC_QUANTIZATION_GROUP_SIZE``); ``None`` where the
        backend has no compiled model or no such property."""
        compiled = getattr(self._session, "compiled_model", None)
        if compiled is None:
            return None
        try:
            return compiled.get_property(name)
        except Exception:  # a plugin without the property
            return None

    def close(self) -> None:
        """Stop engines and release the backend."""
        if self._closed:
            return
        self._closed = True
        with self._lock:
            engines, self._engines = self._engines, []
        for engine in engines:
            engine.close()
        self._session.close()
        if self._unpacked is not None:
            self._unpacked.cleanup()

    def __enter__(self) -> CausalLM:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"CausalLM({self.spec.architecture}, {self.target}:{self.device}, "
            f"context {self.context_length})"
        )


class TextStream:
    """An iterator of text pieces of one reply, generated as it is read (caller's thread)."""

    def __init__(self, lm: CausalLM, ids: list[int], params: GenerationParams) -> None:
        self._lm = lm
        self._pieces: deque[str] = deque()
        self._scheduler = lm._scheduler(1)
        self._handle = self._scheduler.submit(ids, params, self._on_event)
        self._open = True
        self.result: GenerationResult | None = None

    def _on_event(self, event: TokenEvent) -> None:
        if event.text:
            self._pieces.append(event.text)
        if event.result is not None:
            self.result = event.result

    def __iter__(self) -> Iterator[str]:
        return self

    def __next__(self) -> str:
        while not self._pieces and self._open:
            if self._scheduler.has_work():
                self._scheduler.step()
            else:
                self._open = False
                self._lm._give_back(self._scheduler)
        if self._pieces:
            return self._pieces.popleft()
        raise StopIteration

    def close(self) -> None:
        """Stop generating (the result says ``cancelled``)."""
        if self._open:
            self._handle.cancel()
            while self._scheduler.has_work():
                self._scheduler.step()
            self._open = False
            self._lm._give_back(self._scheduler)


def _is_messages(prompt: Any) -> bool:
    return (
        isinstance(prompt, Sequence)
        and not isinstance(prompt, str)
        and len(prompt) > 0
        and all(isinstance(m, Mapping) for m in prompt)
    )


def _is_token_ids(prompt: Any) -> bool:
    return (
        isinstance(prompt, Sequence | np.ndarray)
        and not isinstance(prompt, str)
        and len(prompt) > 0
        and all(isinstance(t, int | np.integer) and not isinstance(t, bool) for t in prompt)
    )


def load_causal_lm(root: Path, manifest: Manifest) -> CausalLM:
    """Open a ``causal-lm`` artifact (hashes already verified by ``ai_vmm.runtime.load``).

    Raises:
        ArtifactError: the ``llm`` section or the tokenizer is broken.
        DeviceError: the backend or its device is missing here.
    """
    spec = LMSpec.from_manifest(manifest)
    tok = spec.tokenizer
    template = None
    if tok.chat_template is not None:
        template = (root / tok.chat_template).read_text(encoding="utf-8")
    tokenizer = Tokenizer(
        root / tok.file,
        chat_template=template,
        special_tokens=tok.special_tokens,
        eos_token_ids=tok.eos_token_ids,
    )
    session = open_session(root, spec)
    return CausalLM(root, manifest, spec, session, tokenizer)
