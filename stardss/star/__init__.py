"""STAR: cumulative prefix cuts, guardrail trajectories, token weights by character offsets,
the scorer (cache, pool, records), the STAR cache and the heatmap page."""
