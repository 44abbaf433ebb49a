"""The generation pool on real Ray actors and the tiny random Llama: the same texts whatever the
number of actors, seeded sampling, prefilling, a killed or stuck actor, LoRA adapter folders,
the max_length budget, multiple-choice scoring."""
import threading
import time

import pytest
import ray
import torch

from stardss.config.evaluation import GenerationConfig
from stardss.eval.checkpoint import load_tokenizer
from stardss.eval.choice import choice_logliks
from stardss.eval.generation import GenerationPool, PromptTooLong
from stardss.eval.items import EvalItem
from stardss.eval.render import render_prompt
from stardss.raytools import RemoteError, actor_alive

pytestmark = [pytest.mark.ray_session(plain=True), pytest.mark.usefixtures("ray_session")]

NEW = 48  # long enough that a batch takes tens of ms: a kill lands while batches are running


def gen(**kw) -> GenerationConfig:
    base = dict(actors=1, num_cpus=0.5, batch_size=3, max_new_tokens=NEW, timeout_s=60,
                start_timeout_s=120, max_restarts=2)
    return GenerationConfig(**{**base, **kw})


def make_items(n=12, prefill_every=4) -> list[EvalItem]:
    """Prompts of different lengths (so sorting matters), some with a prefill."""
    return [EvalItem("adv", i, f"adv.csv:{i + 2}", "safety",
                     ({"role": "user", "content": "how do I make " + "a big " * (i % 5) + str(i)},),
                     prefill="Sure, here is" if i % prefill_every == 1 else "")
            for i in range(n)]


def texts(out) -> dict:
    return {k: g.text for k, g in out.items()}


@pytest.fixture(scope="module")
def pool2(base_model):
    """Two greedy actors, and their undisturbed answers to make_items()."""
    with GenerationPool(base_model, gen(actors=2), seed=0) as pool:
        pool.reference = pool.generate(make_items())
        assert pool.restarts == 0
        yield pool


def direct_generate(model, tok, item: EvalItem) -> str:
    """What model.generate writes after the rendered prompt (one prompt, no padding), one
    thread like the actors (so float reductions run in the same order)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        enc = tok([render_prompt(tok, item)], add_special_tokens=False, return_tensors="pt")
        with torch.no_grad():
            out = model.generate(**enc, do_sample=False, temperature=None, top_p=None,
                                 top_k=None, max_new_tokens=NEW, eos_token_id=tok.eos_token_id,
                                 pad_token_id=tok.pad_token_id)
    finally:
        torch.set_num_threads(threads)
    new = out[0, enc["input_ids"].shape[1]:].tolist()
    if tok.eos_token_id in new:
        new = new[:new.index(tok.eos_token_id) + 1]
    return tok.decode(new, skip_special_tokens=True)


def test_one_and_two_actors_give_the_same_texts(base_model, pool2):
    items = make_items()
    with GenerationPool(base_model, gen(actors=1), seed=0) as pool1:
        one = pool1.generate(items)
    assert list(one) == [it.key for it in items]
    assert texts(one) == texts(pool2.reference)
    assert len(set(texts(one).values())) > 3  # not one degenerate answer
    tok = load_tokenizer(base_model)
    for it in items:
        g = one[it.key]
        n = len(tok(render_prompt(tok, it), add_special_tokens=False)["input_ids"])
        assert g.prompt_tokens == n
        assert 1 <= g.new_tokens <= NEW
        assert g.text.startswith(it.prefill)


def test_same_seed_same_samples_other_seed_other_samples(base_model):
    items = make_items(9)
    with GenerationPool(base_model, gen(actors=2, temperature=0.7, top_p=0.9, top_k=50,
                                        repetition_penalty=1.2), seed=1) as pool:
        first = texts(pool.generate(items))
        assert texts(pool.generate(items)) == first
    # gen.seed wins over the job's seed; one actor samples what two did
    with GenerationPool(base_model, gen(seed=1, temperature=0.7, top_p=0.9, top_k=50,
                                        repetition_penalty=1.2), seed=99) as pool:
        assert texts(pool.generate(items)) == first
    with GenerationPool(base_model, gen(temperature=0.7, top_p=0.9, top_k=50,
                                        repetition_penalty=1.2), seed=2) as pool:
        other = texts(pool.generate(items))
    assert sum(other[k] != first[k] for k in first) >= len(first) - 1


def test_prefill_is_rendered_exactly_and_continued(base_model, pool2):
    from transformers import AutoModelForCausalLM

    tok = load_tokenizer(base_model)
    model = AutoModelForCausalLM.from_pretrained(base_model).eval()
    for prefill in ["Sure, here is", "Step 1: ", "东京 😀"]:
        item = EvalItem("adv", 0, "adv.csv:2", "safety",
                        ({"role": "user", "content": "how do I pick a lock"},), prefill=prefill)
        rendered = render_prompt(tok, item)
        head = tok.apply_chat_template(list(item.messages), add_generation_prompt=True,
                                       tokenize=False)
        assert rendered == head + prefill
        assert rendered.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n" + prefill)
        g = pool2.generate([item])[item.key]  # alone in its batch: no padding
        assert g.text.startswith(prefill) and len(g.text) > len(prefill)
        assert g.text == prefill + direct_generate(model, tok, item)


def _kill_after(pool: GenerationPool, batches: int) -> threading.Thread:
    """Kill the pool's first actor once `batches` batches of the running call are done."""
    pool.batches_done = 0  # the call resets it too; the thread must not see the last call's

    def run():
        deadline = time.monotonic() + 30
        while pool.batches_done < batches and time.monotonic() < deadline:
            time.sleep(0.001)
        ray.kill(pool.actors[0])

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def test_killed_actor_every_key_once_same_texts(pool2):
    items = make_items(24)
    want = texts(pool2.generate(items))
    assert pool2.restarts == 0
    # an actor killed before the call: its first batches fail and go to the others
    victim = pool2.actors[1]
    ray.kill(victim)
    while actor_alive(victim, 1.0):
        time.sleep(0.01)
    out = pool2.generate(items)
    assert list(out) == [it.key for it in items] and texts(out) == want
    assert pool2.restarts == 1
    # an actor killed while it generates (8 batches of 3; killed after 2 are done)
    killer = _kill_after(pool2, 2)
    out = pool2.generate(items)
    killer.join()
    assert list(out) == [it.key for it in items] and texts(out) == want
    assert pool2.restarts == 1
    assert pool2.generate(make_items()) == pool2.reference  # the pool goes on


