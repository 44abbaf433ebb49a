"""Evaluation: generation, judges, safety rate and capability."""
