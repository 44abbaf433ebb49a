"""Job configuration: structured dataclasses + YAML + dotlist overrides, validated on load."""
from .fields import ConfigError
from .load import derive, load_job, to_dict, to_yaml
from .schema import (
                     ActorsConfig,
                     ChunkConfig,
                     DataConfig,
                     EvalConfig,
                     GuardrailConfig,
                     JobConfig,
                     KLConfig,
                     LossConfig,
                     ModelConfig,
                     ReferenceConfig,
                     RuleConfig,
                     ScoringConfig,
                     SourceConfig,
                     StarConfig,
                     TrainConfig,
)

__all__ = [
    "load_job", "derive", "to_dict", "to_yaml", "ConfigError", "JobConfig", "DataConfig",
    "SourceConfig", "ModelConfig", "GuardrailConfig", "RuleConfig", "ScoringConfig",
    "ActorsConfig", "StarConfig", "ChunkConfig", "LossConfig", "KLConfig", "ReferenceConfig",
    "TrainConfig", "EvalConfig",
]
