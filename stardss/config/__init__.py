"""Job configuration: structured dataclasses + YAML + dotlist overrides."""
from .load import load_job, to_dict, to_yaml
from .schema import (ActorsConfig, ChunkConfig, DataConfig, EvalConfig, GuardrailConfig,
                     JobConfig, KLConfig, LossConfig, ModelConfig, RuleConfig, ScoringConfig,
                     SourceConfig, StarConfig, TinyModelConfig, TrainConfig)
from .validate import ConfigError

__all__ = [
    "load_job", "to_dict", "to_yaml", "ConfigError", "JobConfig", "DataConfig", "SourceConfig",
    "ModelConfig", "TinyModelConfig", "GuardrailConfig", "RuleConfig", "ScoringConfig",
    "ActorsConfig", "StarConfig", "ChunkConfig", "LossConfig", "KLConfig", "TrainConfig",
    "EvalConfig",
]
