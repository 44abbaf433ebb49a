"""Multi-node Ray clusters: where a run's stages may go (placement) and offline checks of the
cluster configs under clusters/ (configs).

Nothing is imported here, so `python -m stardss.cluster.configs FILE...` runs that module once.
"""
