"""The pure pieces of the run-time non-finite checks: the failure line, the row ids of a step,
the first non-finite tensor, and the optimizer step switched off for a skipped step."""
import math

import pytest
import torch

from stardss.config.schema import TrainConfig
from stardss.train.batches import TrainRow
from stardss.train.finite import first_nonfinite, no_update, nonfinite_message, step_row_ids


def test_the_failure_line_names_step_rank_rows_and_the_setting():
    line = nonfinite_message("loss", float("nan"), 12, 0, ["toy/harmful/3", "toy/tasks/17"], 0)
    assert line == ("non-finite loss (nan) at step 12 on rank 0 (rows toy/harmful/3, "
                    "toy/tasks/17): train.max_nonfinite_steps=0")
    assert nonfinite_message("gradient norm", -math.inf, 1, 3, [], 2) == (
        "non-finite gradient norm (-inf) at step 1 on rank 3 (rows none: padding only): "
        "train.max_nonfinite_steps=2")


def test_the_failure_line_lists_eight_rows_then_counts_the_rest():
    ids = [f"r/{i}" for i in range(11)]
    line = nonfinite_message("loss", math.inf, 2, 1, ids, 0)
    assert "(rows r/0, r/1, r/2, r/3, r/4, r/5, r/6, r/7, ... 3 more)" in line
    assert "(inf)" in line


def test_step_row_ids_skip_empty_slots_in_order():
    row = lambda i: TrainRow(i, [1, 2], [0, 1], [0.0, 1.0])  # noqa: E731
    assert step_row_ids([[row("a"), None], [row("b"), row("c")], [None]]) == ["a", "b", "c"]


def test_first_nonfinite_names_the_first_bad_tensor_and_a_bad_value():
    good = torch.ones(3)
    assert first_nonfinite([("a", good), ("b", None), ("c", torch.arange(3))]) is None
    assert first_nonfinite([("empty", torch.zeros(0))]) is None
    name, value = first_nonfinite([("a", good), ("b", torch.tensor([1.0, math.inf, math.nan])),
                                   ("c", torch.tensor([math.nan]))])
    assert (name, value) == ("b", math.inf)
    name, value = first_nonfinite([("w", torch.tensor([0.0, math.nan], dtype=torch.bfloat16))])
    assert name == "w" and math.isnan(value)


def test_no_update_leaves_parameters_and_state_and_restores_the_schedulers_wrapper():
    p = torch.nn.Parameter(torch.ones(2))
    opt = torch.optim.AdamW([p], lr=0.1, weight_decay=0.1)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0)
    wrapper = opt.__dict__["step"]  # the scheduler's step tracker on the instance
    p.grad = torch.ones(2)
    with no_update(opt):
        opt.step()
    assert torch.equal(p.detach(), torch.ones(2)) and not opt.state
    assert opt.__dict__["step"] is wrapper
    opt.step()
    sched.step()
    assert not torch.equal(p.detach(), torch.ones(2)) and opt.state[p]["step"] == 1
    plain = torch.optim.SGD([p], lr=0.1)
    with no_update(plain):
        plain.step()
    assert "step" not in plain.__dict__


def test_max_nonfinite_steps_defaults_to_failing_at_the_first():
    assert TrainConfig().max_nonfinite_steps == 0


def test_max_nonfinite_steps_refuses_a_negative_count():
    from stardss.config import load_job
    from tests.helpers import DEMO_JOB

    with pytest.raises(ValueError, match="train.max_nonfinite_steps"):
        load_job(DEMO_JOB, ["model.name_or_path=unused", "train.max_nonfinite_steps=-1"])


@pytest.fixture(scope="module")
def one_rank(tmp_path_factory):
    """A real one-rank gloo process group: the final-save check is a collective."""
    import torch.distributed as dist

    store = f"file://{tmp_path_factory.mktemp('pg') / 'store'}"
    dist.init_process_group("gloo", init_method=store, rank=0, world_size=1)
    yield
    dist.destroy_process_group()


def _policy(module):
    from types import SimpleNamespace

    return SimpleNamespace(engine=SimpleNamespace(module=module))


def test_the_final_save_refuses_a_non_finite_parameter_naming_it(one_rank):
    from stardss.train.checkpoint import _check_finite

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 1))
    _check_finite(_policy(model), None)  # finite: nothing raised
    with torch.no_grad():
        model[1].bias.fill_(math.inf)
    with pytest.raises(RuntimeError) as err:
        _check_finite(_policy(model), None)
    assert str(err.value) == ("parameter 1.bias is not finite (inf) on rank 0 after training: "
                              "no model written")
    # ZeRO-3: the gathered state dict is what is checked
    state = {"w": torch.zeros(2), "lm_head.weight": torch.tensor([math.nan])}
    with pytest.raises(RuntimeError, match=r"^parameter lm_head.weight is not finite \(nan\)"):
        _check_finite(_policy(torch.nn.Linear(1, 1)), state)
