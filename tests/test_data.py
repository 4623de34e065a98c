from __future__ import annotations

import json

import pytest

from tasktune.data import read_examples
from tasktune.errors import DataError


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_three_row_shapes_read_the_same(tmp_path):
    rows = [
        {"input": "a", "output": {"k": 1}},
        {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": '{"k": 1}'}]},
        {"prompt": "a", "completion": '{"k": 1}'},
    ]
    path = _write(tmp_path / "d.jsonl", [json.dumps(r) for r in rows])
    examples = read_examples(path)
    assert [e.messages for e in examples] == [examples[0].messages] * 3
    assert examples[0].answer == '{"k": 1}'


def test_csv_rows(tmp_path):
    path = tmp_path / "d.csv"
    path.write_text('input,output\n"hello, world",greeting\nbye,farewell\n', encoding="utf-8")
    examples = read_examples(path)
    assert [e.input_text for e in examples] == ["hello, world", "bye"]
    assert examples[1].line == 3


def test_every_bad_row_is_named_with_its_line(tmp_path):
    path = _write(
        tmp_path / "d.jsonl",
        [
            json.dumps({"input": "ok", "output": "fine"}),
            '{"input": "broken"',
            json.dumps({"inputs": "typo", "output": "x"}),
            json.dumps({"input": "no answer"}),
            json.dumps({"messages": [{"role": "bot", "content": "x"}]}),
            json.dumps({"input": 5, "output": "x"}),
        ],
    )
    with pytest.raises(DataError) as e:
        read_examples(path)
    msg = str(e.value)
    assert "5 bad row(s)" in msg
    assert f"{path}:2: not valid JSON" in msg
    assert f"{path}:3: no 'input', 'messages' or 'prompt' field (row has: inputs, output)" in msg
    assert f"{path}:4: no answer" in msg
    assert f"{path}:5: messages[0]: unknown role 'bot'" in msg
    assert f"{path}:6: field 'input' must be a string" in msg


def test_non_utf8_file(tmp_path):
    path = tmp_path / "d.jsonl"
    path.write_bytes(b'{"input": "caf\xe9", "output": "x"}\n')
    with pytest.raises(DataError, match="not UTF-8"):
        read_examples(path)


def test_inputs_without_answers_for_prediction(tmp_path):
    path = _write(tmp_path / "in.jsonl", [json.dumps({"input": "a"}), json.dumps({"prompt": "b"})])
    assert [e.input_text for e in read_examples(path, require_answer=False)] == ["a", "b"]
