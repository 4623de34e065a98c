"""`tasktune export --format gguf`: a tiny run written as GGUF and answered in llama.cpp itself (node-llama-cpp), with
the same tokens as transformers; planted errors fail the parity check and leave the output folder as it was."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tasktune import gguf_export, llamacpp
from tasktune.cli import main
from tasktune.config import TrainConfig, load_task
from tasktune.errors import TaskTuneError
from tasktune.export import export_gguf
from tasktune.train import train

pytestmark = pytest.mark.skipif(not llamacpp.available(), reason=f"llama.cpp is not installed: {llamacpp.INSTALL}")


def _base_gguf(tiny_model, path):
    """The tiny model written as a GGUF file by tasktune's own writer (its config and tokenizer.json path)."""
    from tasktune.models import load_base

    model, tok = load_base(tiny_model)
    gguf_export.write_model(path, model.state_dict(), model.config, tok, tiny_model, template=tok.chat_template,
                            end_id=tok.eos_token_id, quant="f32", base_gguf=None, name="tiny")  # fmt: skip
    return path


@pytest.fixture(scope="module")
def runs(tiny_model, tmp_path_factory):
    """A full run of the tiny model from its Hugging Face folder, trained until its answers end at <|im_end|>, and
    LoRA runs from the folder and from the same model as a GGUF file."""
    from tests.tiny import make_rows, write_jsonl

    root = tmp_path_factory.mktemp("gguf-runs")
    write_jsonl(root / "train.jsonl", make_rows(48, seed=1))
    write_jsonl(root / "eval.jsonl", make_rows(8, seed=2))
    (root / "task.yaml").write_text(
        "name: tiny\ninstruction: Classify the message.\noutput: {kind: json}\n"
        "data: {train: train.jsonl, eval: eval.jsonl}\n",
        encoding="utf-8",
    )
    task = load_task(root / "task.yaml")
    base = _base_gguf(tiny_model, root / "tiny.gguf")
    plan = {
        "full": (tiny_model, "full", 1e-2, 120),
        "lora": (base, "lora", 2e-3, 40),
        "lora-hf": (tiny_model, "lora", 2e-3, 2),
    }
    for name, (model, method, lr, steps) in plan.items():
        cfg = TrainConfig(model=str(model), method=method, max_steps=steps, batch_size=8, learning_rate=lr,
                          precision="fp32", system_prompt="You sort tickets.")  # fmt: skip
        train(task, cfg, root / name)
    return {name: root / name for name in plan} | {"base": base}


def test_the_writer_lays_tensors_out_as_transformers_gguf_reader_reads_them(tiny_model, tmp_path, monkeypatch):
    """Written by tasktune, read back by transformers' own GGUF loader (an independent reader with its own reverse
    rotary permutation): the same weights to the bit, the same tokens, the same chat template."""
    from tasktune.models import load_base, resolve_model

    monkeypatch.setenv("TASKTUNE_HOME", str(tmp_path / "home"))
    model, tok = load_base(tiny_model)
    back, back_tok = load_base(resolve_model(str(_base_gguf(tiny_model, tmp_path / "tiny.gguf"))).path)
    for name, tensor in model.state_dict().items():
        assert (back.state_dict()[name] == tensor).all(), name
    text = 'urgent refund {"kind": "billing"}'
    assert back_tok(text)["input_ids"] == tok(text)["input_ids"]
    assert back_tok.chat_template == tok.chat_template


def test_full_run_in_f32_answers_in_llamacpp_token_for_token(runs, tmp_path):
    result = export_gguf(runs["full"], tmp_path / "out", quant="f32")
    assert result.parity_rows == 8
    assert result.prompt_agreement == 1.0  # the file's template, rendered in JS, tokenised by llama.cpp: the same ids
    assert result.parity_agreement == 1.0
    assert result.stops_at_turn_end == 1.0
    meta = gguf_export.read_turn_end(tmp_path / "out" / "model.gguf")
    assert "You sort tickets." in meta["chat_template"]  # the trained system prompt travels in the template
    assert meta["eos_token_id"] == meta["eot_token_id"] == 2  # <|im_end|>
    report = json.loads((tmp_path / "out" / "tasktune-export.json").read_text())
    assert report["format"] == "gguf" and report["schema"] == "schema.json"


