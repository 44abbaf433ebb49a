"""The evaluated model answers: `GenerationPool`, Ray actors that each load the checkpoint once
on their device and generate batches the driver deals out (backend hf); `open_generator` picks
it or the OpenAI-compatible server backend (server_generation.py).

The driver holds the plan: it renders and tokenises every prompt (the tokenizer is cheap),
sorts them by length (longest first: the first batch shows an out-of-memory at once, and the
short tail balances the actors' last batches), cuts `batch_size` chunks and gives each a seed
derived from (seed, its first key). An actor seeds torch with it before its one `generate`
call, so a batch's output depends only on its contents and seed: the same texts with 1 or 2
actors, and a batch generated again on a replacement actor (after its actor died or held it
past `timeout_s`) comes out as it would have. Each key comes out exactly once.

Length budget: `max_new_tokens`, or (when it is null) `max_length` counted as HF counts it,
over the padded batch: a row may get fewer new tokens than `max_length - its own prompt` when
a longer prompt shares its batch (length sorting keeps that small).
"""
from __future__ import annotations

import hashlib
import math
import time
from collections import Counter, deque
from typing import Any, Callable, Sequence

import ray
from ray.exceptions import RayTaskError

from ..config.evaluation import GenerationConfig
from ..console import log
from ..errors import UserError
from ..raytools import ActorGroup, Member, RemoteError, get, lower_priority, poll
from .checkpoint import load_model, load_tokenizer, resolve_device
from .items import EvalItem, Generation
from .render import render_prompt

MAX_IN_FLIGHT = 2
"""Batches queued on one actor: the next one is already there when a batch ends (no idle gap
while the driver collects), and a dead actor takes at most two batches down with it."""


class PromptTooLong(UserError, ValueError):
    """A prompt leaves no room for generation within eval.generation.max_length."""


def batch_seed(seed: int, first_key: str) -> int:
    """A batch's sampling seed: the same in every process and run (hashlib, not hash())."""
    digest = hashlib.sha256(f"{seed}\0{first_key}".encode()).digest()
    return int.from_bytes(digest[:8], "big") >> 1  # 63 bits: within torch.manual_seed's range


def length_budget(gen: GenerationConfig) -> tuple[str, int]:
    """("max_new_tokens", n) or ("max_length", n): max_new_tokens wins when both are set,
    as in HF's generate."""
    if gen.max_new_tokens is not None:
        return "max_new_tokens", gen.max_new_tokens
    if gen.max_length is not None:
        return "max_length", gen.max_length
    raise ValueError("eval.generation: set max_new_tokens or max_length (both are null)")


def generate_kwargs(gen: GenerationConfig) -> dict:
    """model.generate's sampling and length arguments. Greedy sets the sampling knobs to None,
    so a checkpoint's generation_config.json (e.g. do_sample + temperature 0.6) cannot leak in."""
    sample = gen.temperature > 0
    kw: dict[str, Any] = dict(do_sample=sample, repetition_penalty=gen.repetition_penalty)
    if sample:
        kw.update(temperature=gen.temperature, top_p=gen.top_p, top_k=gen.top_k or None)
    else:
        kw.update(temperature=None, top_p=None, top_k=None)
    name, n = length_budget(gen)
    kw[name] = n
    return kw


def _until_end(ids: list[int], end_ids: set[int]) -> list[int]:
    """The tokens the model wrote: up to and including the first end token (the rest is pad)."""
    for i, t in enumerate(ids):
        if t in end_ids:
            return ids[:i + 1]
    return ids


