"""Evaluation: generation, judges, safety rate and capability."""
from .evaluate import evaluate_model
from .metrics import extract_answer, is_correct, judge_safe

__all__ = ["evaluate_model", "extract_answer", "is_correct", "judge_safe"]
