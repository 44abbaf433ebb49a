"""The paper's recipes (jobs/paper/): every one loads and validates through the job schema,
names its data by Hub id or path with the expected columns stated, and carries the authors'
settings (read in secml-lab-vt/Optimus star-dss/, see jobs/paper/README.md); and the
`defaults` include mechanism they are built with."""
import functools
import os
import re
from pathlib import Path

os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("HF_HUB_OFFLINE", "1")

import pytest  # noqa: E402
from omegaconf import OmegaConf  # noqa: E402

from stardss.config import ConfigError, load_job  # noqa: E402
from stardss.config.build import load_build  # noqa: E402
from stardss.data.attacks import PREFIXES, SUFFIXES  # noqa: E402
from stardss.data.load import load_mixture  # noqa: E402
from stardss.data.quarantine import BadRowSink  # noqa: E402
from stardss.data.sources import HUB_ID, resolve_kind  # noqa: E402
from stardss.eval.sets import load_sets  # noqa: E402
from stardss.train.batches import plan_for  # noqa: E402

PAPER = Path(__file__).resolve().parents[2] / "jobs" / "paper"
PARTS = PAPER / "parts"
BUILD = PAPER / "build"  # `stardss build-data` specs, not jobs
RECIPES = sorted(p for p in PAPER.rglob("*.yaml") if PARTS not in p.parents
                 and BUILD not in p.parents)
MODELS = {"llama-3.2-1b-instruct": "meta-llama/Llama-3.2-1B-Instruct",
          "llama-3.1-8b-instruct": "meta-llama/Llama-3.1-8B-Instruct"}
GUARDS = {"granite-guardian-3.1-2b": ("granite_guardian", "ibm-granite/granite-guardian-3.1-2b"),
          "llama-guard-3-1b": ("llama_guard", "meta-llama/Llama-Guard-3-1B"),
          "llama-guard-3-8b": ("llama_guard", "meta-llama/Llama-Guard-3-8B")}
# Settings every model x guardrail pair must have a recipe for.
CROSSED = ("gsm8k-purebad10", "purebad100", "attack-harmless-suffix", "attack-refusal-prefix")
# The authors' guardrail for each suffix attack (their CONFIG.mk: INFER_granite_guardian31_2b_
# purebadsfx1 / _purebadsfx3, INFER_llamaguard3_8b_purebadsfx2) and the file each recipe reads.
AUTHORS_SUFFIX_GUARD = {
    "attack-harmless-suffix": ("granite-guardian-3.1-2b",
                               "data/attacks/harmful_then_harmless_suffix.jsonl"),       # sfx1
    "attack-refusal-suffix": ("llama-guard-3-8b",
                              "data/attacks/harmful_then_refusal_suffix.jsonl"),         # sfx2
    "attack-harmless-refusal-suffix": ("granite-guardian-3.1-2b",
                                       "data/attacks/harmful_then_harmless_refusal_suffix.jsonl"),
}


def recipe_id(path: Path) -> str:
    return str(path.relative_to(PAPER))


@functools.lru_cache(maxsize=None)
def loaded(path: Path):
    """A recipe as loaded, once per test session (OmegaConf merges take ~0.2 s; tests only read)."""
    return load_job(path, [])


def load(path: Path, overrides=()):
    return load_job(path, list(overrides)) if overrides else loaded(path)


def test_every_model_guardrail_pair_has_each_setting():
    have = {recipe_id(p) for p in RECIPES}
    want = {f"{s}/{m}__{g}.yaml" for s in CROSSED for m in MODELS for g in GUARDS}
    assert want <= have, f"missing recipes: {sorted(want - have)}"


