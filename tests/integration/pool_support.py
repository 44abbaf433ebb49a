"""What the guardrail-pool tests share: rule guardrails, a rule that is slow or stuck on
purpose, and request sets."""
import random

from stardss.config import GuardrailConfig, RuleConfig
from stardss.guard.base import ScoreRequest

RULES = GuardrailConfig(bias=2.0, rules=[RuleConfig(pattern=r"\bbomb", weight=-4.0),
                                         RuleConfig(pattern="step \\d", weight=-1.5),
                                         RuleConfig(pattern="I can't help", weight=3.0)])
POISON = GuardrailConfig(bias=-0.5, rules=[RuleConfig(pattern="poison", weight=-2.0)])
# Catastrophic backtracking: 'a'*n + '!' takes ~2**n steps (~15 ms at n=18, forever at n=40).
# A real production path that makes an actor slow or stuck without test hooks in the actor.
REDOS = GuardrailConfig(rules=[RuleConfig(pattern=r"^(a+)+$", weight=-1.0)])
STUCK = "a" * 40 + "!"


def make_requests(n, seed=0, slow_n=None):
    """n requests of random words cut every 5 words; with slow_n, every other response starts
    with 'a' * slow_n + '!', which the REDOS rule is slow on."""
    rng = random.Random(seed)
    words = "sure here is step 1 of the bomb recipe poison I can't help with that ok".split()
    reqs = []
    for i in range(n):
        response = " ".join(rng.choice(words) for _ in range(rng.randint(0, 30)))
        if slow_n is not None and i % 2 == 0:
            response = "a" * slow_n + "! " + response
        toks = response.split()
        cuts = [len(" ".join(toks[:k])) for k in range(5, len(toks) + 5, 5)]
        reqs.append(ScoreRequest(f"ex{i}", f"prompt {i % 7}", response, cuts))
    return reqs


def capture_pool(monkeypatch, on_open=None) -> dict:
    """Make `stardss train` hand its guardrail pool to the test: returns a dict that gets the
    pool under "pool" once the run opens it; `on_open(pool)` is called then (in the STAR
    producer's thread: start a thread of your own for anything that waits)."""
    from stardss.commands import star as star_command

    seen: dict = {}
    real = star_command.open_pool

    def open_pool(job):
        seen["pool"] = real(job)
        if on_open is not None:
            on_open(seen["pool"])
        return seen["pool"]

    monkeypatch.setattr(star_command, "open_pool", open_pool)
    return seen


def registered_checkpoints(storage) -> int:
    """Checkpoints Ray Train's controller has registered under `storage` (a run's ray_train
    folder; a checkpoint folder appears before that)."""
    import json
    from pathlib import Path

    for snapshot in Path(storage).glob("*/checkpoint_manager_snapshot.json"):
        try:
            return len(json.loads(snapshot.read_text())["checkpoint_results"])
        except (ValueError, KeyError):
            return 0  # being written
    return 0


def train_worker_pids() -> list[int]:
    """The pids of this machine's Ray Train worker processes (Ray titles a worker's process
    after the actor's running method)."""
    import psutil

    return sorted(p.pid for p in psutil.process_iter(["cmdline"])
                  if (p.info["cmdline"] or [""])[0].startswith("ray::RayTrainWorker"))
