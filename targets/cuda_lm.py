"""The cuda target for causal LMs: a decoder step with a static KV cache, saved by ``torch.export``.

The step takes the cache as preallocated tensors ``[batch, heads, max_cache_len, head_dim]``
and writes the new keys/values into them in place (``transformers``' ``StaticCache`` layers,
pointed at the inputs), so a decode step has fixed shapes and fixed addresses: the runtime
captures it in a CUDA graph per batch size (``runtime/executors/cuda_lm.py``)::

    inputs   input_ids [batch, seq], attention_mask [batch, max_cache_len] (1 = a real token
             in that cache column), position_ids [batch, seq], cache_length [] (columns already
             written), logit_index [n], then key, value of each layer (mutated in place)
    output   logits float32 [batch, n, vocab]

The program is exported on the device it will run on, in the requested precision (fp16 /
bf16 on GPUs; fp32 too), and saved with ``torch.export.save`` (weights inside).
"""

from __future__ import annotations

import copy
import inspect
from pathlib import Path
from typing import Any

from ai_vmm.runtime.errors import CompileError, DeviceError
from ai_vmm.targets.cuda_lm_attention import use_grouped

DEFAULT_MAX_CACHE = 4096
_DTYPES = {"fp32": "float32", "fp16": "float16", "bf16": "bfloat16"}


def build(
    model: Any,
    heads: tuple[int, ...],
    head_dims: tuple[int, ...],
    out_dir: Path,
    *,
    precision: str,
    device: str,
    max_cache_len: int = DEFAULT_MAX_CACHE,
) -> tuple[str, dict[str, Any], str]:
    """Export ``model``'s static-cache decoder step to ``out_dir/decoder.pt2``.

    ``device`` is a CUDA index (``"0"``) or ``"cpu"`` (for tests: no CUDA graphs then).

    Returns:
        The entry file name, the executor config, a note for the report.

    Raises:
        CompileError: an architecture this path does not handle (sliding-window caches, ...)
            or a failed export.
        DeviceError: the CUDA device is missing.
    """
    import torch
    from transformers import StaticCache
    from transformers.cache_utils import StaticLayer

    if precision not in _DTYPES:
        raise CompileError(f"precision {precision!r}: the cuda LM path takes fp32, fp16 or bf16")
    dtype = getattr(torch, _DTYPES[precision])
    if device == "cpu":
        target = torch.device("cpu")
    else:
        if not torch.cuda.is_available():
            raise DeviceError("the cuda target needs an NVIDIA GPU; PyTorch sees none here")
        target = torch.device(f"cuda:{int(device) if device.isdigit() else 0}")
    config = model.config
    context = int(getattr(config.get_text_config(), "max_position_embeddings", max_cache_len))
    max_len = min(max_cache_len, context)
    probe = StaticCache(config=config, max_cache_len=max_len)
    if any(type(layer) is not StaticLayer for layer in probe.layers):
        raise CompileError(
            "the cuda LM path handles full-attention caches only (this model has sliding-window "
            "or other cache layers)"
        )
    layers = len(heads)
    work = copy.deepcopy(model).to(device=target, dtype=dtype).eval()
    grouped = use_grouped(work)
    # transformers >= 5.2x takes the cache as ``cache``, earlier 5.x (5.17 on the GPU machine)
    # as ``past_key_values``; under the other name it lands in ``**kwargs`` unread and the model
    # builds a fresh cache, so every decode step would see only its own token.
    parameters = inspect.signature(work.forward).parameters
    cache_kw = "cache" if "cache" in parameters else "past_key_values"

    class StaticStep(torch.nn.Module):  # type: ignore[misc,name-defined]
        def __init__(self) -> None:
            super().__init__()
            self.model = work

        def forward(
            self,
            input_ids: Any,
            attention_mask: Any,
            position_ids: Any,
            cache_length: Any,
            logit_index: Any,
            *kv: Any,
        ) -> Any:
            cache = StaticCache(config=config, max_cache_len=max_len)
            layer: Any
            for i, layer in enumerate(cache.layers):
                keys, values = kv[2 * i], kv[2 * i + 1]
                layer.keys, layer.values = keys, values
                layer.device = keys.device
                layer.batch_size, layer.num_heads = keys.shape[0], keys.shape[1]
                layer.k_head_dim, layer.v_head_dim = keys.shape[-1], values.shape[-1]
                # The runtime hands over a window of the cache (its first columns): the
                # masks and the attention span that window, not the whole buffer.
                layer.max_cache_len = keys.shape[2]
                # Each layer advances its own counter while writing: one copy each.
                layer.cumulative_length = cache_length.clone()
                layer.is_initialized = True
            out = self.model(
                input_ids=input_ids,
                attention_mask=attention_mask,
                position_ids=position_ids,
                use_cache=True,
                logits_to_keep=logit_index,
                **{cache_kw: cache},
            )
            return out.logits.float()

    batch, seq, window = 2, 5, min(max_len, 64)
    example = [
        torch.randint(0, 100, (batch, seq), device=target),
        torch.cat(
            [
                torch.ones(batch, seq, dtype=torch.int64, device=target),
                torch.zeros(batch, window - seq, dtype=torch.int64, device=target),
            ],
            dim=1,
        ),
        torch.arange(seq, device=target).repeat(batch, 1),
        torch.tensor(0, device=target),
        torch.tensor([seq - 2, seq - 1], device=target),
    ]
    for h, d in zip(heads, head_dims, strict=True):
        example += [torch.zeros(batch, h, window, d, dtype=dtype, device=target) for _ in range(2)]
    # seq is bounded by the static cache (torch.export refuses an unbounded one: a guard on
    # the cache length, seen on torch 2.11 with an H200). Named dims first; if export cannot
    # prove a guard on them (torch 2.11 on the GPU: "min(64*seq, 192*seq) == 64*seq"), the
    # same axes as DYNAMIC hints, which let export add the guards it needs.
    out_dir.mkdir(parents=True, exist_ok=True)
    errors: list[str] = []
    program = None
    for hints in (False, True):
        try:
            dynamic = _dynamic_shapes(torch, layers, max_len, hints=hints)
            with torch.no_grad():
                program = torch.export.export(
                    StaticStep().eval(), tuple(example), dynamic_shapes=dynamic, strict=False
                )
            break
        except Exception as exc:
            errors.append(" ".join(str(exc).split())[:300])
    if program is None:
        raise CompileError(
            f"torch.export of the static-cache decoder step failed: {' / then: '.join(errors)}"
        )
    _check_dynamic(program)
    try:
        torch.export.save(program, str(out_dir / "decoder.pt2"))
    except Exception as exc:
        raise CompileError(f"saving the static-cache decoder step failed: {exc}") from exc
    config_out = {
        "device_type": target.type,
        "precision": precision,
        "dtype": _DTYPES[precision],
        "max_cache_len": max_len,
        "cuda_graphs": target.type == "cuda",
        "torch": torch.__version__,
        # The step takes any window of the cache's first columns (the runtime passes the
        # smallest power of two that holds the sequence); older artifacts take the whole cache.
        "window": True,
        "attention": "grouped" if grouped else "sdpa",
    }
    note = (
        f"static KV cache of {max_len} tokens, {precision}, torch.export on {target}, "
        f"attention over the cache window in use"
        + (", query heads grouped per key/value head" if grouped else "")
    )
    if errors:
        note += f" (named dims refused, exported with DYNAMIC hints: {errors[0][:160]})"
        config_out["export_note"] = errors[0]
    return "decoder.pt2", config_out, note