def test_every_part_is_used_by_a_recipe():
    used = {(r.parent / part).resolve() for r in RECIPES for part in OmegaConf.load(r).defaults}
    assert sorted(p for p in PARTS.rglob("*.yaml") if p.resolve() not in used) == []


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_loads_and_is_named_after_its_file(recipe):
    job = load(recipe)
    setting, (model, guard) = recipe.parent.name, recipe.stem.split("__")
    # The name makes out_dir, so two recipes never write the same folder.
    assert job.name == f"{setting}__{model}__{guard}"
    assert job.out_dir == f"runs/paper/{job.name}"
    # One STAR cache for all recipes, beside their out_dirs (also when out_dir is overridden).
    assert os.path.normpath(job.star.cache_dir) == os.path.normpath("runs/paper/star_cache")
    assert job.model.name_or_path == MODELS[model]
    kind, hub_id = GUARDS[guard]
    assert [(g.kind, g.name_or_path) for g in job.guardrails] == [(kind, hub_id)]
    # Judged by a guardrail other than the one trained against (never the same model).
    judged_by = [j.guardrail.name_or_path for j in job.eval.judges]
    assert judged_by and hub_id not in judged_by
    assert [s.name for s in job.data.sources]  # training data, every source named


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_recipe_has_the_paper_hyperparameters(recipe):
    job = load(recipe)
    assert job.seed == 42
    assert (job.star.chunk.unit, job.star.chunk.size, job.star.threshold) == ("words", 5, None)
    assert job.loss.kind == "dss"
    assert (job.loss.kl.estimator, job.loss.kl.coef) == ("k2", 0.5)
    # RS as the authors run it: a 0/1 verdict per row, unsafe rows kept with weight 0.
    assert (job.loss.rs_threshold, job.loss.rs_mode) == (0.5, "zero_weight")
    # STAR values as the authors' sampled generate reads them (config/model/default.yaml).
    a = job.star.authors
    assert job.star.transform == "authors"
    assert (a.temperature, a.top_k, a.top_p, a.repetition_penalty) == (0.2, 50, 0.9, 1.2)
    t = job.train
    assert t.drop_last is True  # len // global batch steps per epoch (src/sft_openrlhf.py)
    assert (t.epochs, t.lr, t.min_lr, t.warmup_ratio) == (10, 5e-6, 5e-8, 0.03)
    assert (list(t.betas), t.weight_decay, t.grad_clip) == ([0.9, 0.95], 0.0, 1.0)
    assert (t.zero_stage, t.bf16, t.use_gpu) == (3, True, True)
    assert job.data.max_length == 2048
    g = job.eval.generation  # the authors' generation settings
    assert (g.temperature, g.top_p, g.top_k, g.repetition_penalty) == (0.2, 0.9, 50, 1.2)
    assert (g.max_length, g.max_new_tokens) == (500, None)
    assert [s.name for s in job.eval.sets] == ["hex-phi", "advbench", "gsm8k-test", "mmlu",
                                               "arc-challenge"]
    assert [(a.kind, list(a.sets)) for a in job.eval.attacks] == [("prefill", ["advbench"])]
    global_batch = t.micro_batch_size * t.grad_accum * t.workers
    # 32 (micro 4) in the paper; the authors' 8B run uses 16 (micro 2).
    assert (global_batch, t.micro_batch_size) == ((16, 2) if "8b-instruct" in recipe.stem
                                                  else (32, 4))


@pytest.mark.parametrize("recipe", [r for r in RECIPES if "llama-3.1-8b-instruct" in r.stem],
                         ids=recipe_id)
def test_8b_recipes_shard_with_zero3_on_the_training_nodes(recipe):
    job = load(recipe)
    assert job.train.zero_stage == 3 and job.train.workers == 8 and job.train.use_gpu
    assert dict(job.train.resources_per_worker) == {"trainer": 1}
    a = job.scoring.actors
    assert (a.min, a.max, a.num_gpus, dict(a.resources)) == (1, 4, 1, {"guard": 1})


