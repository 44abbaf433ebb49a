"""jobs/guards/: every guardrail part composes with a job (here the demo's) through `defaults`
and validates, names its model by a Hub id, and is listed in the folder's README."""
from pathlib import Path

import pytest

from stardss.config import load_job
from stardss.data.sources import HUB_ID

ROOT = Path(__file__).resolve().parents[2] / "jobs"
PARTS = sorted((ROOT / "guards").glob("*.yaml"))


def compose(tmp_path, part: Path, *overrides):
    job = tmp_path / "job.yaml"
    job.write_text(f"defaults:\n  - {ROOT / 'demo.yaml'}\n  - {part}\n", encoding="utf-8")
    return load_job(str(job), list(overrides))


def test_there_are_parts_and_the_readme_lists_each():
    readme = (ROOT / "guards" / "README.md").read_text(encoding="utf-8")
    assert len(PARTS) >= 7
    assert [p.name for p in PARTS if f"`{p.name}`" not in readme] == []


@pytest.mark.parametrize("part", PARTS, ids=[p.stem for p in PARTS])
def test_each_part_validates_on_a_job_and_names_hub_models(tmp_path, part):
    job = compose(tmp_path, part)
    assert job.guardrails and all(g.kind != "rules" for g in job.guardrails)
    for g in job.guardrails:
        assert HUB_ID.match(g.name_or_path), g.name_or_path
        if g.kind == "remote":
            assert g.family and g.server.base_url.startswith("http")
            # the name of a variable, never a key itself
            assert g.server.api_key_env.isidentifier() and g.server.api_key_env.isupper()


def test_the_stream_part_runs_remote_code_only_because_it_says_so(tmp_path):
    from stardss.guard.registry import build_guardrail

    job = compose(tmp_path, ROOT / "guards" / "qwen3guard-stream-4b.yaml",
                  "guardrails.0.trust_remote_code=false")
    with pytest.raises(ValueError, match="trust_remote_code: true"):
        build_guardrail(job.guardrails[0])
