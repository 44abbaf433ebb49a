"""Training: the loss, DeepSpeed config, the Ray Train worker loop and its driver."""
from .batches import TrainRow, plan_steps
from .loss import LossSums, kl_per_token, stardss_loss
from .trainer import TrainResult, run_training

__all__ = ["TrainRow", "plan_steps", "LossSums", "kl_per_token", "stardss_loss", "TrainResult",
           "run_training"]