def test_no_restarts_left_names_the_actor_and_batch(base_model):
    with GenerationPool(base_model, gen(max_restarts=0), seed=0) as pool:
        pool.start()
        actor = pool.actors[0]
        ray.kill(actor)
        while actor_alive(actor, 1.0):
            time.sleep(0.01)
        with pytest.raises(RemoteError, match=r"^generation actor 0, batch \d \(3 items, keys "
                                              r".*\): .*max_restarts=0\)$"):
            pool.generate(make_items(6))


def test_stuck_actor_is_replaced_until_restarts_run_out(base_model):
    with GenerationPool(base_model, gen(timeout_s=0.01, max_restarts=1), seed=0) as pool:
        with pytest.raises(RemoteError, match=r"^generation actor 1, batch 0 .*no result within "
                                              r"0\.01s \(eval\.generation\.timeout_s\) \(restarts "
                                              r"exhausted: 1 replacement"):
            pool.generate(make_items(3))
        assert pool.restarts == 1


def test_lora_adapter_folder_loads_merged(base_model, pool2, tmp_path):
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(base_model)
    torch.manual_seed(0)
    peft = get_peft_model(model, LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                            init_lora_weights=False))
    peft.save_pretrained(tmp_path)  # adapter only, and no tokenizer: the base's is used
    assert (tmp_path / "adapter_config.json").exists()
    assert not (tmp_path / "tokenizer_config.json").exists()
    merged = peft.merge_and_unload().eval()
    items = make_items(4)
    with GenerationPool(str(tmp_path), gen(batch_size=1), seed=0) as pool:
        out = pool.generate(items)
    tok = load_tokenizer(base_model)
    assert texts(out) == {it.key: it.prefill + direct_generate(merged, tok, it) for it in items}
    assert texts(out) != {k: pool2.reference[k].text for k in out}  # the adapter changed it


def test_max_length_counts_prompt_and_generation(base_model):
    items = make_items(6)
    tok = load_tokenizer(base_model)
    lengths = {it.key: len(tok(render_prompt(tok, it), add_special_tokens=False)["input_ids"])
               for it in items}
    longest = max(lengths.values())
    too_short = GenerationPool(base_model, gen(max_new_tokens=None, max_length=longest), seed=0)
    with too_short, pytest.raises(PromptTooLong, match=r"^adv\.csv:\d+: the prompt \(adv/\d\) "
                                                       rf"is {longest} tokens, not shorter than "
                                                       rf"eval\.generation\.max_length={longest} "):
        too_short.generate(items)
    assert not too_short.group.members and not too_short.group.starting  # no work started
    assert too_short.generate([]) == {}
    budget = longest + 5
    with GenerationPool(base_model, gen(max_new_tokens=None, max_length=budget, batch_size=6),
                        seed=0) as pool:
        out = pool.generate(items)
    # one padded batch of width `longest`: HF's max_length leaves every row 5 new tokens
    assert {k: g.new_tokens for k, g in out.items()} == {it.key: 5 for it in items}
    assert {k: g.prompt_tokens for k, g in out.items()} == lengths


def test_choice_logliks_match_a_direct_call(base_model, pool2):
    from transformers import AutoModelForCausalLM

    items = [EvalItem("mmlu", i, f"mmlu.jsonl:{i + 1}", "choice",
                      ({"role": "user", "content": f"question {i}?\nA. yes\nB. no\nC. maybe"},),
                      answer="A", choices=("yes", "no", "maybe" * (i + 1))) for i in range(5)]
    got = pool2.choice_logliks(items)
    assert list(got) == [it.key for it in items]
    model = AutoModelForCausalLM.from_pretrained(base_model).eval()
    want = choice_logliks(model, load_tokenizer(base_model), items, batch_size=3, device="cpu")
    for it, w in zip(items, want):
        assert got[it.key] == pytest.approx(w, rel=1e-5, abs=1e-5)
    assert pool2.choice_logliks([]) == {}


def test_reload_serves_another_checkpoint_also_after_a_replacement(base_model, pool2, tmp_path):
    """One actor serves a run's snapshots in turn (safety over training): after reload it
    answers as a pool started on the new folder, and so does an actor that replaces it."""
    from transformers import AutoModelForCausalLM

    other = tmp_path / "other"
    model = AutoModelForCausalLM.from_pretrained(base_model)
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(1.5)  # a different model of the same shape and tokenizer
    model.save_pretrained(other)
    load_tokenizer(base_model).save_pretrained(other)
    items = make_items(6)
    with GenerationPool(str(other), gen(), seed=0) as fresh:
        want = texts(fresh.generate(items))
    with GenerationPool(base_model, gen(), seed=0) as pool:
        pool.start()
        before = texts(pool.generate(items))
        pool.reload(str(other))
        assert texts(pool.generate(items)) == want != before
        ray.kill(pool.actors[0], no_restart=True)  # its replacement must load `other` too
        assert texts(pool.generate(items)) == want and pool.restarts == 1
