"""The decoder model: config, transformer, log-probs, heads, Hugging Face I/O."""
