"""Random-weight causal LMs of six architectures (tiny configs) and a small real tokenizer.

For parity and speed checks, not for quality claims. Each builder gives a ``transformers``
model in float32 (fixed seed) and the shared tokenizer: a byte-level BPE of 512 tokens trained
on the Python standard library's docstrings, with a ChatML template, so prompts, chat templates
and streaming decode are real. ``save(name, dir)`` writes a Hugging Face directory (config,
safetensors, tokenizer) that ``ai_vmm.compile`` takes like any downloaded model.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from pathlib import Path
from typing import Any

VOCAB = 512
SPECIAL = ("<|endoftext|>", "<|im_start|>", "<|im_end|>")
CHAT_TEMPLATE = (
    "{% for message in messages %}{{ '<|im_start|>' + message['role'] + '\n' + "
    "message['content'] + '<|im_end|>' + '\n' }}{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def _small(**extra: Any) -> dict[str, Any]:
    return {
        "vocab_size": VOCAB,
        "hidden_size": 64,
        "intermediate_size": 128,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "max_position_embeddings": 1024,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "pad_token_id": 2,
        **extra,
    }


def _configs() -> dict[str, Callable[[], Any]]:
    import transformers as tf

    return {
        "llama": lambda: tf.LlamaConfig(**_small(num_key_value_heads=2)),
        "qwen2": lambda: tf.Qwen2Config(**_small(num_key_value_heads=2)),
        "phi3": lambda: tf.Phi3Config(**_small(num_key_value_heads=2)),
        "gemma": lambda: tf.GemmaConfig(
            **_small(num_key_value_heads=1, head_dim=16, tie_word_embeddings=False)
        ),
        "gpt_neox": lambda: tf.GPTNeoXConfig(**_small(rotary_pct=0.5)),
        "gpt2": lambda: tf.GPT2Config(
            vocab_size=VOCAB,
            n_embd=64,
            n_layer=2,
            n_head=4,
            n_positions=1024,
            bos_token_id=1,
            eos_token_id=2,
            pad_token_id=2,
        ),
    }


ARCHITECTURES = ("llama", "gpt2", "qwen2", "phi3", "gemma", "gpt_neox")


def build(name: str, seed: int = 0) -> tuple[Any, Any]:
    """(model, tokenizer) of architecture ``name`` with random weights (seeded)."""
    import torch
    import transformers as tf

    configs = _configs()
    if name not in configs:
        raise KeyError(f"unknown tiny LM '{name}' (known: {', '.join(ARCHITECTURES)})")
    torch.manual_seed(seed)
    config = configs[name]()
    config._attn_implementation = "sdpa"
    model = tf.AutoModelForCausalLM.from_config(config).eval()
    # Random init leaves outputs near uniform; a wider embedding spread gives greedy decoding
    # real choices (argmax gaps), which a parity test needs to mean something.
    with torch.no_grad():
        for parameter in model.parameters():
            if parameter.dim() >= 2:
                parameter.normal_(0.0, 0.08)
    return model, tokenizer()


@functools.cache
def _tokenizer_json() -> str:
    import inspect
    import json as json_module
    import textwrap

    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    texts = [
        textwrap.dedent(doc)
        for module in (json_module, textwrap, inspect, functools)
        for _, obj in inspect.getmembers(module)
        if (doc := inspect.getdoc(obj))
    ]
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB,
        special_tokens=list(SPECIAL),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    bpe.train_from_iterator(texts, trainer)
    return str(bpe.to_str())


def tokenizer() -> Any:
    """The shared 512-token byte-level BPE as a ``transformers`` fast tokenizer."""
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    fast = PreTrainedTokenizerFast(
        tokenizer_object=Tokenizer.from_str(_tokenizer_json()),
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
    )
    fast.chat_template = CHAT_TEMPLATE
    return fast


def save(name: str, directory: Path, seed: int = 0) -> Path:
    """Write architecture ``name`` as a Hugging Face directory and return it."""
    model, tok = build(name, seed)
    directory.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    return directory
