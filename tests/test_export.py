"""`tasktune export`: standalone folders that plain transformers loads, a parity check that can fail, refusals."""

from __future__ import annotations

import json

import pytest
import torch

from tasktune.cli import main
from tasktune.config import TrainConfig, load_task
from tasktune.errors import TaskTuneError
from tasktune.export import export
from tasktune.predict import Predictor
from tasktune.train import train


def _train(task_dir, tiny_model, out, method: str, steps: int = 20, **settings):
    task = load_task(task_dir / "task.yaml")
    lr = {"lora": 2e-2, "full": 3e-3, "prefix": 1e-2}[method]
    cfg = TrainConfig(model=str(tiny_model), method=method, max_steps=steps, batch_size=8, learning_rate=lr,
                      precision="fp32", **settings)  # fmt: skip
    train(task, cfg, out)
    return out


def _plain_answer(folder, text: str) -> str:
    """Answer the way a user of plain transformers would: chat template, generate with the folder's config."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForCausalLM.from_pretrained(folder)
    ids = tok.apply_chat_template([{"role": "user", "content": text}], add_generation_prompt=True, return_tensors="pt")
    ids = ids["input_ids"] if not torch.is_tensor(ids) else ids
    out = model.generate(ids, attention_mask=torch.ones_like(ids))  # greedy, eos and length from generation_config
    return tok.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def test_lora_merge_export_passes_parity_and_loads_with_plain_transformers(task_dir, tiny_model, tmp_path, capsys):
    run = _train(task_dir, tiny_model, tmp_path / "run", "lora")
    out = tmp_path / "exported"
    assert main(["export", str(run), "--out", str(out), "--merge"]) == 0
    assert "parity 100% on 8 eval inputs" in capsys.readouterr().out
    assert (out / "model.safetensors").is_file() and (out / "tokenizer.json").is_file()
    assert not (out / "adapter_config.json").exists()  # merged: plain weights, no peft needed
    gen = json.loads((out / "generation_config.json").read_text())
    assert gen["eos_token_id"] == 2  # <|im_end|>, which ends an answer in this chat template
    report = json.loads((out / "tasktune-export.json").read_text())
    assert report["parity_agreement"] == 1.0 and report["merged"] is True
    # parity is about the weights: plain transformers decodes free, so the run is read free too
    predicted = (
        Predictor.from_run(run, precision="fp32", constrain=False)
        .predict(["urgent the app crashes on login"])[0]
        .output
    )
    assert _plain_answer(out, "urgent the app crashes on login") == predicted


def test_a_runs_system_prompt_reaches_predict_and_the_exported_template(task_dir, tiny_model, tmp_path):
    """Trained with an empty system turn: tasktune's prompts and plain transformers' prompts on the exported folder
    are the training prefix, without the template's default system prompt."""
    from transformers import AutoTokenizer

    from tasktune.batching import encode_rows
    from tasktune.data import read_examples
    from tasktune.models import load_base
    from tasktune.render import ChatFormat

    run = _train(task_dir, tiny_model, tmp_path / "run", "lora", system_prompt="")
    ex = read_examples(task_dir / "train.jsonl")[0]
    _, base_tok = load_base(tiny_model)
    (trained,), _ = encode_rows(ChatFormat(base_tok, ""), [ex], None, 1024)
    prefix = trained.input_ids[: next(i for i, t in enumerate(trained.labels) if t != -100)]
    predictor = Predictor.from_run(run, precision="fp32", constrain=False)
    assert predictor.prompt_ids(ex) == prefix
    assert "SmolLM" not in base_tok.decode(prefix)
    assert len(prefix) < len(ChatFormat(base_tok).encode_prompt(ex.prompt_messages))

    out = tmp_path / "exported"
    export(run, out, merge=True)
    plain = AutoTokenizer.from_pretrained(out).apply_chat_template(ex.prompt_messages, add_generation_prompt=True)
    assert list(plain if isinstance(plain, list) else plain["input_ids"]) == prefix
    text = "urgent the app crashes on login"
    assert _plain_answer(out, text) == predictor.predict([text])[0].output


def test_parity_check_catches_a_wrong_export_and_keeps_the_old_folder(task_dir, tiny_model, tmp_path, monkeypatch):
    import tasktune.export as export_module

    def broken_merge(strategy, model):  # a planted bug: the adapter is dropped instead of folded in
        return model.unload()

    run = _train(task_dir, tiny_model, tmp_path / "run", "lora")
    out = tmp_path / "exported"
    out.mkdir()
    (out / "keep.txt").write_text("an earlier export")
    monkeypatch.setattr(export_module, "merge_weights", broken_merge)
    with pytest.raises(TaskTuneError, match=r"parity check failed: .* on \d of 8 eval inputs"):
        export(run, out, merge=True)
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".exported")]  # no temp folder left behind


def test_full_run_export(task_dir, tiny_model, tmp_path):
    run = _train(task_dir, tiny_model, tmp_path / "run", "full", steps=10)
    result = export(run, tmp_path / "exported")
    assert result.parity_agreement == 1.0 and result.parity_rows == 8 and not result.merged
    predicted = (
        Predictor.from_run(run, precision="fp32", constrain=False).predict(["please refund my invoice"])[0].output
    )
    assert _plain_answer(tmp_path / "exported", "please refund my invoice") == predicted


def test_exports_that_cannot_be_standalone_are_refused_with_the_fix(task_dir, tiny_model, tmp_path, capsys):
    prefix = _train(task_dir, tiny_model, tmp_path / "prefix", "prefix", steps=1)
    assert main(["export", str(prefix), "--out", str(tmp_path / "p-out"), "--merge"]) == 2
    err = capsys.readouterr().err
    assert "a prefix run cannot be merged into the model weights" in err and "--method lora" in err
    assert "Traceback" not in err and not (tmp_path / "p-out").exists()

    lora = _train(task_dir, tiny_model, tmp_path / "lora", "lora", steps=1)
    assert main(["export", str(lora), "--out", str(tmp_path / "l-out")]) == 2
    assert "pass --merge" in capsys.readouterr().err
    assert main(["export", str(lora), "--out", str(lora / "inside"), "--merge"]) == 2
    assert "inside the run folder" in capsys.readouterr().err
