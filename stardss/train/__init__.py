"""Training: the loss kinds (kinds) and the loss, the step plan and its sources, DeepSpeed
config, the worker loop and the Ray Train driver.

Nothing is imported here: the StepFeed actor, the driver's planning and the job's validation
import only the modules they use (`kinds`, `batches`, `feed`), without torch, DeepSpeed or
transformers.
"""
