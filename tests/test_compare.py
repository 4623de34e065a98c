"""Prefix and prompt tuning next to LoRA and full fine-tuning, and `tasktune compare` on the tiny model."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import pytest
import torch
from accelerate.utils import set_seed

from tasktune import compare as compare_mod
from tasktune.batching import collate, encode_rows
from tasktune.cli import main
from tasktune.compare import CompareConfig, compare, plan_methods, recommend
from tasktune.config import TrainConfig, load_task
from tasktune.data import examples_from_inputs, read_examples
from tasktune.errors import ConfigError, TaskTuneError
from tasktune.loss import token_loss
from tasktune.models import load_base
from tasktune.predict import Predictor
from tasktune.render import ChatFormat
from tasktune.rundir import MetricsLog
from tasktune.runtime import make_accelerator
from tasktune.strategies import get_strategy, merge_weights
from tasktune.train import fit, train
from tests.tiny import greedy_reference, scramble_weights

SIZES = {"lora": {"r": 4, "alpha": 8}, "prefix": {"num_virtual_tokens": 4}, "prompt": {"num_virtual_tokens": 4}}


def _cfg(tiny_model, method: str, **kw) -> TrainConfig:
    settings = {"model": str(tiny_model), "method": method, "max_steps": 3, "batch_size": 8, "precision": "fp32"}
    if method in SIZES:
        settings[method] = SIZES[method]
    return TrainConfig(**(settings | kw))


@pytest.mark.parametrize("method", ["prompt", "prefix", "lora", "full"])
def test_each_strategy_trains_saves_reloads_and_predicts(tiny_model, task_dir, method):
    task = load_task(task_dir / "task.yaml")
    cfg = _cfg(tiny_model, method, learning_rate=1e-2 if method != "full" else 1e-3)
    result = train(task, cfg, task_dir / "run")
    assert result.steps == 3 and result.train_loss > 0
    strategy = get_strategy(method)
    weights = task_dir / "run" / strategy.weights_dir
    assert (weights / ("model.safetensors" if method == "full" else "adapter_model.safetensors")).is_file()
    if method in ("prompt", "prefix"):  # only the virtual tokens train: a few hundred numbers, not the model
        assert 0 < result.trainable_params < result.total_params / 20
    predictor = Predictor.from_run(task_dir / "run", precision="fp32")
    preds = predictor.predict(["the app crashes when I open settings", "refund please"], max_new_tokens=8)
    assert len(preds) == 2 and all(p.generated_tokens >= 1 for p in preds)
    # The reloaded model gives the trained model's loss: the saved folder holds what was trained.
    model, tok = load_base(tiny_model)
    fmt = ChatFormat(tok)
    rows, _ = encode_rows(fmt, read_examples(task_dir / "eval.jsonl")[:4], None, 1024)
    batch = collate(rows, tok.pad_token_id)
    prepended = strategy.prepended_tokens(cfg)
    with torch.no_grad():
        reloaded, n = token_loss(predictor.model, batch, prepended=prepended)
        untrained, _ = token_loss(model, batch)
    assert not torch.allclose(reloaded, untrained), "the reloaded run predicts like the untrained base model"
    assert n > 0


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_prefix_and_prompt_refuse_to_merge(tiny_model, task_dir, method):
    task = load_task(task_dir / "task.yaml")
    train(task, _cfg(tiny_model, method, max_steps=1), task_dir / "run")
    with pytest.raises(TaskTuneError) as err:
        Predictor.from_run(task_dir / "run", merge=True)
    message = str(err.value)
    assert "cannot be merged" in message and "--method lora" in message
    # The default (merge where possible) loads it unmerged and works.
    assert Predictor.from_run(task_dir / "run").predict(["hello"], max_new_tokens=2)
    assert get_strategy("lora").mergeable and not get_strategy(method).mergeable
    with pytest.raises(TaskTuneError, match="cannot be merged"):
        merge_weights(get_strategy(method), object())


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_virtual_token_loss_equals_the_plain_loss(tiny_model, task_dir, method):
    """Prompt tuning prepends positions (logits shift); the supervised-only path must score the same tokens."""
    cfg = _cfg(tiny_model, method, learning_rate=5e-2, max_steps=2)
    set_seed(0)
    model, tok = load_base(tiny_model)
    fmt = ChatFormat(tok)
    rows, _ = encode_rows(fmt, read_examples(task_dir / "train.jsonl"), None, 1024)
    strategy = get_strategy(method)
    model = strategy.prepare(model, cfg)
    fit(model, rows, [], cfg, make_accelerator("fp32"), tok.pad_token_id, MetricsLog(None))  # trained, not at init
    batch = collate(rows[:6], tok.pad_token_id)
    prepended = strategy.prepended_tokens(cfg)
    assert prepended == (4 if method == "prompt" else 0)
    model.eval()
    with torch.no_grad():
        fast, n_fast = token_loss(model, batch, supervised_only=True, prepended=prepended)
        plain, n_plain = token_loss(model, batch, supervised_only=False)
        # peft's own path: it pads the labels with -100 for the virtual positions and shifts them itself.
        ref = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"]).loss
    assert n_fast == n_plain
    torch.testing.assert_close(fast, plain, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(fast / n_fast, ref, rtol=1e-5, atol=1e-5)


def test_equal_budget_for_every_trained_method(tiny_model, task_dir):
    task = load_task(task_dir / "task.yaml")
    base = TrainConfig(model=str(tiny_model), batch_size=4, grad_accum=2, precision="fp32")
    ccfg = CompareConfig(budget_tokens=5000, methods=["instruction", "prompt", "prefix", "lora", "full"])
    specs, plan = plan_methods(task_dir / "task.yaml", task, ccfg, base, max_new_tokens=16)
    trained = [s for s in specs.values() if "train" in s]
    assert len(trained) == 4 and "train" not in specs["instruction"]
    for s in trained:
        t = s["train"]
        per_step = s["budget"]["tokens_per_step"]
        assert abs(t["max_steps"] * per_step - 5000) <= per_step, s["method"]  # within one batch of the budget
        assert t["seed"] == base.seed and t["batch_size"] == 4 and t["grad_accum"] == 2
    assert len({s["train"]["max_steps"] for s in trained}) == 1
    lrs = {s["method"]: s["train"]["learning_rate"] for s in trained}
    assert lrs["prompt"] > lrs["lora"] > lrs["full"]  # soft prompts need far higher rates, and it is written down
    # The measured rows: mean length × rows per step is what the plan spends per step.
    assert plan.tokens_per_step == pytest.approx(plan.mean_row_tokens * 8)


def test_equal_budget_rejects_per_method_flags(tiny_model, task_dir):
    with pytest.raises(ConfigError, match="max_steps"):
        compare(task_dir / "task.yaml", CompareConfig(methods=["lora"]), task_dir / "cmp", {"max_steps": 3})
    with pytest.raises(ConfigError, match="unknown method 'qlora'"):
        compare(task_dir / "task.yaml", CompareConfig(methods=["qlora"]), task_dir / "cmp")


def _small(methods, **kw) -> CompareConfig:
    return CompareConfig(
        **({"methods": methods, "budget_tokens": 1200, "test_rows": 4, "shots": 2, "isolate": False} | kw)
    )


def test_resumed_compare_skips_finished_methods(tiny_model, task_dir, monkeypatch):
    calls = []
    real_train = compare_mod.train

    def counting_train(task, cfg, out, **kw):
        calls.append(cfg.method)
        return real_train(task, cfg, out, **kw)

    monkeypatch.setattr(compare_mod, "train", counting_train)
    overrides = {"model": str(tiny_model), "precision": "fp32", "batch_size": 8}
    out = task_dir / "cmp"
    first = compare(task_dir / "task.yaml", _small(["instruction", "prompt", "lora"]), out, overrides)
    assert calls == ["prompt", "lora"] and first.reused == []
    for name in ("instruction", "prompt", "lora"):
        assert (out / "methods" / name / "result.json").is_file()

    # An interruption after prompt: lora's result is gone (its half-written run folder stays behind).
    (out / "methods" / "lora" / "result.json").unlink()
    calls.clear()
    second = compare(task_dir / "task.yaml", _small(["instruction", "prompt", "lora"]), out, overrides)
    assert calls == ["lora"] and second.reused == ["instruction", "prompt"]

    calls.clear()
    third = compare(task_dir / "task.yaml", _small(["instruction", "prompt", "lora"]), out, overrides)
    assert calls == [] and third.reused == ["instruction", "prompt", "lora"]

    # Changed settings are never silently reused.
    with pytest.raises(ConfigError, match=r"other settings \(changed: .*max_steps") as err:
        compare(task_dir / "task.yaml", _small(["prompt"], budget_tokens=2400), out, overrides)
    assert "--redo" in str(err.value)
    calls.clear()
    compare(task_dir / "task.yaml", _small(["prompt"], budget_tokens=2400, redo=True), out, overrides)
    assert calls == ["prompt"]


def test_compare_report_contents(tiny_model, task_dir):
    overrides = {"model": str(tiny_model), "precision": "fp32", "batch_size": 8}
    out = task_dir / "cmp"
    ccfg = _small(["instruction", "few-shot", "prefix", "full"], priority="cost")
    result = compare(task_dir / "task.yaml", ccfg, out, overrides)
    data = json.loads((out / "results.json").read_text())
    rows = {r["name"]: r for r in data["methods"]}
    assert set(rows) == {"instruction", "few-shot", "prefix", "full"}
    assert rows["few-shot"]["prompt_tokens_mean"] > rows["instruction"]["prompt_tokens_mean"]
    assert rows["full"]["prompt_tokens_mean"] < rows["instruction"]["prompt_tokens_mean"]  # bare input
    assert rows["instruction"]["break_even_requests"] is None and rows["few-shot"]["train"] is None
    assert rows["full"]["trainable_params"] > rows["prefix"]["trainable_params"] > 0
    assert rows["full"]["artefact_bytes"] > rows["prefix"]["artefact_bytes"] > 0
    assert rows["prefix"]["loss_curve"] and rows["prefix"]["train"]["learning_rate"] == 1e-2
    assert isinstance(rows["full"]["break_even_requests"], int)
    for r in rows.values():
        assert 0 <= r["quality"] <= 1 and r["latency_ms_mean"] > 0 and r["peak_rss_mb"] > 0
    assert data["budget"]["budget_tokens"] == 1200 and data["prices"]["price_per_train_hour"] == 0.10
    # the tiny model writes no JSON by itself, so the free baselines score nothing; the trained methods decode under
    # the task's (inferred) schema, so every answer is valid JSON and the fields it gets right by chance score
    assert rows["instruction"]["quality"] == rows["few-shot"]["quality"] == 0
    assert not rows["instruction"]["constrained"] and rows["full"]["constrained"] and rows["prefix"]["constrained"]
    assert rows["full"]["format_valid_rate"] == rows["prefix"]["format_valid_rate"] == 1.0
    assert result.recommended in ("prefix", "full")
    md = (out / "report.md").read_text()
    assert "| method |" in md and "break-even requests =" in md and "TODO" not in md
    html = (out / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3 and "http" not in html.replace("http-equiv", "")


def test_cli_compare_in_subprocesses(tiny_model, task_dir, capsys):
    out = task_dir / "cmp"
    code = main(["compare", str(task_dir / "task.yaml"), "--methods", "instruction,prompt", "--out", str(out),
                 "--budget-tokens", "600", "--test-rows", "3", "--model", str(tiny_model), "--precision", "fp32",
                 "--learning-rates", "prompt=0.1", "--eval-batch-size", "2"])  # fmt: skip
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "recommended for quality:" in printed and "prompt" in printed
    result = json.loads((out / "methods" / "prompt" / "result.json").read_text())
    assert result["isolated"] and result["train"]["learning_rate"] == 0.1
    assert json.loads((out / "methods" / "instruction" / "spec.json").read_text())["eval_batch_size"] == 2
    assert result["peak_rss_mb"] >= result["rss_start_mb"] > 0  # measured in its own process, imports included


def test_cli_compare_errors_are_plain(task_dir, capsys):
    code = main(["compare", str(task_dir / "task.yaml"), "--methods", "lora,lora", "--out", str(task_dir / "c")])
    assert code == 2
    assert "listed twice" in capsys.readouterr().err
    with pytest.raises(SystemExit) as exit_:  # a malformed flag value is argparse's usage error
        main(["compare", str(task_dir / "task.yaml"), "--out", str(task_dir / "c"), "--learning-rates", "lora"])
    assert exit_.value.code == 2
    assert "--learning-rates: 'lora' is not NAME=NUMBER" in capsys.readouterr().err


CHROMIUM = Path("/usr/bin/chromium")


@pytest.mark.skipif(not CHROMIUM.exists(), reason="needs Debian's chromium at /usr/bin/chromium (`make install`)")
def test_report_renders_in_a_headless_browser(tiny_model, task_dir):
    sync_api = pytest.importorskip("playwright.sync_api", reason="needs playwright (pip install -e '.[test]')")
    overrides = {"model": str(tiny_model), "precision": "fp32", "batch_size": 8}
    out = task_dir / "cmp"
    compare(task_dir / "task.yaml", _small(["instruction", "few-shot", "prompt", "lora"]), out, overrides)
    errors = []
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 900})
        page.on("console", lambda msg: errors.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        page.goto((out / "report.html").resolve().as_uri())
        page.wait_for_load_state("load")
        assert page.locator("#results tbody tr").count() == 4
        assert page.locator("#results th").first.inner_text() == "method"
        widths = page.eval_on_selector_all("img", "imgs => imgs.map(i => i.complete ? i.naturalWidth : 0)")
        assert len(widths) == 3 and all(w > 0 for w in widths), widths
        shot = os.environ.get("TASKTUNE_REPORT_SCREENSHOT")
        if shot:  # docs/compare-report.png is made this way
            page.screenshot(path=shot, full_page=True)
        browser.close()
    assert errors == []
    shutil.rmtree(out)


@pytest.mark.parametrize("method", ["prompt", "prefix"])
def test_virtual_token_runs_generate_what_the_trained_model_predicts(tiny_model, task_dir, method):
    """Batched, left-padded generation of a prompt- or prefix-tuned run gives the tokens that greedy decoding one
    prompt at a time through the training forward (peft's, no padding, no cache) gives."""
    task = load_task(task_dir / "task.yaml")
    train(task, _cfg(tiny_model, method, learning_rate=0.1), task_dir / "run")
    predictor = Predictor.from_run(task_dir / "run", precision="fp32", constrain=False)  # the reference is free
    scramble_weights(predictor.model)
    predictor.fmt.stop_ids = [len(predictor.fmt.tok) - 1]  # a tiny model stops at once; let it say something
    inputs = ["hi", "the app crashes every time I open the settings page on my phone, please fix", "refund please"]
    batched = predictor.predict(inputs, max_new_tokens=6, batch_size=3)
    for text, pred in zip(inputs, batched, strict=True):
        ids = predictor.prompt_ids(examples_from_inputs([text])[0])
        assert pred.output == greedy_reference(predictor.model, predictor.fmt, ids, 6), text


def test_recommendation_is_none_when_no_method_scored():
    """A tie at zero (the FAQ task after a short run: every method 0% fact accuracy) recommends nothing rather than
    the fastest method "with the highest accuracy 0.000"."""
    rows = [{"name": n, "metric": "fact_accuracy", "quality": q, "latency_ms_mean": lat, "total_cost": 1.0,
             "train_cost": 0.0, "cost_per_request": 1e-4}
            for n, q, lat in (("instruction", 0.0, 900), ("lora", 0.0, 100))]  # fmt: skip
    for priority in ("quality", "latency", "cost"):
        name, reason = recommend(rows, CompareConfig(priority=priority))
        assert name == "none" and "no method scored above 0 on fact_accuracy" in reason
    rows[0]["quality"] = 0.2
    assert recommend(rows, CompareConfig())[0] == "instruction"
    assert recommend(rows, CompareConfig(priority="latency"))[0] == "instruction"  # lora is not within 0.05 of it
    rows[1]["quality"], rows[1]["total_cost"] = 0.18, 0.5
    assert recommend(rows, CompareConfig(priority="latency"))[0] == "lora"
    name, reason = recommend(rows, CompareConfig(priority="cost"))
    assert name == "lora" and "lowest cost" in reason
