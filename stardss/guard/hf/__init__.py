"""Model-backed guardrails (Hugging Face causal-LM guards and sequence classifiers)."""
