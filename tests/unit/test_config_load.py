"""Job loading: YAML + dotlist overrides onto the schema; bad keys and values fail by name."""
import pytest

from stardss.config import ConfigError, load_job

DEMO = "jobs/demo.yaml"


def test_demo_job_loads_with_overrides():
    job = load_job(DEMO, ["train.lr=1e-4", "loss.kind=sft", "out_dir=/tmp/x"])
    assert job.train.lr == 1e-4 and job.loss.kind == "sft"
    assert job.model.name_or_path == "/tmp/x/aligned/model"  # interpolation follows the override
    assert job.star.chunk.size == 5 and job.loss.kl.estimator == "k2" and job.loss.kl.coef == 0.5
    assert len(job.guardrails[0].rules) == 4


REMOTE = ("guardrails.0.kind=remote", "guardrails.0.name_or_path=tok", "guardrails.0.rules=[]",
          "guardrails.0.bias=0")


@pytest.mark.parametrize("override,message", [
    ("train.lrr=1", "train.lrr"),
    ("train.lr=abc", "train.lr"),
    ("loss.kind=ppo", "loss.kind"),
    ("star.chunk.unit=sentences", "star.chunk.unit"),
    ("star.threshold=1.5", "star.threshold"),
    ("train.zero_stage=4", "train.zero_stage"),
    ("train.workers=0", "train.workers"),
    ("data.on_bad_row=skip", "data.on_bad_row"),
    ("train.betas=[0.9]", "train.betas"),
    ("loss.kl.estimator=k9", "loss.kl.estimator"),
    ("guardrails.0.rules.0.pattern=(", "guardrails[0].rules[0].pattern"),
    ("guardrails.0.kind=llama_guardx", "guardrails[0].kind"),
    ("nonsense", "nonsense"),
    ("scoring.actors.min=0", "scoring.actors.min"),
    ("scoring.actors.max=1", "scoring.actors.max"),
    ("scoring.max_restarts=-1", "scoring.max_restarts"),
    ("scoring.actors=3", "scoring.actors"),
    ("scoring.mode=offline", "scoring.mode"),
    ("scoring.prefetch_steps=0", "scoring.prefetch_steps"),
    ("tracking.wandb.mode=online-ish", "tracking.wandb.mode"),
    ("tracking.wandb.projekt=x", "tracking.wandb.projekt"),
    ("reference.placement=remote", "reference.placement"),
    ("reference.logprobs=sometimes", "reference.logprobs"),
    ("reference.actors=0", "reference.actors"),
    ("train.offload.optimizer=nvme", "train.offload.optimizer"),
    ("train.checkpoint_every=-1", "train.checkpoint_every"),
    ("train.max_failures=-2", "train.max_failures"),
    ("train.keep_checkpoints=0", "train.keep_checkpoints"),
    ("train.deepspeed_json=/no/such/ds.json", "train.deepspeed_json"),
    ("model.lora.r=-1", "model.lora.r"),
    ("train.resources_per_worker={GPU: 1}", "train.resources_per_worker.GPU"),
    ("train.resources_per_worker={trainer: -1}", "train.resources_per_worker.trainer"),
    ("scoring.actors.resources={guard: 0}", "scoring.actors.resources.guard"),
    ("train.placement_strategy=pack", "train.placement_strategy"),
    # every float finite, wherever it is
    ("train.lr=nan", "train.lr: must be a finite number"),
    ("loss.kl.coef=inf", "loss.kl.coef: must be a finite number"),
    ("guardrails.0.bias=nan", "guardrails[0].bias: must be a finite number"),
    ("guardrails.0.rules.1.weight=-inf", "guardrails[0].rules[1].weight: must be a finite"),
    ("train.betas=[0.9,nan]", "train.betas[1]: must be a finite number"),
    ("train.betas=[0.9,1.0]", "train.betas[1]: must be < 1"),
    # an option the guardrail kind does not read would be silently ignored
    ("guardrails.0.risk_name=violence", "guardrails[0].risk_name: kind=rules does not read it"),
    ("guardrails.0.mode=naive", "guardrails[0].mode: kind=rules does not read it"),
    ("guardrails.0.controversial=safe", "guardrails[0].controversial: kind=rules does not read"),
    ("guardrails.0.controversial=loose", "guardrails[0].controversial: 'loose' is not one of"),
    # per-guardrail weights: star.combine=weighted only, not all 0
    ("guardrails.0.weight=2", "guardrails[0].weight: only star.combine=weighted reads it"),
    ("guardrails.0.weight=-1", "guardrails[0].weight: must be >= 0"),
    (("star.combine=weighted", "guardrails.0.weight=0"), "star.combine=weighted needs a weight"),
    ("star.combine=max", "star.combine: 'max' is not one of mean, min, weighted"),
    ("data.train_turns=every", "data.train_turns: 'every' is not one of last, all"),
    # a guard behind a server: the prompt family and the server are required
    (REMOTE, "guardrails[0].family: kind=remote renders the prompt"),
    ((*REMOTE, "guardrails.0.family=shieldgemma"),
     "guardrails[0].server: kind=remote needs the server"),
    ((*REMOTE, "guardrails.0.family=rules",
      "guardrails.0.server={base_url: http://x/v1, model: m}"),
     "guardrails[0].family: kind=remote renders"),
    ((*REMOTE, "guardrails.0.family=wildguard", "guardrails.0.server={model: m}"),
     "not set: guardrails[0].server.base_url"),
])
def test_bad_values_fail_naming_the_key(override, message):
    _fails(override, message)