def _dynamic_shapes(torch: Any, layers: int, max_len: int, *, hints: bool) -> dict[str, Any]:
    """Dynamic batch, sequence, cache window and logit count: named ``Dim``s, or DYNAMIC
    hints."""
    from torch.export import Dim

    if hints:
        batch, n = Dim.DYNAMIC, Dim.DYNAMIC
        seq, window = Dim.DYNAMIC(min=1, max=max_len - 1), Dim.DYNAMIC(min=2, max=max_len)
    else:
        batch, seq, n = Dim("batch"), Dim("seq", max=max_len - 1), Dim("n")
        window = Dim("window", min=2, max=max_len)
    return {
        "input_ids": {0: batch, 1: seq},
        "attention_mask": {0: batch, 1: window},
        "position_ids": {0: batch, 1: seq},
        "cache_length": None,
        "logit_index": {0: n},
        "kv": tuple({0: batch, 2: window} for _ in range(2 * layers)),
    }


def _check_dynamic(program: Any) -> None:
    """The exported step must keep batch and sequence dynamic (a hint may have let export
    specialize them to the example's sizes, which would fail every other shape at run time)."""
    import torch

    placeholders = [n for n in program.graph.nodes if n.op == "placeholder"]
    names = {spec.arg.name: spec for spec in program.graph_signature.input_specs}
    user = [
        node
        for node in placeholders
        if names.get(node.name) is not None
        and names[node.name].kind == torch.export.graph_signature.InputKind.USER_INPUT
    ]
    ids = user[0].meta.get("val") if user else None
    if ids is None or any(isinstance(size, int) for size in ids.shape):
        raise CompileError(
            "torch.export fixed the decoder step's batch or sequence length "
            f"({tuple(ids.shape) if ids is not None else '?'}): this model cannot take a "
            "dynamic static-cache step here"
        )
