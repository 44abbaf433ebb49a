"""The frozen reference model of dss and kl_only (the initial model), wherever it lives, and the
cache of its log-probs.

    InWorkerReference     a copy in every Train worker: a DeepSpeed inference engine, ZeRO-3
                          partitioned like the policy (its shards optionally on the CPU)
    AdapterReference      with LoRA: the policy's own base weights with the adapter disabled
    ActorGroupReference   Ray actors host it (`ReferenceGroup`, started by the driver) and
                          return only log p_ref of each dataset token
    CachedLogprobs        wraps any of them: a row's log p_ref, fixed because the data and the
                          reference are, is computed the first time the row is trained, shared
                          with every worker, and reused in every later epoch

Every source is a `Reference`: `token_logprobs(batch, rows)`, (B, T-1) log p_ref of tokens
1..T-1 (all that k1/k2/k3 need) in the batch's layout, padded rows or packed sequences
(batches.collate; the cache keeps each row's own and places it by row_bin / row_offset);
the in-worker kinds also answer `hidden(batch)` for the full KL. Nothing here has an
optimizer, and `digest()` hashes the weights so a test can prove they never move.
"""
from __future__ import annotations

import hashlib
from typing import Any, Sequence

import numpy as np
import ray
import torch

from ..raytools import ActorGroup, RemoteError, get
from .batches import model_inputs
from .engine import rank0_warning
from .hidden import Hidden, choose_head, forward_hidden
from .kinds import loss_kind
from .loss import reference_token_logprobs