def test_quantised_files_are_smaller_and_still_agree(runs, tmp_path):
    sizes = {}
    for quant in ("f16", "q8_0"):
        r = export_gguf(runs["full"], tmp_path / quant, quant=quant)
        assert r.prompt_agreement == 1.0 and r.stops_at_turn_end == 1.0
        assert r.parity_agreement >= 0.75
        sizes[quant] = r.size_bytes
    assert sizes["q8_0"] < sizes["f16"]


def test_lora_run_on_a_gguf_base_exports_an_adapter_that_llamacpp_applies(runs, tmp_path):
    r = export_gguf(runs["lora"], tmp_path / "adapter")
    assert r.file == "adapter.gguf" and r.base_gguf == str(runs["base"])
    # the base file plus the adapter, in llama.cpp, answer as the unmerged adapter does in transformers
    assert r.prompt_agreement == 1.0 and r.parity_agreement == 1.0
    assert not (tmp_path / "adapter" / "model.gguf").exists()


def test_lora_run_merged_from_a_gguf_base_keeps_the_bases_tokenizer_fields(runs, tmp_path):
    import gguf

    r = export_gguf(runs["lora"], tmp_path / "merged", quant="f32", merge=True)
    assert r.prompt_agreement == 1.0 and r.parity_agreement == 1.0
    fields = gguf.GGUFReader(tmp_path / "merged" / "model.gguf").fields
    assert fields["general.type"].contents() == "model" and fields["general.name"].contents() == "tiny-lora"
    assert fields["tokenizer.ggml.pre"].contents() == "gpt-2"  # copied from the base's file


def test_an_adapter_needs_a_base_gguf_file(runs, tmp_path):
    with pytest.raises(TaskTuneError, match="base model's GGUF file"):
        export_gguf(runs["lora-hf"], tmp_path / "adapter")
    assert not (tmp_path / "adapter").exists()


def test_lora_tensors_take_the_rotary_permutation_on_b_only(tiny_model):
    """The merged weight of permuted factors equals the permuted merged weight: B·A with B's rows permuted."""
    import torch
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(tiny_model)
    arch = gguf_export.ARCHS["llama"]
    a, b = torch.randn(4, config.hidden_size), torch.randn(config.hidden_size, 4)
    state = {"base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight": a,
             "base_model.model.model.layers.0.self_attn.q_proj.lora_B.weight": b}  # fmt: skip
    got = dict(gguf_export.gguf_tensors(state, config, arch, lora=True))
    merged = dict(gguf_export.gguf_tensors({"model.layers.0.self_attn.q_proj.weight": b @ a}, config, arch))
    assert set(got) == {"blk.0.attn_q.weight.lora_a", "blk.0.attn_q.weight.lora_b"}
    np.testing.assert_allclose(
        got["blk.0.attn_q.weight.lora_b"] @ got["blk.0.attn_q.weight.lora_a"], merged["blk.0.attn_q.weight"], atol=1e-5
    )


def _planted(monkeypatch, what: str):
    real = gguf_export.set_turn_end

    def broken(writer, template, end_id):
        if what == "template":
            real(writer, template, end_id)
            gguf_export._drop_key(writer, "tokenizer.chat_template")
        else:  # the generic EOS in place of the end-of-turn token
            real(writer, template, 0)

    monkeypatch.setattr(gguf_export, "set_turn_end", broken)


@pytest.mark.parametrize("what", ["template", "eos"])
def test_a_planted_error_fails_and_leaves_the_folder_as_it_was(runs, tmp_path, monkeypatch, what):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.txt").write_text("keep me")
    _planted(monkeypatch, what)
    with pytest.raises(TaskTuneError) as e:
        export_gguf(runs["full"], out, quant="f32")
    assert {"template": "chat_template", "eos": "EOS id 0"}[what] in str(e.value)
    assert sorted(p.name for p in out.iterdir()) == ["earlier.txt"]
    assert not list(tmp_path.glob(".out.*"))  # the temporary folder is gone too