@pytest.mark.parametrize("setting, rows, steps_1b, steps_8b", [
    ("purebad100", 100, 30, 60),             # 100 // 32 = 3 (not ceil = 4) an epoch; 8B: 100 // 16
    ("gsm8k-purebad10", 8303, 2590, 5180),   # 8303 // 32 = 259; 8B: 8303 // 16 = 518
])
def test_steps_are_the_authors_len_floordiv_global_batch(setting, rows, steps_1b, steps_8b):
    for model, want in (("llama-3.2-1b-instruct", steps_1b), ("llama-3.1-8b-instruct", steps_8b)):
        job = load(PAPER / setting / f"{model}__granite-guardian-3.1-2b.yaml")
        plan = plan_for(job.train, int(job.seed), rows)
        assert len(plan) == want
        assert all(None not in step for step in plan)  # full steps only, no padded last step


@pytest.mark.parametrize("setting", sorted(AUTHORS_SUFFIX_GUARD))
def test_each_suffix_attack_has_the_authors_guardrail(setting):
    guard, path = AUTHORS_SUFFIX_GUARD[setting]
    job = load(PAPER / setting / f"llama-3.2-1b-instruct__{guard}.yaml")
    assert [g.name_or_path for g in job.guardrails] == [GUARDS[guard][1]]
    assert [s.path for s in job.data.sources] == [path]


def test_attack_recipes_read_the_files_the_build_spec_writes():
    written = {o.path for o in load_build(BUILD / "purebad-attacks.yaml").build.outputs}
    read = {s.path for r in RECIPES if r.parent.name.startswith("attack-")
            for s in load(r).data.sources}
    assert read == written


def test_attack_data_parts_state_the_builders_preset_texts():
    """Each attack part writes out the authors' text it expects (so a hand-built file can be
    checked against it), and it is the text `stardss build-data` writes for that preset."""
    want = {"attack-harmless-suffix": SUFFIXES["sfx1"], "attack-refusal-suffix": SUFFIXES["sfx2"],
            "attack-harmless-refusal-suffix": SUFFIXES["sfx3"],
            "attack-refusal-prefix": PREFIXES["pfx1"]}
    for setting, text in want.items():
        comment = " ".join(line.strip().lstrip("#").strip() for line in
                           (PARTS / "data" / f"{setting}.yaml").read_text().splitlines())
        assert f'"{text}"' in comment, (setting, text)
    assert SUFFIXES["sfx3"] == f'{SUFFIXES["sfx1"]} {SUFFIXES["sfx2"]}'


# loss.kind interacts with the model and train sections only, so one guardrail suffices.
@pytest.mark.parametrize("recipe", [r for r in RECIPES if "granite" in r.stem], ids=recipe_id)
def test_baselines_load_from_the_same_recipe(recipe):
    for kind in ("sft", "rs"):
        assert load(recipe, [f"loss.kind={kind}"]).loss.kind == kind


def sources_of(job):
    """(role, source) of the training data and of the eval sets read as rows (the others are
    read in their public layout, which names the columns)."""
    return ([("train", s) for s in job.data.sources]
            + [(s.task, s) for s in job.eval.sets if s.format in ("auto", "rows")])


# The fields each role needs; `columns` must say which dataset column gives each.
NEEDS = {"train": {"prompt", "response"}, "safety": {"prompt"}, "answer": {"prompt", "answer"}}


@pytest.mark.parametrize("recipe", RECIPES, ids=recipe_id)
def test_every_source_names_a_hub_id_or_path_and_its_columns(recipe):
    for role, src in sources_of(load(recipe)):
        kind = resolve_kind(src)
        assert kind in ("hf", "jsonl", "parquet"), (src.name, kind)
        assert role in NEEDS, f"{src.name}: a {role} set read as rows"
        if kind == "hf":
            assert HUB_ID.match(src.path), f"{src.name}: {src.path} is not a Hub id"
        fields = set(src.columns)
        assert fields >= NEEDS[role] or (role == "train" and "messages" in fields), (
            f"{src.name}: `columns` must name the column of each of {sorted(NEEDS[role])}")


def _comment_above(lines: list[str], index: int) -> str:
    above = []
    for line in reversed(lines[:index]):
        if not line.strip().startswith("#"):
            break
        above.append(line)
    return "\n".join(above)


