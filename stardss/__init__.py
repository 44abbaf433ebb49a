"""stardss: safety-preserving finetuning (STAR-DSS) on Ray and DeepSpeed."""
__version__ = "0.1.0"