def test_cli_writes_an_ollama_modelfile_whose_template_is_the_runs_prompt(runs, tmp_path, capsys):
    from transformers import AutoTokenizer

    from tasktune.render import ChatFormat

    out = tmp_path / "out"
    assert main(["export", str(runs["full"]), "--out", str(out), "--format", "gguf", "--quant", "q8_0",
                 "--ollama"]) == 0  # fmt: skip
    said = capsys.readouterr().out
    assert "greedy answers" in said and "ollama create" in said
    text = (out / "Modelfile").read_text()
    assert text.startswith("FROM ./model.gguf\n")
    assert 'PARAMETER stop "<|im_end|>"' in text
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    bare = template.split("{{ else }}", 1)[1].removesuffix("{{ end }}")
    fmt = ChatFormat(AutoTokenizer.from_pretrained(runs["full"] / "model"))
    assert bare.replace("{{ .Prompt }}", "ticket") == fmt.prompt_text([{"role": "user", "content": "ticket"}])


def _scrambled(kind: str, tiny_model, folder):
    """The tiny model as a Llama or a Qwen2 (q/k/v biases), with large random weights: its answers then depend on
    every token and every weight, so a tensor in the wrong layout or place changes them."""
    import shutil

    import torch
    from transformers import AutoConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

    from tests.tiny import scramble_weights

    llama = AutoConfig.from_pretrained(tiny_model)
    if kind == "llama":
        model = LlamaForCausalLM(llama)
    else:
        keep = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                "num_key_value_heads", "max_position_embeddings", "tie_word_embeddings", "bos_token_id",
                "eos_token_id", "pad_token_id")  # fmt: skip
        model = Qwen2ForCausalLM(Qwen2Config(**{k: getattr(llama, k) for k in keep}))
    scramble_weights(model, seed=1)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("bias"):
                p.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    model.save_pretrained(folder)
    for f in tiny_model.iterdir():
        if f.name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(f, folder / f.name)
    return folder


@pytest.mark.parametrize("kind", ["llama", "qwen2"])
def test_an_architecture_answers_in_llamacpp_with_the_tokens_of_transformers(kind, tiny_model, tmp_path):
    import torch

    from tasktune.models import load_base
    from tasktune.render import ChatFormat

    model, tok = load_base(_scrambled(kind, tiny_model, tmp_path / kind))
    fmt = ChatFormat(tok)
    gguf_export.write_model(tmp_path / "m.gguf", model.state_dict(), model.config, tok, tmp_path / kind,
                            template=fmt.template, end_id=fmt.end_ids[-1], quant="f32", base_gguf=None,
                            name=kind)  # fmt: skip
    conversations = [[{"role": "user", "content": text}] for text in ("urgent refund", "the app crashes", "hi")]
    answers, _ = llamacpp.answer(tmp_path / "m.gguf", conversations, 12)
    for conv, got in zip(conversations, answers, strict=True):
        prompt = fmt.encode_prompt(conv)
        assert list(got.prompt_tokens) == prompt
        # Each token llama.cpp chose, fed back to transformers, is transformers' greedy choice too, up to float
        # rounding (large random weights leave near-ties that the two engines' sums break differently; a tensor in
        # the wrong layout misses by whole logits).
        ids = list(prompt)
        with torch.no_grad():
            for token in got.tokens:
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
                assert float(logits.max() - logits[token]) < 0.05, (conv, len(ids) - len(prompt))
                ids.append(token)
            if got.stopped == "eog":  # llama.cpp ended the turn at a special end token: one of transformers' top too
                logits = model(input_ids=torch.tensor([ids])).logits[0, -1]
                assert float(logits.max() - logits[tok.all_special_ids].max()) < 0.05, conv
