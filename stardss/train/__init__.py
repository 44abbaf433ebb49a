"""Training: the loss, DeepSpeed config, the Ray Train worker loop and its driver."""
from .batches import TrainRow, plan_steps
from .loss import LossSums, stardss_loss, token_terms
from .trainer import TrainResult, run_training

__all__ = ["TrainRow", "plan_steps", "LossSums", "stardss_loss", "token_terms", "TrainResult",
           "run_training"]
