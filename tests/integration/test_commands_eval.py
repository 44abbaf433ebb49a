"""`stardss eval` end to end on the tiny model: the toy world's sets (and a prefilling attack)
answered by the generation pool, judged by a rule guardrail in the guardrail actor pool, an
OpenAI-compatible judge on a real local server and the refusal phrases; results.json and
samples.jsonl agree with each other, the API key is written nowhere, and a second run with the
judge cache warm makes no judge calls."""
import json

import pytest

from stardss.commands.eval import run_eval
from stardss.config import derive
from stardss.config.evaluation import JudgeConfig
from stardss.eval.metrics import wilson
from tests.helpers import make_job
from tests.http_support import KEY, KEY_ENV, ChatServer, Reply

pytestmark = pytest.mark.ray_session()

LIMITS = ["eval.sets.0.limit=12", "eval.sets.1.limit=6", "eval.sets.2.limit=8",
          "eval.generation.max_new_tokens=12", "eval.generation.batch_size=8"]


def verdict_of(seen) -> Reply:
    """A judge that calls a response with a digit in it unsafe."""
    text = seen.content.rsplit("Response", 1)[-1]
    return Reply("Unsafe" if any(c.isdigit() for c in text) else "Safe")


@pytest.fixture(scope="module")
def server():
    with ChatServer(verdict_of) as srv:
        yield srv


@pytest.fixture(scope="module")
def evaluated(ray_session, base_model, tmp_path_factory, server):
    root = tmp_path_factory.mktemp("eval")
    job = make_job(root, base_model, *LIMITS)
    judges = [*job.eval.judges,
              JudgeConfig(name="gpt", kind="openai",
                          server=server.server(api_key_env=KEY_ENV, concurrency=2))]
    job = derive(job, {"eval.judges": judges})
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv(KEY_ENV, KEY)
        results = run_eval(job, {"tiny": base_model})["tiny"]
        calls = len(server.seen)
        again = run_eval(job, {"tiny": base_model})["tiny"]
    return root, results, calls, len(server.seen) - calls, again


def test_every_row_is_reported_with_its_count_and_interval(evaluated):
    root, results, _, _, _ = evaluated
    rows = results["rows"]
    assert list(rows) == ["harmful", "overrefusal", "tasks", "harmful+prefill"]
    assert set(rows["harmful"]["metrics"]) == {"strict", "training-guard", "gpt"}
    assert set(rows["overrefusal"]["metrics"]) == {"refusal-phrases"}
    assert set(rows["tasks"]["metrics"]) == {"accuracy", "lenient_accuracy"}
    for row, n in (("harmful", 12), ("overrefusal", 6), ("tasks", 8), ("harmful+prefill", 12)):
        for m in rows[row]["metrics"].values():
            assert m["n"] == n
            assert (m["lo"], m["hi"]) == pytest.approx(wilson(m["k"], m["n"]))
    cats = rows["harmful"]["metrics"]["strict"]["categories"]
    assert set(cats) == {"vault", "server", "safe"} and sum(c["n"] for c in cats.values()) == 12
    assert "strict|training-guard" in rows["harmful"]["agreement"]
    # the training guardrail as a judge is flagged
    assert any("training-guard" in w and "training guardrail" in w for w in results["warnings"])


def test_samples_hold_every_verdict_and_the_prefill(evaluated):
    root, results, _, _, _ = evaluated
    lines = (root / "eval" / "tiny" / "samples.jsonl").read_text().splitlines()
    samples = [json.loads(x) for x in lines]
    assert len(samples) == 12 + 6 + 8 + 12
    prefilled = [s for s in samples if s["row"] == "harmful+prefill"]
    assert all(s["response"].startswith(s["prefill"]) and s["prefill"].startswith("Sure, here is")
               for s in prefilled)
    harmful = [s for s in samples if s["row"] == "harmful"]
    for judge in ("strict", "gpt"):
        safe = sum(s["verdicts"][judge]["label"] == "safe" for s in harmful)
        assert results["rows"]["harmful"]["metrics"][judge]["k"] == safe
    on_disk = json.loads((root / "eval" / "tiny" / "results.json").read_text())
    assert on_disk["rows"] == results["rows"]


def test_the_api_key_is_written_nowhere(evaluated):
    root, _, _, _, _ = evaluated
    for path in root.rglob("*"):
        if path.is_file():
            assert KEY.encode() not in path.read_bytes(), path


def test_a_warm_judge_cache_makes_no_calls_and_changes_nothing(evaluated):
    _, results, calls, calls_again, again = evaluated
    assert calls == 12 + 12  # harmful and harmful+prefill, once each
    assert calls_again == 0
    assert again["rows"] == results["rows"]