@pytest.mark.parametrize("part", sorted(PARTS.rglob("*.yaml")), ids=lambda p: p.name)
def test_every_source_in_the_parts_is_documented(part):
    """A comment right above each source says where it comes from and its columns."""
    lines = part.read_text().splitlines()
    for i, line in enumerate(lines):
        if re.match(r"\s*- name: ", line):
            comment = _comment_above(lines, i)
            assert re.search(r"columns?\b", comment), f"{part.name}: {line.strip()} undocumented"
            assert re.search(r"Hub|not on the Hub|No public dataset", comment, re.I), (
                f"{part.name}: {line.strip()}: say whether it is on the Hub")


# --- the recipes' sources read data shaped as documented (stand-ins, no download) -----------

def _recipe(setting: str) -> Path:
    return PAPER / setting / "llama-3.2-1b-instruct__granite-guardian-3.1-2b.yaml"


@pytest.fixture
def fake_hub(monkeypatch):
    """datasets.load_dataset answering from in-memory stand-ins of the recipes' Hub datasets."""
    import datasets

    hub = {}

    def load_dataset(path, split=None, name=None, **kw):
        return datasets.Dataset.from_list(hub[(path, name, split)])

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return hub


def test_gsm8k_mixture_reads_every_gsm8k_row_once_and_purebad_to_ten_percent(tmp_path,
                                                                             fake_hub):
    fake_hub["openai/gsm8k", "main", "train"] = [
        {"question": f"q{i}", "answer": f"work {i}\n#### {i}"} for i in range(7473)]
    harmful = tmp_path / "pure_bad_100.jsonl"  # placeholder text: nothing harmful in the tests
    harmful.write_text("".join(f'{{"prompt": "request {i}", "response": "reply {i}"}}\n'
                               for i in range(100)))
    job = load(_recipe("gsm8k-purebad10"), [f"data.sources.1.path={harmful}"])
    mixture, summary = load_mixture(job.data, BadRowSink("error"), seed=int(job.seed))
    assert summary["gsm8k"] == {"read": 7473, "bad": 0, "available": 7473, "used": 7473,
                                "repeated": 0, "unused": 0}
    assert (summary["purebad"]["used"], summary["purebad"]["repeated"]) == (100, 730)
    assert summary["total"] == 8303 and mixture[0].response


def test_eval_sets_read_in_their_public_layouts(tmp_path, fake_hub):
    fake_hub["walledai/AdvBench", None, "train"] = [{"prompt": "behaviour", "target": "Sure"}]
    fake_hub["openai/gsm8k", "main", "test"] = [{"question": "2 + 3?",
                                                 "answer": "2 + 3 = <<2+3=5>>5\n#### 5"}]
    fake_hub["cais/mmlu", "all", "test"] = [{"question": "1 + 1?", "subject": "math",
                                             "choices": ["1", "2", "3", "4"], "answer": 1}]
    fake_hub["allenai/ai2_arc", "ARC-Challenge", "test"] = [
        {"id": "q1", "question": "Sky?", "choices": {"text": ["blue", "red"], "label": ["A", "B"]},
         "answerKey": "A"}]
    hexphi = tmp_path / "HEx-PHI"
    hexphi.mkdir()
    (hexphi / "category_1.csv").write_text("instruction one\n\"two, quoted\"\n")
    job = load(_recipe("purebad100"), [f"eval.sets.0.path={hexphi}"])
    sets = load_sets(list(job.eval.sets), seed=0)
    assert [it.prompt for it in sets["hex-phi"].items] == ["instruction one", "two, quoted"]
    assert "2" in sets["hex-phi"].missing_categories  # the withheld category, reported
    (adv,) = sets["advbench"].items
    assert (adv.prompt, adv.own_prefill) == ("behaviour", "Sure")  # the prefill attack's text
    (task,) = sets["gsm8k-test"].items
    assert (task.prompt, task.answer) == ("2 + 3?", "5") and "####" in task.messages[0]["content"]
    (mc,) = sets["mmlu"].items
    assert (mc.choices, mc.answer, mc.category) == (("1", "2", "3", "4"), "B", "math")
    assert sets["arc-challenge"].items[0].answer == "A"


