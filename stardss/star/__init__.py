"""STAR: cumulative prefixes, guardrail trajectories, and token weights by character offsets."""
from .align import token_chunk_index, token_weights
from .chunk import chunk_cuts, prefixes, token_cuts, word_cuts
from .trajectory import combine, to_weights

__all__ = ["chunk_cuts", "word_cuts", "token_cuts", "prefixes", "token_chunk_index",
           "token_weights", "combine", "to_weights"]