@ray.remote
class GenerationActor:
    """One copy of the evaluated model on its device; generates (or scores choices of) batches."""

    def __init__(self, model_dir: str, gen: GenerationConfig, seed: int, nice: int = 0):
        import torch
        from transformers.utils import logging as hf_logging

        if nice:  # before the model loads and starts its compute threads
            lower_priority(nice)
        # Ray forwards an actor's stderr to the driver: one weight-loading progress bar per
        # actor and model would bury the run's own log lines.
        hf_logging.disable_progress_bar()
        torch.manual_seed(seed)
        self.gen, self.device = gen, resolve_device(gen.device)
        self.load(model_dir)

    def load(self, model_dir: str) -> str:
        """Load (or swap in) the checkpoint: one process serves a run's snapshots in turn,
        paying Python's and torch's imports once."""
        self.model = None  # the old weights go before the new ones load
        self.tokenizer = load_tokenizer(model_dir)
        self.model = load_model(model_dir, self.gen.dtype).to(self.device).eval()
        self.model.requires_grad_(False)
        tok = self.tokenizer
        # Stop at the tokenizer's end token and at any the checkpoint's generation config
        # declares (Llama-3-Instruct ends turns with <|eot_id|> but lists <|end_of_text|> too).
        own = self.model.generation_config.eos_token_id
        own = own if isinstance(own, list) else [] if own is None else [own]
        self.end_ids = list(dict.fromkeys([tok.eos_token_id, *own]))
        return self.device

    def probe(self) -> str:
        """Ready (the model has loaded): the device it runs on."""
        return self.device

    def generate(self, batch: list[EvalItem], batch_seed: int) -> list[Generation]:
        """One left-padded model.generate over the batch, torch seeded with `batch_seed`."""
        import torch

        tok = self.tokenizer
        # The chat template already holds the special tokens (BOS): add none.
        enc = tok([render_prompt(tok, it) for it in batch], add_special_tokens=False,
                  padding=True, return_tensors="pt").to(self.device)
        torch.manual_seed(batch_seed)
        with torch.no_grad():
            out = self.model.generate(**enc, **generate_kwargs(self.gen),
                                      eos_token_id=self.end_ids, pad_token_id=tok.pad_token_id)
        width, ends = enc["input_ids"].shape[1], set(self.end_ids)
        results = []
        for item, row, mask in zip(batch, out[:, width:].tolist(), enc["attention_mask"]):
            new = _until_end(row, ends)
            text = tok.decode(new, skip_special_tokens=True)
            results.append(Generation(item.key, item.prefill + text, int(mask.sum()), len(new)))
        return results

    def choice_logliks(self, batch: list[EvalItem]) -> list[list[float]]:
        """Each item's log-likelihood of every choice (stardss.eval.choice)."""
        from .choice import choice_logliks

        return choice_logliks(self.model, self.tokenizer, batch, batch_size=self.gen.batch_size,
                              device=self.device)


class Batch:
    """Items generated together, and the seed they are generated with."""

    __slots__ = ("index", "items", "seed")

    def __init__(self, index: int, items: list[EvalItem], seed: int):
        self.index, self.items, self.seed = index, items, seed

    def __str__(self) -> str:
        return (f"batch {self.index} ({len(self.items)} items, keys {self.items[0].key!r}.."
                f"{self.items[-1].key!r})")


class Slot:
    """A ready actor and its calls in flight. A Ray actor runs its calls in submission order, so
    the head of `queue` is the one running; `head_since` is the clock of its timeout."""

    def __init__(self, member: Member):
        self.member, self.actor = member, member.actor
        self.name = f"generation actor {member.number}"
        self.queue: deque[tuple[ray.ObjectRef, Batch]] = deque()
        self.head_since = time.monotonic()

    def push(self, ref: ray.ObjectRef, batch: Batch) -> None:
        if not self.queue:
            self.head_since = time.monotonic()
        self.queue.append((ref, batch))

    def pop(self, ref: ray.ObjectRef) -> Batch:
        batch = next(b for r, b in self.queue if r == ref)
        self.queue = deque((r, b) for r, b in self.queue if r != ref)
        self.head_since = time.monotonic()
        return batch