@pytest.mark.parametrize("overrides,message", [
    (["loss.kl.estimator=full", "reference.logprobs=cached"], "reference.logprobs.*full"),
    (["loss.kl.estimator=full", "reference.placement=actor_group", "reference.logprobs=live"],
     "reference.placement.*full"),
    (["model.lora.r=8", "reference.placement=actor_group"], "reference.placement.*adapter"),
    (["train.zero_stage=2", "train.offload.params=cpu"], "train.offload.params.*zero_stage=3"),
    (["train.zero_stage=0", "train.offload.optimizer=cpu"], "train.offload.optimizer"),
    (["train.zero_stage=2", "reference.offload=true"], "reference.offload.*zero_stage=3"),
    (["model.lora.r=8", "model.lora.target_modules=[]"], "model.lora.target_modules"),
    (["train.resources_per_worker={trainer: 1}", "scoring.actors.resources={trainer: 0.5}"],
     "scoring.actors.resources: trainer is also in train.resources_per_worker"),
])
def test_keys_that_contradict_each_other_fail_naming_them(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_job(DEMO, overrides)


def test_colocate_lets_guard_actors_share_the_training_resource():
    job = load_job(DEMO, ["train.resources_per_worker={trainer: 1}", "scoring.colocate=true",
                          "scoring.actors.resources={trainer: 0.5}"])
    assert job.train.resources_per_worker == {"trainer": 1.0}
    assert job.scoring.actors.resources == {"trainer": 0.5}


def _fails(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")
                       .replace(".", r"\.")):
        load_job(DEMO, list(override) if isinstance(override, tuple) else [override])


def test_free_form_ray_keys_can_be_added_from_the_command_line():
    job = load_job(DEMO, ["ray.address=auto", "ray.runtime_env.env_vars.HF_HOME=/data/hf",
                          "scoring.mode=precompute", "tracking.wandb.project=p",
                          "train.deepspeed.zero_optimization.stage3_prefetch_bucket_size=100"])
    assert job.train.deepspeed["zero_optimization"]["stage3_prefetch_bucket_size"] == 100
    assert job.ray["address"] == "auto" and job.scoring.mode == "precompute"
    assert job.ray["runtime_env"]["env_vars"]["HF_HOME"] == "/data/hf"
    assert job.tracking.wandb.mode == "offline"  # never online unless asked


def test_missing_required_key_and_file(tmp_path):
    with pytest.raises(ConfigError, match="model.name_or_path"):
        load_job(None, [])
    with pytest.raises(ConfigError, match="job file not found"):
        load_job(tmp_path / "nope.yaml", [])
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: {name_or_path: x}\n"
                   "data: {sources: [{path: a.jsonl, ratio: 0.5}, {path: b.jsonl}]}\n")
    with pytest.raises(ConfigError, match="data.sources"):
        load_job(bad, [])
    bad.write_text("model: {name_or_path: x}\ntrain: {epochs: 1, zero: 2}\n")
    with pytest.raises(ConfigError, match="train.zero"):
        load_job(bad, [])


def test_the_demo_section_belongs_to_the_demo_schema():
    from stardss.demo.config import DemoJobConfig

    job = load_job(DEMO, ["demo.methods=[rs,dss]", "demo.tiny.num_layers=3"], schema=DemoJobConfig)
    assert job.demo.methods == ["rs", "dss"] and job.demo.tiny.num_layers == 3
    with pytest.raises(ConfigError, match=r"demo\.methods\[1\]: 'ppo' is not one of"):
        load_job(DEMO, ["demo.methods=[rs,ppo]"], schema=DemoJobConfig)
    with pytest.raises(ConfigError, match="demo"):  # the other commands read the plain schema
        load_job(DEMO, ["demo.align_epochs=2"])


def test_a_loaded_job_is_dataclasses_and_derive_makes_a_validated_copy():
    from dataclasses import is_dataclass

    from stardss.config import JobConfig, derive

    job = load_job(DEMO, ["out_dir=/tmp/x"])
    assert type(job) is JobConfig and is_dataclass(job.train) and isinstance(job.ray, dict)
    sft = derive(job, {"loss.kind": "sft", "train.epochs": 2})
    assert (sft.loss.kind, sft.train.epochs) == ("sft", 2)
    assert (job.loss.kind, job.train.epochs) == ("dss", 5)  # the original is left as it was
    with pytest.raises(ConfigError, match="loss.kind: 'ppo' is not one of"):
        derive(job, {"loss.kind": "ppo"})
    with pytest.raises(ConfigError, match="train.lrr: no such key"):
        derive(job, {"train.lrr": 1.0})


