"""KV-cache plumbing for packed prefix scoring, kept apart from the scoring logic: which
argument a model takes its cache by, sliding windows, bytes per cached token, and a cache over
preallocated buffers that forward passes append to in place."""
from __future__ import annotations

import inspect
from typing import Optional

import torch


def cache_kw(model) -> str:
    """transformers 5.x calls the KV cache argument `cache` (`past_key_values` is deprecated)."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def out_cache(out):
    cache = getattr(out, "cache", None)
    if cache is None:
        cache = getattr(out, "past_key_values", None)
    if cache is None:
        raise RuntimeError("the guard model returned no KV cache (use_cache=True was ignored)")
    return cache


def sliding_window(model) -> Optional[int]:
    """The attention window of a sliding-window model, if any layer uses one."""
    cfg = model.config.get_text_config()
    sw = getattr(cfg, "sliding_window", None)
    if not sw:
        return None
    if getattr(cfg, "use_sliding_window", True) is False:
        return None
    types = getattr(cfg, "layer_types", None)
    if types is not None and not any("sliding" in str(t) for t in types):
        return None
    return int(sw)


def kv_bytes_per_token(model) -> int:
    cfg = model.config.get_text_config()
    layers = int(getattr(cfg, "num_hidden_layers", 1))
    heads = int(getattr(cfg, "num_key_value_heads", None) or getattr(cfg, "num_attention_heads", 1))
    head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    elem = next(model.parameters()).element_size()
    return max(1, 2 * layers * heads * int(head_dim) * elem)


_PREFILLED_LAYER = None


def _prefilled_layer_class():
    """A DynamicLayer over a preallocated buffer (defined on first use: transformers is imported
    lazily)."""
    global _PREFILLED_LAYER
    if _PREFILLED_LAYER is None:
        from transformers.cache_utils import DynamicLayer

        class PrefilledLayer(DynamicLayer):
            def __init__(self, keys: torch.Tensor, values: torch.Tensor, filled: int):
                super().__init__()
                self.keys, self.values = keys, values
                self.device = keys.device
                self.is_initialized = True
                self.length = filled

            def update(self, key_states, value_states, *args, **kwargs):
                end = self.length + key_states.shape[-2]
                if end > self.keys.shape[-2]:
                    raise RuntimeError(f"prefilled KV buffer of {self.keys.shape[-2]} "
                                       f"positions cannot take {end}")
                self.keys[..., self.length : end, :].copy_(key_states)
                self.values[..., self.length : end, :].copy_(value_states)
                self.length = end
                return self.keys[..., :end, :], self.values[..., :end, :]

            def get_seq_length(self) -> int:
                return self.length

            def get_mask_sizes(self, query_length: int) -> tuple[int, int]:
                return self.length + query_length, 0

        _PREFILLED_LAYER = PrefilledLayer
    return _PREFILLED_LAYER


def prefilled_cache(keys: list[torch.Tensor], values: list[torch.Tensor], filled: int):
    """A KV cache whose layer buffers [B, H, filled + T, D] already hold `filled` positions; the
    forward writes its T new states into the rest in place (no concatenation copy)."""
    from transformers.cache_utils import Cache

    layer = _prefilled_layer_class()
    return Cache(layers=[layer(k, v, filled) for k, v in zip(keys, values)])