def weights_digest(named_params) -> str:
    """sha256 of the weights this rank holds (its partition under ZeRO-3), in name order."""
    h = hashlib.sha256()
    for name, p in sorted(named_params, key=lambda kv: kv[0]):
        local = getattr(p, "ds_tensor", p)  # ZeRO-3 keeps a rank's shard in ds_tensor
        h.update(name.encode())
        h.update(local.detach().float().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def _forward_hidden(module, batch: dict, head) -> Hidden:
    """The reference's final hidden states and head (hidden.py): its logits never whole."""
    with torch.no_grad():
        return forward_hidden(module, model_inputs(batch), head)


class Reference:
    """What the step loop asks of a reference. `forwards` counts its forward passes, which
    every rank makes alike (under ZeRO-3 a pass is a collective)."""

    forwards = 0

    def token_logprobs(self, batch: dict, rows: Sequence) -> torch.Tensor:
        return reference_token_logprobs(self.hidden(batch), batch["input_ids"])

    def hidden(self, batch: dict) -> Hidden:
        """Final hidden states and head of the batch (what the full KL reads its logits from,
        a chunk at a time)."""
        raise NotImplementedError(f"{type(self).__name__} has no logits (full KL)")

    def share(self) -> None:
        """Called once per step on every rank (the cache shares what it learnt)."""

    def digest(self) -> str:
        raise NotImplementedError


class InWorkerReference(Reference):
    def __init__(self, engine, keep_alive=None):
        self.engine = engine
        self._keep_alive = keep_alive  # the ZeRO-3 config transformers refers to weakly
        self.head = choose_head(engine, rank0_warning)

    @classmethod
    def load(cls, model_path: str, dtype: torch.dtype, ds_config: dict) -> InWorkerReference:
        import deepspeed

        from .engine import load_causal_lm

        model, keep_alive = load_causal_lm(model_path, dtype, ds_config)
        model.eval().requires_grad_(False)
        engine, *_ = deepspeed.initialize(model=model, config=ds_config)
        engine.eval()
        return cls(engine, keep_alive)

    def hidden(self, batch: dict) -> Hidden:
        self.forwards += 1
        return _forward_hidden(self.engine, batch, self.head)

    def digest(self) -> str:
        return weights_digest(self.engine.module.named_parameters())


class AdapterReference(Reference):
    """LoRA: the base model under the adapter is the initial model; it is frozen by PEFT."""

    def __init__(self, policy_engine, head):
        self.engine, self.head = policy_engine, head  # the policy's head: the same module

    def hidden(self, batch: dict) -> Hidden:
        self.forwards += 1
        model = self.engine.module  # a PeftModel
        with model.disable_adapter():
            return _forward_hidden(model, batch, self.head)

    def digest(self) -> str:
        return weights_digest((n, p) for n, p in self.engine.module.named_parameters()
                              if "lora_" not in n)


class ActorGroupReference(Reference):
    def __init__(self, actors: Sequence[Any], rank: int, timeout_s: float):
        self.index = rank % len(actors)
        self.actor, self.timeout_s = actors[self.index], timeout_s

    def token_logprobs(self, batch: dict, rows: Sequence) -> torch.Tensor:
        self.forwards += 1
        ids = batch["input_ids"]
        arrays = {k: v.cpu().numpy() for k, v in model_inputs(batch).items()
                  if isinstance(v, torch.Tensor)}  # padded or packed, as the policy sees it
        got = self._get(self.actor.token_logprobs.remote(arrays), "token log-probs")
        return torch.from_numpy(got).to(ids.device)

    def hidden(self, batch: dict) -> Hidden:
        raise ValueError("reference.placement=actor_group returns token log-probs only")

    def digest(self) -> str:
        return self._get(self.actor.digest.remote(), "weights digest")

    def _get(self, ref, what: str):
        try:
            return get(ref, timeout_s=self.timeout_s, what=f"reference actor {self.index}: {what}")
        except RemoteError as err:
            raise RuntimeError(f"reference.placement=actor_group: {err}") from None


class CachedLogprobs(Reference):
    """log p_ref of each row's tokens, computed on first sight and then served from memory.

    Whether a micro-batch runs the reference is decided by all ranks together (any rank with a
    new row makes all of them run it): under ZeRO-3 the reference's forward pass is a
    collective, so every rank must make the same number of them.
    """

    def __init__(self, inner):
        self.inner = inner
        self.table: dict[str, torch.Tensor] = {}  # row id -> (len - 1,) float32, on the CPU
        """log p_ref of a row's tokens 1..len-1, whatever layout it was computed in."""
        self._new: dict[str, torch.Tensor] = {}

    def token_logprobs(self, batch: dict, rows: Sequence) -> torch.Tensor:
        ids = batch["input_ids"]
        # where rows[i]'s token 1 is predicted: column row_offset of sequence row_bin (collate)
        where = list(zip(batch["row_bin"].tolist(), batch["row_offset"].tolist()))
        if _any_rank(any(r is not None and r.id not in self.table for r in rows), ids.device):
            logp = self.inner.token_logprobs(batch, rows)
            self.forwards += 1
            for row, (b, at) in zip(rows, where):
                if row is not None and row.id not in self.table:
                    n = len(row.input_ids) - 1
                    self.table[row.id] = self._new[row.id] = \
                        logp[b, at:at + n].float().cpu().clone()
            return logp
        out = torch.zeros(ids.shape[0], ids.shape[1] - 1)
        for row, (b, at) in zip(rows, where):
            if row is not None:  # an empty slot is masked out of the loss
                out[b, at:at + len(row.input_ids) - 1] = self.table[row.id]
        return out.to(ids.device)

    def share(self) -> None:
        """Give every rank the rows the others computed this step (call once per step)."""
        import torch.distributed as dist

        if dist.is_initialized() and dist.get_world_size() > 1:
            gathered: list = [None] * dist.get_world_size()
            dist.all_gather_object(gathered, self._new)
            for part in gathered:
                self.table.update(part)
        self._new = {}

    def digest(self) -> str:
        return self.inner.digest()


def _any_rank(flag: bool, device) -> bool:
    import torch.distributed as dist

    if not (dist.is_initialized() and dist.get_world_size() > 1):
        return flag
    t = torch.tensor([1 if flag else 0], device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def build_reference(spec, policy, ds_config: dict, rank: int):
    """The reference a worker uses for its loss kind (`spec`: the TrainingSpec), or None when
    the loss has no KL term."""
    from .ds_config import reference_config
    from .engine import torch_dtype

    if not loss_kind(spec.loss.kind).reference:
        return None
    ref_cfg, train = spec.reference, spec.train
    if policy.lora:
        source = AdapterReference(policy.engine, policy.head)
    elif ref_cfg.placement == "actor_group":
        source = ActorGroupReference(spec.reference_actors, rank, ref_cfg.timeout_s)
    else:
        source = InWorkerReference.load(
            spec.model.name_or_path, torch_dtype(train.bf16),
            reference_config(ds_config, ref_cfg.offload, train.use_gpu))
    return CachedLogprobs(source) if ref_cfg.logprobs == "cached" else source


@ray.remote
class ReferenceActor:
    """One replica of the reference group: the initial model, frozen, answering log p_ref of
    the dataset tokens of a micro-batch."""

    def __init__(self, model_path: str, bf16: bool, device: str):
        from transformers import AutoModelForCausalLM

        self.device = device
        self.model = AutoModelForCausalLM.from_pretrained(
            model_path, dtype=torch.bfloat16 if bf16 else torch.float32)
        self.model.to(device).eval().requires_grad_(False)
        self.head = choose_head(self.model, rank0_warning)

    def token_logprobs(self, arrays: dict[str, np.ndarray]) -> np.ndarray:
        """`arrays`: the model inputs of a collated batch (batches.model_inputs), padded or
        packed."""
        batch = {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}
        hidden = _forward_hidden(self.model, batch, self.head)
        return reference_token_logprobs(hidden, batch["input_ids"]).cpu().numpy()

    def digest(self) -> str:
        return weights_digest(self.model.named_parameters())


class ReferenceGroup:
    """The driver's handle on `reference.actors` ReferenceActors (a context manager): started
    together, each within reference.start_timeout_s, killed on close."""

    def __init__(self, model_path: str, ref_cfg, bf16: bool):
        device = "cuda" if ref_cfg.num_gpus > 0 else "cpu"
        self.group = ActorGroup(ReferenceActor, (model_path, bf16, device),
                                num_cpus=ref_cfg.num_cpus, num_gpus=ref_cfg.num_gpus,
                                start_timeout_s=ref_cfg.start_timeout_s, what="reference actor")
        try:
            self.group.start(ref_cfg.actors, hint="no room for them (reference.num_cpus / "
                                                  "num_gpus), or a slow model load?")
        except BaseException:
            self.close()
            raise

    @property
    def actors(self) -> list[Any]:
        return [m.actor for m in self.group.members]

    def close(self) -> None:
        self.group.close()

    def __enter__(self) -> ReferenceGroup:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
