"""Model guardrails in the Ray actor pool: tiny stand-ins of each family, loaded by the real
Hugging Face path inside the actors, give the pool the same P(safe) as scoring in-process."""
import numpy as np
import pytest

from stardss.config.schema import ActorsConfig, GuardrailConfig, ScoringConfig
from stardss.guard.base import ScoreRequest
from stardss.guard.pool import GuardPool
from stardss.guard.registry import build_guardrail
from stardss.star.chunk import word_cuts
from stardss.testing.guards import build_tiny_guard
from tests.helpers import GUARD_RESPONSES as RESPONSES

pytestmark = [pytest.mark.ray_session(plain=True), pytest.mark.usefixtures("ray_session")]



# An earlier exchange for every other request: the pool carries `context` to the guards.
CONTEXT = ({"role": "user", "content": "Earlier: what is the vault?"},
           {"role": "assistant", "content": "A safe place — 金庫."})


@pytest.mark.parametrize("kind,variant", [
    ("llama_guard", None), ("llama_guard", "4"), ("granite_guardian", None), ("shieldgemma", None),
    ("wildguard", None), ("qwen3guard", None), ("nemoguard", None)])
def test_pool_scores_equal_in_process_packed_and_naive(tmp_path, kind, variant):
    path = build_tiny_guard(kind, tmp_path / kind, variant=variant)
    packed = GuardrailConfig(kind=kind, name_or_path=str(path), mode="packed", batch_size=4)
    naive = GuardrailConfig(kind=kind, name_or_path=str(path), mode="naive", batch_size=4)
    requests = [ScoreRequest(f"r{i}", f"question {i}?", r, word_cuts(r, 5),
                             context=CONTEXT if i % 2 else ())
                for i, r in enumerate(RESPONSES * 3)]
    scoring = ScoringConfig(actors=ActorsConfig(min=2, max=2, num_cpus=0.5, batch_size=3),
                            max_in_flight=2, timeout_s=120)
    with GuardPool([packed, naive], scoring) as pool:
        fps = pool.fingerprints()
        out = pool.score(requests)
    assert fps[0] == fps[1]  # the mode changes the work, not the scores
    direct = build_guardrail(naive).score_prefixes(requests)
    for req, want in zip(requests, direct):
        got = out[req.key]
        assert got.shape == (2, len(req.cuts))
        np.testing.assert_allclose(got[0], want, atol=1e-4)  # packed, in the pool
        np.testing.assert_allclose(got[1], want, atol=1e-6)  # naive, in the pool
        assert np.all((got > 0) & (got < 1))


def test_the_pool_scores_with_the_jobs_star_transform(tmp_path):
    """star.transform=authors reaches the actors: the pool's P(safe) is the in-process authors
    value, not the raw one, under a fingerprint of its own (the STAR cache keeps them apart).
    top_k/top_p off: the random stand-in ranks its labels too low to survive a cut."""
    from stardss.config.schema import AuthorsTransformConfig

    path = build_tiny_guard("llama_guard", tmp_path / "lg")
    cfg = GuardrailConfig(kind="llama_guard", name_or_path=str(path), batch_size=4)
    authors = AuthorsTransformConfig(top_k=0, top_p=1.0)
    requests = [ScoreRequest(f"r{i}", f"question {i}?", r, word_cuts(r, 5))
                for i, r in enumerate(RESPONSES)]
    scoring = ScoringConfig(actors=ActorsConfig(min=1, max=1, num_cpus=0.5, batch_size=2),
                            timeout_s=120)
    with GuardPool([cfg], scoring, transform=authors) as pool:
        fps, out = pool.fingerprints(), pool.score(requests)
    direct = build_guardrail(cfg, authors)
    raw = build_guardrail(cfg)
    assert fps == [direct.fingerprint] and direct.fingerprint != raw.fingerprint
    for req, want, plain in zip(requests, direct.score_prefixes(requests),
                                raw.score_prefixes(requests)):
        np.testing.assert_allclose(out[req.key][0], want, atol=1e-6)
        assert np.abs(out[req.key][0] - plain).max() > 1e-3  # not the raw value
