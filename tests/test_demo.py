"""The demo pipeline (data → base+instruction eval → train → tuned eval → JSON) on the tiny model, and `eval`."""

from __future__ import annotations

import json

from tasktune.cli import main
from tasktune.demo import run_demo


def test_demo_pipeline_on_the_tiny_model(tiny_model, tmp_path, capsys):
    out = tmp_path / "demo"
    summary = run_demo(
        out, n=40, test_rows=3, json_path=tmp_path / "demo.json",
        train_overrides={"model": str(tiny_model), "max_steps": 2, "batch_size": 4, "precision": "fp32",
                         "eval_every": 1, "eval_max_rows": 4},
    )  # fmt: skip
    written = json.loads((tmp_path / "demo.json").read_text())
    assert written["task"] == "bug-reports"
    for side in ("base_with_instruction", "tuned_bare_input"):
        for key in ("field_accuracy", "valid_json_rate", "prompt_tokens_mean", "latency_ms_mean", "n"):
            assert key in written[side], (side, key)
        assert written[side]["n"] == 3
    assert written["train"]["steps"] == 2
    # the tuned side sends the bare report; the base side sends the long instruction too
    assert (
        written["tuned_bare_input"]["prompt_tokens_mean"] < written["base_with_instruction"]["prompt_tokens_mean"] / 3
    )
    assert summary["prompt_token_reduction"] > 0.66
    assert (out / "run" / "adapter" / "adapter_config.json").is_file()
    assert "field accuracy" in capsys.readouterr().out


def test_eval_cli_for_a_run_and_for_a_base_model(tiny_model, tmp_path, capsys):
    assert main(["example", "bug-reports", "--out", str(tmp_path / "bugs"), "--n", "24"]) == 0
    task = tmp_path / "bugs" / "task.yaml"
    run = tmp_path / "run"
    assert main(["train", "--task", str(task), "--model", str(tiny_model), "--out", str(run), "--max-steps", "1",
                 "--batch-size", "4", "--precision", "fp32"]) == 0  # fmt: skip
    report = tmp_path / "tuned.json"
    assert main(["eval", str(run), "--limit", "2", "--json", str(report), "--max-new-tokens", "8"]) == 0
    tuned = json.loads(report.read_text())
    assert tuned["mode"] == "bare_input" and tuned["n"] == 2 and len(tuned["predictions"]) == 2
    base_report = tmp_path / "base.json"
    assert main(["eval", "--model", str(tiny_model), "--task", str(task), "--with-instruction", "--shots", "2",
                 "--limit", "2", "--json", str(base_report), "--max-new-tokens", "8"]) == 0  # fmt: skip
    base = json.loads(base_report.read_text())
    assert base["mode"] == "few_shot_2"
    assert base["prompt_tokens_mean"] > tuned["prompt_tokens_mean"]  # instruction + two worked examples
    out = capsys.readouterr().out
    assert "prompt tokens / request" in out and "worst examples" in out


def test_eval_needs_a_run_or_a_model(capsys):
    assert main(["eval"]) == 2
    assert "eval needs a RUN folder" in capsys.readouterr().err
