"""Guardrails: the request and the protocol (base), the kinds (registry), the rule-based
guardrail, the Hugging Face families (hf/), and the Ray actor pool that runs them (pool).

Nothing is imported here: validating a job reads the registry without loading the pool
(Ray) or a model family (torch, transformers).
"""
