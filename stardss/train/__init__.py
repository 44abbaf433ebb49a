"""Training: the loss, DeepSpeed config, the Ray Train worker loop and its driver.

Nothing is imported here: the StepFeed actor and the driver's planning import only the
modules they use (`batches`, `feed`), without torch, DeepSpeed or transformers.
"""
