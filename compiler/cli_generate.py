"""``vmmc generate MODEL "prompt"``: generate text with a causal LM, streamed to the terminal."""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer

from ai_vmm.cli_errors import need_path

DEFAULT_CACHE = Path.home() / ".cache" / "ai-vmm" / "generate"


def generate_cmd(
    model: Annotated[
        Path,
        typer.Argument(
            help="A causal-lm artifact (.vmm), a .gguf file or a Hugging Face directory."
        ),
    ],
    prompt: Annotated[str, typer.Argument(help="The prompt (sent as a chat message by default).")],
    max_new_tokens: Annotated[int, typer.Option(help="At most this many new tokens.")] = 256,
    temperature: Annotated[float, typer.Option(help="0 = greedy.")] = 0.0,
    top_k: Annotated[int, typer.Option(help="Sample among the k most likely tokens.")] = 0,
    top_p: Annotated[float, typer.Option(help="Nucleus sampling threshold.")] = 1.0,
    repetition_penalty: Annotated[float, typer.Option(help="1.0 = off.")] = 1.0,
    stop: Annotated[
        list[str] | None, typer.Option("--stop", help="A string that ends the reply (repeatable).")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Seed for sampling.")] = None,
    system: Annotated[str | None, typer.Option(help="A system message (chat models).")] = None,
    raw: Annotated[
        bool,
        typer.Option("--raw", help="Send the prompt as plain text, not through the chat template."),
    ] = False,
    target: Annotated[
        str, typer.Option(help="When MODEL is not an artifact: compile for this target.")
    ] = "auto",
    weights: Annotated[
        str | None, typer.Option(help="When MODEL is not an artifact: int8 or int4 weights.")
    ] = None,
    cache_dir: Annotated[
        Path, typer.Option(help="Where artifacts compiled from MODEL are kept.")
    ] = DEFAULT_CACHE,
) -> None:
    """Stream a reply to PROMPT from MODEL; timings go to stderr."""
    from rich.console import Console

    from ai_vmm.runtime.errors import InputError

    need_path(model, "model")
    err = Console(stderr=True)
    lm = _open(model, target, weights, cache_dir, err)
    try:
        messages: Any
        if raw or lm.tokenizer.chat_template is None:
            messages = prompt
        else:
            messages = ([{"role": "system", "content": system}] if system else []) + [
                {"role": "user", "content": prompt}
            ]
        if raw and system:
            raise InputError("--system needs the chat template: drop --raw")
        stream = lm.generate(
            messages,
            max_new_tokens=max_new_tokens,
            temperature=temperature,
            top_k=top_k,
            top_p=top_p,
            repetition_penalty=repetition_penalty,
            stop=stop or None,
            seed=seed,
            stream=True,
        )
        for piece in stream:
            sys.stdout.write(piece)
            sys.stdout.flush()
        sys.stdout.write("\n")
        result = stream.result
        if result is not None:
            speed = f", {result.tokens_per_s:.1f} tok/s" if result.tokens_per_s else ""
            err.print(
                f"[dim]{result.prompt_tokens} prompt + {result.completion_tokens} new tokens, "
                f"first token {1000 * (result.ttft_s or 0):.0f} ms{speed}, "
                f"finish: {result.finish_reason} ({lm.target}:{lm.device})[/dim]"
            )
    finally:
        lm.close()


def _open(model: Path, target: str, weights: str | None, cache_dir: Path, err: Any) -> Any:
    """Load an artifact, or compile MODEL once into ``cache_dir`` and load that."""
    import ai_vmm
    from ai_vmm.runtime.artifact import is_artifact
    from ai_vmm.runtime.errors import InputError

    if is_artifact(model):
        lm = ai_vmm.load(model)
        if getattr(lm, "kind", "model") != "causal-lm":
            lm.close()
            raise InputError(f"{model} is not a causal LM artifact (vmmc run takes tensor models)")
        return lm
    from ai_vmm.frontends.causal_lm import is_causal_lm, source_digest

    if not is_causal_lm(model):
        raise InputError(
            f"{model} is neither a causal-lm artifact nor a causal LM (.gguf, or a Hugging Face "
            f"directory whose config names a *ForCausalLM architecture)"
        )
    digest = source_digest(model)[:16]
    artifact = (
        cache_dir / f"{model.stem}-{digest}-{target.replace(':', '_')}-{weights or 'fp32'}.vmm"
    )
    if not is_artifact(artifact):
        started = time.perf_counter()
        ai_vmm.compile(
            model,
            target=target,
            output=artifact,
            weights=weights,
            progress=lambda m: err.print(f"[dim]{time.perf_counter() - started:6.1f}s {m}[/dim]"),
        )
    return ai_vmm.load(artifact)
