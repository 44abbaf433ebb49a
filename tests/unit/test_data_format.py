"""Chat formatting: trained tokens are exactly the response (+ end of turn); bad rows named."""
import pytest

from stardss.config import load_job
from stardss.data.format import encode_row
from stardss.data.load import load_training_data
from stardss.data.quarantine import BadRowSink
from stardss.data.rows import BadRow, parse_row
from tests.helpers import chat_row, tokenizer


def test_prompt_tokens_are_not_trained_and_system_is_rendered():
    tok = tokenizer()
    row = parse_row({"system": "Be brief.", "prompt": "What is 2 + 2?",
                     "response": "2 + 2 = 4. #### 4"}, "s", 0)
    enc = encode_row(tok, row, 512)
    prompt = tok.decode(enc.input_ids[:enc.response_start])
    assert prompt.endswith("<|start_header_id|>assistant<|end_header_id|>\n\n")
    assert "Be brief." in prompt and "What is 2 + 2?" in prompt
    assert tok.decode(enc.input_ids[enc.response_start:]) == "2 + 2 = 4. #### 4<|eot_id|>"
    assert enc.response_spans[0][0] == 0 and enc.response_spans[-1][0] >= len(enc.response)


def test_over_max_length_is_a_named_bad_row():
    tok = tokenizer()
    with pytest.raises(BadRow) as err:
        encode_row(tok, chat_row("Repeat.", "word " * 200, index=7), 64)
    assert err.value.row == 7 and err.value.kind == "too_long"
    assert "test: row 7: over max length" in str(err.value)


def test_template_that_alters_the_response_is_a_bad_row():
    tok = tokenizer()
    import copy
    altered = copy.deepcopy(tok)
    altered.chat_template = ("{% for m in messages %}{{ m['role'] }}: {{ m['content'] | upper }}"
                             "\n{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}")
    with pytest.raises(BadRow, match="alters the response"):
        encode_row(altered, chat_row("hi", "hello there"), 512)


def test_too_long_rows_are_quarantined_and_counted(tmp_path):
    data = tmp_path / "d.jsonl"
    data.write_text('{"prompt": "a", "response": "short answer"}\n'
                    + '{"prompt": "b", "response": "' + "long " * 300 + '"}\n'
                    + '{"prompt": "c"}\n')
    job = load_job(None, ["model.name_or_path=x", f"data.sources=[{{path: {data}}}]",
                          "data.max_length=64", "data.on_bad_row=quarantine"])
    with BadRowSink("quarantine", tmp_path / "q.jsonl") as sink:
        out = load_training_data(job.data, tokenizer(), sink, seed=job.seed)
    assert [r.prompt for r in out.rows] == ["a"]
    assert out.summary["bad_rows"]["total"] == 2
    lines = (tmp_path / "q.jsonl").read_text().splitlines()
    assert len(lines) == 2 and "over max length" in lines[0] + lines[1]
    assert "response" in lines[0] + lines[1]
    with BadRowSink("error") as sink, pytest.raises(BadRow, match=r"d\.jsonl: row 2: missing"):
        load_training_data(job.data, tokenizer(), sink, seed=job.seed)  # the first bad row
    data.write_text("\n".join(data.read_text().splitlines()[:2]) + "\n")
    with BadRowSink("error") as sink, pytest.raises(BadRow, match=r"d\.jsonl: row 1: over max"):
        load_training_data(job.data, tokenizer(), sink, seed=job.seed)
