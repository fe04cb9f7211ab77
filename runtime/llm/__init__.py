"""What a deployed causal language model needs at run time: the token loop, sampling, KV-cache
state, continuous batching and the tokenizer stored in the artifact. No compiler imports, no
torch or transformers (the cuda backend alone imports torch, as its runtime).

``ai_vmm.runtime.load(path)`` returns a ``CausalLM`` for a ``causal-lm`` artifact:
``lm.generate(...)`` in the caller's thread, ``lm.engine(max_batch=...)`` for servers.
"""

from ai_vmm.runtime.llm.engine import Engine
from ai_vmm.runtime.llm.model import CausalLM, TextStream, load_causal_lm
from ai_vmm.runtime.llm.sampling import GenerationParams
from ai_vmm.runtime.llm.scheduler import GenerationResult, RequestHandle, TokenEvent
from ai_vmm.runtime.llm.spec import LMSpec
from ai_vmm.runtime.llm.tokenizer import Tokenizer

__all__ = [
    "CausalLM",
    "Engine",
    "GenerationParams",
    "GenerationResult",
    "LMSpec",
    "RequestHandle",
    "TextStream",
    "TokenEvent",
    "Tokenizer",
    "load_causal_lm",
]
