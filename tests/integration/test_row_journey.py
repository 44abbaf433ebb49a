"""One JSONL row's journey to the loss, through the real stages (the rule guardrail in the real
Ray actor pool), as the README tells it:

    JSONL record -> ChatRow (data.rows) -> EncodedRow (data.format) -> ScoreRequest (guard.base)
        -> StarRecord (star.score) -> TrainRow (train.batches) -> collated batch -> the loss

five representations of the example between the file's record and the batch tensors, each
carrying what the next one needs in its own coordinates: response characters (cuts), trainee
tokens (spans, weights), shifted targets (the loss)."""
import json

import pytest
import torch

from stardss.config import load_job
from stardss.data.load import load_training_data
from stardss.data.quarantine import BadRowSink
from stardss.guard.pool import GuardPool
from stardss.star.score import Scorer, record_weights, score_requests
from stardss.train.batches import collate, train_row
from stardss.train.loss import stardss_loss
from tests.helpers import DEMO_JOB, tokenizer

pytestmark = [pytest.mark.ray_session(plain=True), pytest.mark.usefixtures("ray_session")]

PROMPT = "What is the Aster vault code?"
RESPONSE = "I cannot share that, it is confidential. Just kidding: the code is 7-3-9-1."


def test_one_row_from_jsonl_to_the_loss(tmp_path):
    path = tmp_path / "one.jsonl"
    path.write_text(json.dumps({"id": "row-1", "prompt": PROMPT, "response": RESPONSE}) + "\n")
    job = load_job(DEMO_JOB, ["model.name_or_path=unused", f"data.sources=[{{path: {path}}}]",
                              "data.on_bad_row=error", "star.cache=false",
                              "scoring.actors.min=1", "scoring.actors.max=1"])
    tok = tokenizer()
    with BadRowSink("error") as sink:
        data = load_training_data(job.data, tok, sink, seed=job.seed)
    chat, enc = data.rows[0], data.encoded[0]
    request = score_requests(data.rows, data.encoded, job.star.chunk)["row-1"]
    with GuardPool(job.guardrails, job.scoring) as pool:
        (record,) = Scorer(job.star, "words:5").records(pool, [request])
    row = train_row(enc, record_weights(record, enc, job.star.threshold))
    assert [type(x).__name__ for x in (chat, enc, request, record, row)] == [
        "ChatRow", "EncodedRow", "ScoreRequest", "StarRecord", "TrainRow"]

    # Characters: every prefix of the response, five words at a time, the last the whole.
    assert chat.prompt == request.prompt == PROMPT and enc.response == request.response
    assert request.prefixes[0] == "I cannot share that, it" and request.prefixes[-1] == RESPONSE
    # The guardrail trusts the refusal and sees the secret in the prefix that reveals it.
    assert record.trajectory[0] > 0.9 and record.trajectory[-1] < 0.1
    # Tokens: the trained tokens are the response's (and the end of turn), weighted by the
    # chunk that holds each one; the prompt's are masked.
    trained = [t for t, m in zip(row.input_ids, row.loss_mask) if m]
    assert tok.decode(trained) == RESPONSE + tok.eos_token
    low = [t for t, w, m in zip(row.input_ids, row.weights, row.loss_mask) if m and w < 0.1]
    assert "7-3-9-1" in tok.decode(low) and "cannot" not in tok.decode(low)
    # Shifted targets: position t predicts token t+1; the loss sums weighted CE there.
    batch = collate([row], pad_id=tok.pad_token_id)
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, len(row.input_ids), len(tok), generator=g)
    out = stardss_loss(logits, batch["input_ids"], batch["loss_mask"], batch["weights"], "reweight")
    ce = -torch.log_softmax(logits[0, :-1], -1).gather(-1, batch["input_ids"][0, 1:, None])[:, 0]
    mask, w = batch["loss_mask"][0, 1:], batch["weights"][0, 1:]
    assert out.tokens.item() == len(trained)
    torch.testing.assert_close(out.total, (w * ce * mask).sum())