@pytest.mark.parametrize("override,message", [
    ("eval.sets.1.name=harmful", "eval.sets[1].name: 'harmful' is used twice"),
    ("eval.sets.0.ratio=0.5", "eval.sets[0].ratio: eval sets are never mixed"),
    ("eval.sets.0.task=score", "eval.sets[0].task: 'score' is not one of safety, overrefusal"),
    ("eval.sets.0.format=csv", "eval.sets[0].format: 'csv' is not one of auto, rows, hex_phi"),
    ("eval.generation.max_length=500", "eval.generation.max_length: give max_length or "
     "max_new_tokens, not both"),
    ("eval.generation.max_new_tokens=null", "eval.generation.max_new_tokens: give it or "
     "max_length"),
    ("eval.generation.top_p=0", "eval.generation.top_p: must be > 0"),
    ("eval.generation.temperature=nan", "eval.generation.temperature: must be a finite number"),
    ("eval.generation.backend=openai", "eval.generation.server: backend=openai needs a server"),
    ("eval.judges.0.kind=openai", "eval.judges[0].guardrail: kind=openai does not read it"),
    ("eval.judges.2.measures=safety", "eval.judges[2].measures: kind=phrases detects refusals"),
    ("eval.judges.0.template=/nope.txt", "eval.judges[0].template: no such file"),
    ("eval.judges.0.verdict.positive=(", "eval.judges[0].verdict.positive: missing )"),
    ("eval.attacks.0.sets=[tasks]", "eval.attacks[0].sets[0]: 'tasks' is a answer set, not a "
     "safety set"),
    ("eval.attacks.0.sets=[nope]", "eval.attacks[0].sets[0]: no eval set named 'nope'"),
    ("eval.during_training.sets=[overrefusal]", "eval.during_training.sets[0]: 'overrefusal' "
     "is a overrefusal set"),
    ("eval.during_training.judge=refusal-phrases", "eval.during_training.judge: no safety judge "
     "named 'refusal-phrases'"),
    ("eval.attacks.0.kind=trigger", "eval.attacks[0].text: a trigger attack needs the trigger"),
])
def test_bad_eval_keys_fail_naming_the_key(override, message):
    with pytest.raises(ConfigError) as err:
        load_job(DEMO, ["model.name_or_path=x", override])
    assert str(err.value).startswith(message), str(err.value)


def test_an_openai_judge_names_its_key_variable_never_a_key():
    judge = ("eval.judges=[{name: strict, kind: openai, server: {base_url: "
             "'https://api.openai.com/v1', model: gpt-4o, api_key_env: %s}}]")
    job = load_job(DEMO, ["model.name_or_path=x", judge % "OPENAI_API_KEY"])
    assert job.eval.judges[0].server.api_key_env == "OPENAI_API_KEY"
    with pytest.raises(ConfigError, match=r"eval.judges\[0\].server.api_key_env: OPENAI_API_KEY"
                                          r"=\.\.\. gives a value") as err:
        load_job(DEMO, ["model.name_or_path=x", judge % "OPENAI_API_KEY=sk-abc123"])
    assert "sk-abc123" not in str(err.value)


@pytest.mark.parametrize("command,overrides,message", [
    ("train", ["data.sources=[]"], "data.sources: `stardss train` needs at least one data source"),
    ("score", ["guardrails=[]"], "guardrails: `stardss score` scores prefixes: name at least one"),
    ("train", ["guardrails=[]", "loss.kind=dss"], "guardrails: `stardss train` loss.kind=dss "
     "needs STAR: name at least one guardrail"),
    ("eval", ["eval.sets=[]", "eval.attacks=[]", "eval.during_training.sets=[]",
              "eval.during_training.enabled=false"],
     "eval.sets: `stardss eval` needs at least one eval set"),
    ("eval", ["eval.judges=[{name: r, kind: phrases, measures: refusal}]",
              "eval.during_training.judge=null", "eval.during_training.enabled=false"],
     "eval.judges: the safety sets need a safety judge"),
])
def test_what_a_command_needs_is_checked_before_work(command, overrides, message):
    from stardss.config.validate import validate_for

    job = load_job(DEMO, ["model.name_or_path=x", *overrides])
    with pytest.raises(ConfigError) as err:
        validate_for(job, command)
    assert str(err.value).startswith(message), str(err.value)


def test_what_a_command_does_not_read_may_be_empty():
    from stardss.config.validate import validate_for

    sft = load_job(DEMO, ["model.name_or_path=x", "guardrails=[]", "loss.kind=sft",
                          "eval.judges=[]", "eval.during_training.judge=null",
                          "eval.during_training.enabled=false"])
    validate_for(sft, "train")  # sft trains without STAR
    eval_only = load_job(DEMO, ["model.name_or_path=x", "data.sources=[]"])
    validate_for(eval_only, "eval")
