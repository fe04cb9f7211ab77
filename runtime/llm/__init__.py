"""What a deployed causal language model needs at run time: the token loop, sampling, KV-cache
state, continuous batching and the tokenizer stored in the artifact. No compiler imports."""
