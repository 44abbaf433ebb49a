"""Qwen3Guard-Stream in the Ray actor pool: the stand-in's remote model code is loaded inside
the actors (trust_remote_code) and gives the pool the same P(safe) as scoring in-process."""
import numpy as np
import pytest

from stardss.config.schema import ActorsConfig, GuardrailConfig, ScoringConfig
from stardss.guard.base import ScoreRequest
from stardss.guard.pool import GuardPool
from stardss.guard.registry import build_guardrail
from stardss.star.chunk import word_cuts
from stardss.testing.stream_guard import build_tiny_stream_guard
from tests.helpers import GUARD_RESPONSES as RESPONSES

pytestmark = [pytest.mark.ray_session(plain=True), pytest.mark.usefixtures("ray_session")]

CONTEXT = ({"role": "user", "content": "Hello"}, {"role": "assistant", "content": "Hi! 🙂"})


def test_pool_scores_equal_in_process_scores(tmp_path):
    path = build_tiny_stream_guard(tmp_path / "stream")
    strict = GuardrailConfig(kind="qwen3guard_stream", name_or_path=path, batch_size=3,
                             trust_remote_code=True)
    loose = GuardrailConfig(kind="qwen3guard_stream", name_or_path=path, batch_size=3,
                            trust_remote_code=True, controversial="safe")
    requests = [ScoreRequest(f"r{i}", f"question {i}?", r, word_cuts(r, 5),
                             CONTEXT if i % 2 else ())
                for i, r in enumerate(RESPONSES * 3)]
    scoring = ScoringConfig(actors=ActorsConfig(min=2, max=2, num_cpus=0.5, batch_size=3),
                            max_in_flight=2, timeout_s=120)
    with GuardPool([strict, loose], scoring) as pool:
        fps = pool.fingerprints()
        out = pool.score(requests)
    direct = [build_guardrail(strict), build_guardrail(loose)]
    assert fps == [g.fingerprint for g in direct] and fps[0] != fps[1]
    want = [g.score_prefixes(requests) for g in direct]
    for n, req in enumerate(requests):
        got = out[req.key]
        assert got.shape == (2, len(req.cuts))
        np.testing.assert_allclose(got[0], want[0][n], atol=1e-6, rtol=0)
        np.testing.assert_allclose(got[1], want[1][n], atol=1e-6, rtol=0)
        assert np.all(got[1] >= got[0] - 1e-12)  # loose counts Controversial as safe


def test_pool_refuses_the_stream_guard_without_trust_remote_code(tmp_path):
    path = build_tiny_stream_guard(tmp_path / "stream")
    cfg = GuardrailConfig(kind="qwen3guard_stream", name_or_path=path)
    scoring = ScoringConfig(actors=ActorsConfig(min=1, max=1, num_cpus=0.5, batch_size=2),
                            timeout_s=60)
    with pytest.raises(Exception, match=r"trust_remote_code: true"):
        with GuardPool([cfg], scoring) as pool:
            pool.score([ScoreRequest("r", "q?", "ok", [2])])