class GenerationPool:
    """`gen.actors` GenerationActors on a raytools.ActorGroup; a context manager. The actors
    start with the first call that has work (or `start()`); Ray must be initialised by the
    caller. `seed`: the job's seed, used when gen.seed is null.

    `restarts` is the number of replacement actors the last call used (at most
    gen.max_restarts per call); `batches_done` counts its finished batches as they come.
    Close the pool after an error (calls of the failed one may still be running)."""

    def __init__(self, model_dir: str, gen: GenerationConfig, *, seed: int, nice: int = 0):
        """nice: Unix niceness of the actors (e.g. 19 beside training: safety over training)."""
        self.model_dir, self.gen = model_dir, gen
        self.seed = gen.seed if gen.seed is not None else seed
        self.budget = length_budget(gen)
        self.tokenizer = load_tokenizer(model_dir)
        self.group = ActorGroup(GenerationActor, (model_dir, gen, self.seed, nice),
                                num_cpus=gen.num_cpus, num_gpus=gen.num_gpus,
                                resources=gen.resources, start_timeout_s=gen.start_timeout_s,
                                what="generation actor", probe="probe")
        self.restarts = 0
        self.batches_done = 0

    @property
    def actors(self) -> list[Any]:
        """The ready actors' handles."""
        return [m.actor for m in self.group.members]

    def start(self, wait: bool = True) -> None:
        """Start actors up to gen.actors (together, each within gen.start_timeout_s) and wait
        for them; RemoteError naming the actor that did not start. wait=False (what a call
        does): wait only when no actor is ready; the others join as they come up."""
        missing = self.gen.actors - len(self.group.members) - len(self.group.starting)
        for _ in range(max(missing, 0)):
            self.group.spawn("start")
        if self.group.starting and (wait or not self.group.members):
            self.group.wait_started(
                f"no room for {self.gen.actors} x (num_cpus={self.gen.num_cpus:g}, num_gpus="
                f"{self.gen.num_gpus:g}, resources={self.gen.resources}) (eval.generation), "
                f"or a slow model load?")

    def reload(self, model_dir: str) -> None:
        """Serve another checkpoint (the next snapshot of a run) with the actors already
        running; a replacement actor started later loads it too."""
        self.model_dir, self.tokenizer = model_dir, load_tokenizer(model_dir)
        self.group.args = (model_dir, *self.group.args[1:])
        if self.group.members:
            get([m.actor.load.remote(model_dir) for m in self.group.members],
                timeout_s=self.gen.start_timeout_s, what=f"generation actors loading {model_dir}")

    def generate(self, items: Sequence[EvalItem]) -> dict[str, Generation]:
        """item.key -> its Generation, in `items` order. PromptTooLong (naming the item's
        origin) before any work when a prompt leaves no room within max_length."""
        batches = self._plan(items, check_budget=True)
        if not batches:
            return {}
        done = self._run(batches, lambda actor, b: actor.generate.remote(b.items, b.seed),
                         "generation")
        by_key = {g.key: g for out in done for g in out}
        # every key exactly once, whatever actors died on the way
        assert sum(map(len, done)) == len(by_key) == len(items), (len(by_key), len(items))
        return {it.key: by_key[it.key] for it in items}

    def choice_logliks(self, items: Sequence[EvalItem]) -> dict[str, list[float]]:
        """item.key -> the log-likelihood of each of its choices (no generation)."""
        batches = self._plan(items, check_budget=False)
        if not batches:
            return {}
        done = self._run(batches, lambda actor, b: actor.choice_logliks.remote(b.items),
                         "choice scoring")
        assert all(len(out) == len(b.items) for b, out in zip(batches, done))
        by_key = {it.key: list(s) for b, out in zip(batches, done)
                  for it, s in zip(b.items, out)}
        return {it.key: by_key[it.key] for it in items}

    def _plan(self, items: Sequence[EvalItem], check_budget: bool) -> list[Batch]:
        """Length-sorted batches (longest first) with their seeds; the driver's only compute."""
        items = list(items)
        dups = [k for k, n in Counter(it.key for it in items).items() if n > 1]
        if dups:
            raise ValueError(f"duplicate eval item keys ({len(dups)}), e.g. {dups[:3]}")
        if not items:
            return []
        texts = [render_prompt(self.tokenizer, it) for it in items]
        lengths = [len(ids) for ids in
                   self.tokenizer(texts, add_special_tokens=False)["input_ids"]]
        name, limit = self.budget
        if check_budget and name == "max_length":
            for it, n in zip(items, lengths):
                if n >= limit:
                    raise PromptTooLong(f"{it.origin}: the prompt ({it.key}) is {n} tokens, not "
                                        f"shorter than eval.generation.max_length={limit} "
                                        f"(prompt + generation)")
        order = sorted(range(len(items)), key=lambda i: (-lengths[i], i))
        size = self.gen.batch_size
        chunks = [[items[i] for i in order[s:s + size]] for s in range(0, len(order), size)]
        return [Batch(b, chunk, batch_seed(self.seed, chunk[0].key))
                for b, chunk in enumerate(chunks)]

    def _run(self, batches: list[Batch], submit: Callable[[Any, Batch], ray.ObjectRef],
             what: str) -> list[list]:
        """Each batch's result, in batch order: batches dealt to idle actors, a dead or stuck
        actor replaced and its batches run again, every batch accepted exactly once."""
        self.restarts = self.batches_done = 0
        self.start(wait=False)  # a replacement still starting from the last call joins later
        todo, results = deque(batches), {}
        slots = [Slot(m) for m in self.group.members]
        refs: dict[ray.ObjectRef, Slot] = {}  # every call in flight -> its actor
        total, items_done = sum(len(b.items) for b in batches), 0
        next_log = math.ceil(total / 10)
        timeout_s, start_s = self.gen.timeout_s, self.gen.start_timeout_s
        while len(results) < len(batches):
            for slot in slots:
                while todo and len(slot.queue) < MAX_IN_FLIGHT:
                    batch = todo.popleft()
                    ref = submit(slot.actor, batch)
                    slot.push(ref, batch)
                    refs[ref] = slot
            starting = list(self.group.starting)
            if not refs and not starting:  # cannot happen while replacements are allowed
                raise RemoteError(f"{what}: no generation actor left, {len(todo)} batches left")
            now = time.monotonic()
            deadlines = [s.head_since + timeout_s for s in slots if s.queue]
            deadlines += [st.since + start_s for st in starting]
            ready = poll(list(refs) + [st.ready_ref for st in starting],
                         timeout_s=max(min(deadlines) - now, 0.0) + 0.01)
            for ref in ready:
                if ref in refs:
                    slot = refs.pop(ref)
                    batch = slot.pop(ref)
                    try:
                        out = get(ref, timeout_s=timeout_s, what=f"{slot.name}, {batch}")
                    except RemoteError as err:
                        if isinstance(err.__cause__, RayTaskError):
                            raise  # the model code raised: another actor would raise too
                        slot.queue.appendleft((ref, batch))  # requeued with the rest
                        self._replace(slot, slots, refs, todo, str(err))
                        continue
                    results[batch.index] = out
                    self.batches_done += 1
                    items_done += len(batch.items)
                    if items_done >= next_log or items_done == total:
                        log(f"{what}: {items_done}/{total} items "
                            f"({100 * items_done // total} %), {len(slots)} actors")
                        next_log = items_done + math.ceil(total / 10)
                    continue
                st = next((s for s in starting if s.ready_ref == ref), None)
                if st is not None:  # else: a late answer of an actor replaced just now
                    slots.append(Slot(self.group.accept(st)))  # RemoteError: it cannot load
            now = time.monotonic()
            for slot in [s for s in slots if s.queue and now - s.head_since >= timeout_s]:
                self._replace(slot, slots, refs, todo,
                              f"{slot.name}, {slot.queue[0][1]}: no result within "
                              f"{timeout_s:g}s (eval.generation.timeout_s)")
            for st in [st for st in self.group.starting if now - st.since >= start_s]:
                raise RemoteError(f"{self.group.name(st.number)} ({st.why}) not started within "
                                  f"{start_s:g}s (eval.generation.start_timeout_s)")
        return [results[b.index] for b in batches]

    def _replace(self, slot: Slot, slots: list[Slot], refs: dict, todo: deque,
                 reason: str) -> None:
        """Kill a dead or stuck actor, requeue its batches (first in line), start another."""
        slots.remove(slot)
        for ref, _ in slot.queue:
            refs.pop(ref, None)  # a late answer of the killed actor is never read
        todo.extendleft(reversed([b for _, b in slot.queue]))
        if self.restarts >= self.gen.max_restarts:
            self.group.remove(slot.member)
            raise RemoteError(f"{reason} (restarts exhausted: {self.restarts} replacement actors "
                              f"used of eval.generation.max_restarts={self.gen.max_restarts})")
        self.restarts += 1
        log(f"{reason}; replacing it (restart {self.restarts} of {self.gen.max_restarts})")
        self.group.replace(slot.member, f"replacing {slot.name}")

    def close(self) -> None:
        self.group.close()

    def __enter__(self) -> GenerationPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def open_generator(model_dir: str, gen: GenerationConfig, *, seed: int):
    """The generator of gen.backend (a context manager with generate(items)): a GenerationPool
    on `model_dir` (hf), or a ServerGenerator (openai: the server serves the model)."""
    if gen.backend == "openai":
        from .server_generation import ServerGenerator

        return ServerGenerator(gen, seed=seed)
    return GenerationPool(model_dir, gen, seed=seed)