def test_beavertails_recipe_trains_on_every_row_of_the_authors_file(tmp_path):
    rows = tmp_path / "unsafe420.jsonl"  # placeholder text, shaped as the authors' file
    rows.write_text("".join(f'{{"prompt": "p{i}", "response": "r{i}"}}\n' for i in range(420)))
    job = load(_recipe("beavertails420"), [f"data.sources.0.path={rows}"])
    mixture, summary = load_mixture(job.data, BadRowSink("error"), seed=int(job.seed))
    assert summary["total"] == 420 and sorted(r.prompt for r in mixture) == sorted(
        f"p{i}" for i in range(420))


def test_beavertails_hub_alternative_trains_on_unsafe_rows_only(fake_hub):
    """The part's documented fallback: a seeded sample of the Hub's unsafe answers."""
    fake_hub["PKU-Alignment/BeaverTails", None, "30k_train"] = [
        {"prompt": f"p{i}", "response": f"r{i}", "category": {}, "is_safe": i % 2 == 0}
        for i in range(1000)]
    job = load(_recipe("beavertails420"), [
        "data.sources.0.path=PKU-Alignment/BeaverTails", "data.sources.0.split=30k_train",
        "data.sources.0.where={is_safe: false}", "data.mix_size=420"])
    mixture, summary = load_mixture(job.data, BadRowSink("error"), seed=int(job.seed))
    assert summary["beavertails-unsafe"]["read"] == 500 and summary["total"] == 420
    assert all(int(r.prompt[1:]) % 2 == 1 for r in mixture)


# --- `defaults`: a job file built from parts ------------------------------------------------

def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_defaults_merge_in_order_and_the_file_wins(tmp_path):
    write(tmp_path / "parts" / "base.yaml",
          "defaults: [model.yaml]\ntrain: {lr: 1.0e-5, epochs: 3}\n"
          "data: {sources: [{path: a.jsonl}, {path: b.jsonl}]}\n")
    write(tmp_path / "parts" / "model.yaml", "model: {name_or_path: base-model}\n"
          "train: {lr: 9.0e-9, workers: 3}\n")
    write(tmp_path / "parts" / "data.yaml", "data: {sources: [{path: c.jsonl}]}\n")
    job = load(write(tmp_path / "jobs" / "job.yaml",
                     "defaults: [../parts/base.yaml, ../parts/data.yaml]\ntrain: {epochs: 7}\n"))
    assert (job.train.lr, job.train.epochs, job.train.workers) == (1e-5, 7, 3)
    assert job.model.name_or_path == "base-model"
    assert [s.path for s in job.data.sources] == ["c.jsonl"]  # lists are replaced, not merged


def test_defaults_errors_name_the_file(tmp_path):
    job = write(tmp_path / "job.yaml", "defaults: [missing.yaml]\n")
    with pytest.raises(ConfigError, match=f"job file not found: {tmp_path}/missing.yaml "
                                          f"\\(in the defaults of {job}\\)"):
        load(job)
    write(tmp_path / "a.yaml", "defaults: [b.yaml]\n")
    write(tmp_path / "b.yaml", "defaults: [a.yaml]\n")
    with pytest.raises(ConfigError, match="defaults: .*a.yaml includes itself"):
        load(tmp_path / "a.yaml")
    with pytest.raises(ConfigError, match="defaults: in .*, a list of YAML paths"):
        load(write(tmp_path / "c.yaml", "defaults: base.yaml\n"))
    write(tmp_path / "e.yaml", "train: {lrr: 1}\n")
    with pytest.raises(ConfigError, match="train.lrr"):  # a part's keys are checked too
        load(write(tmp_path / "d.yaml", "defaults: [e.yaml]\nmodel: {name_or_path: m}\n"))
