"""A run as a GGUF file for llama.cpp, Ollama and LM Studio: `tasktune export RUN --format gguf --out DIR`.

The file is written with the `gguf` package's writer, tensor-name maps and quantisers. What no library does for us
is the glue from a trained Hugging Face state dict back to GGUF: llama.cpp's own converter (convert_hf_to_gguf.py)
is a script in its repository, not in the `gguf` package, so the few rules it applies per architecture are repeated
here (Llama's rotary Q/K row order, Gemma's norm offset), and each is checked by the parity run below.

Metadata comes from the base model's own GGUF file where there is one (every built-in model and `--model x.gguf`):
its architecture and tokenizer fields are copied as they are, so the exported file tokenizes exactly as the base
did. Two fields are the run's own: `tokenizer.chat_template` is the template the run was trained with (a trained
`system_prompt` is part of it), and the end-of-turn token is written as EOS and EOT, so a plain llama.cpp chat stops
where `tasktune predict` stops. A base given as a Hugging Face folder gets its metadata from config.json and
tokenizer.json (Llama and Qwen2 layouts with a byte-level BPE tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from tasktune.errors import TaskTuneError

QUANTS = ("f32", "f16", "bf16", "q8_0")


@dataclass(frozen=True)
class Arch:
    name: str  # GGUF architecture name
    permute_qk: bool = False  # llama.cpp's Llama keeps rotary pairs interleaved; HF keeps them in halves
    norm_offset: float = 0.0  # Gemma scales by (1 + w): GGUF stores 1 + w, transformers w


# Keyed by transformers' model_type.
ARCHS = {
    "llama": Arch("llama", permute_qk=True),
    "qwen2": Arch("qwen2"),
    "gemma3_text": Arch("gemma3", norm_offset=1.0),
    "gemma3": Arch("gemma3", norm_offset=1.0),
}


def arch_for(config) -> Arch:
    arch = ARCHS.get(config.model_type)
    if arch is None:
        raise TaskTuneError(
            f"GGUF export does not know the {config.model_type!r} architecture (it knows {', '.join(sorted(ARCHS))})",
            "export a Hugging Face folder (`--format hf`) and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    return arch


def _qtype(quant: str, shape: tuple[int, ...]):
    """The GGML type of one tensor: vectors (norms, biases) stay f32, as llama.cpp's converter keeps them."""
    from gguf import GGMLQuantizationType as T

    if len(shape) < 2 or quant == "f32":
        return T.F32
    if quant == "q8_0":
        return T.Q8_0 if shape[-1] % 32 == 0 else T.F16  # q8_0 packs rows in blocks of 32
    return {"f16": T.F16, "bf16": T.BF16}[quant]


def _file_type(quant: str):
    from gguf import LlamaFileType as F

    return {"f32": F.ALL_F32, "f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0}[quant]


def _permute(w: np.ndarray, n_head: int) -> np.ndarray:
    """HF's rotary layout (halves) to llama.cpp's (interleaved pairs): convert_hf_to_gguf's LlamaModel.permute."""
    return w.reshape(n_head, 2, w.shape[0] // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def gguf_tensors(state: dict, config, arch: Arch, *, lora: bool = False):
    """(GGUF name, float32 array) for each tensor of an HF state dict, in llama.cpp's layout.

    `lora`: the state dict holds PEFT `lora_A`/`lora_B` pairs; only B's rows take the rotary permutation (the
    permuted product B·A equals permuting B)."""
    import gguf

    model_arch = next(k for k, v in gguf.MODEL_ARCH_NAMES.items() if v == arch.name)
    names = gguf.get_tensor_name_map(model_arch, config.num_hidden_layers)
    tied = getattr(config, "tie_word_embeddings", False)
    for hf_name, tensor in state.items():
        suffix = ""
        if lora:
            hf_name, suffix = _lora_name(hf_name)
        if tied and hf_name == "lm_head.weight":
            continue  # llama.cpp reads the output projection from token_embd when the file has no output.weight
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if name is None:
            raise TaskTuneError(
                f"no GGUF name for tensor {hf_name!r} of a {config.model_type} model",
                "export a Hugging Face folder (`--format hf`) and convert it with llama.cpp's convert_hf_to_gguf.py",
            )
        data = tensor.detach().float().cpu().numpy()
        if arch.permute_qk and suffix != ".lora_a" and hf_name.endswith(("q_proj.weight", "k_proj.weight")):
            heads = config.num_attention_heads
            if hf_name.endswith("k_proj.weight"):
                heads = getattr(config, "num_key_value_heads", None) or heads
            data = _permute(data, heads)
        if arch.norm_offset and hf_name.endswith("norm.weight"):
            data = data + arch.norm_offset
        yield name + suffix, data


def _lora_name(peft_name: str) -> tuple[str, str]:
    """`base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight` → (`model.layers.0.self_attn.q_proj.weight`,
    `.lora_a`): llama.cpp names an adapter's tensors after the weight they change."""
    stem = peft_name.removeprefix("base_model.model.")
    for part, suffix in ((".lora_A.weight", ".lora_a"), (".lora_B.weight", ".lora_b")):
        if stem.endswith(part):
            return stem[: -len(part)] + ".weight", suffix
    raise TaskTuneError(
        f"the adapter holds {peft_name!r}, which is not a LoRA A/B matrix",
        "a GGUF LoRA holds only LoRA matrices: pass --merge to export the merged model instead",
    )


# --- metadata ---------------------------------------------------------------------------------------------------
_SKIP_FROM_BASE = ("GGUF.", "general.architecture", "general.file_type", "general.quantization_version")


def copy_metadata(writer, base_gguf: Path) -> None:
    """Every key of the base's GGUF file but the writer's own (architecture, file type): hyper-parameters and tokenizer
    as the base's publisher wrote them."""
    import gguf

    reader = gguf.GGUFReader(base_gguf)
    for key, field in reader.fields.items():
        if key.startswith(_SKIP_FROM_BASE):
            continue
        vtype = field.types[0]
        sub = field.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(key, field.contents(), vtype, sub)


def config_metadata(writer, config) -> None:
    """Hyper-parameters from an HF config (Llama and Qwen2 layouts)."""
    rope = getattr(config, "rope_parameters", None) or {}
    if (rope.get("rope_type") or "default") != "default":
        raise TaskTuneError(
            f"the base model uses {rope['rope_type']!r} rotary scaling, which tasktune's GGUF writer does not carry",
            "export a Hugging Face folder (`--format hf`) and convert it with llama.cpp's convert_hf_to_gguf.py",
        )
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(getattr(config, "num_key_value_heads", None) or config.num_attention_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    writer.add_rope_freq_base(float(rope.get("rope_theta", getattr(config, "rope_theta", 10000.0))))
    writer.add_rope_dimension_count(head_dim)
    writer.add_vocab_size(config.vocab_size)


def tokenizer_metadata(writer, tok, folder: Path) -> None:
    """A byte-level BPE tokenizer (GPT-2 style, the tokenizer.json of Llama-3, Qwen2 and SmolLM models)."""
    import json

    import gguf

    path = folder / "tokenizer.json"
    spec = json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    pre = spec.get("pre_tokenizer") or {}
    if spec.get("model", {}).get("type") != "BPE" or pre.get("type") != "ByteLevel" or not pre.get("use_regex", True):
        raise TaskTuneError(
            f"the tokenizer in {folder} is not a plain byte-level BPE (pre-tokenizer {pre.get('type')!r}), and its"
            " base model has no GGUF file to copy the tokenizer from",
            "export a Hugging Face folder (`--format hf`) and convert it with llama.cpp's convert_hf_to_gguf.py,"
            " which knows the pre-tokenizers of published models",
        )
    added = tok.added_tokens_decoder
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("gpt-2")  # GPT-2's split regex: what a bare ByteLevel pre-tokenizer applies
    writer.add_token_list([tok.convert_ids_to_tokens(i) for i in range(len(tok))])
    writer.add_token_types(
        [
            (gguf.TokenType.CONTROL if added[i].special else gguf.TokenType.USER_DEFINED)
            if i in added
            else gguf.TokenType.NORMAL
            for i in range(len(tok))
        ]
    )
    special = gguf.SpecialVocab(folder, load_merges=True, n_vocab=len(tok))
    special.chat_template = None  # the run's own template is written by the caller
    special.add_to_gguf(writer, quiet=True)
    # tasktune's prompts are the rendered template and nothing else (a template that wants BOS writes it itself)
    _drop_key(writer, gguf.Keys.Tokenizer.ADD_BOS)
    writer.add_add_bos_token(False)


def set_turn_end(writer, template: str, end_id: int) -> None:
    """The run's chat template, and its end-of-turn token as EOS and EOT: where a llama.cpp chat stops."""
    from gguf import Keys

    for key in (Keys.Tokenizer.CHAT_TEMPLATE, Keys.Tokenizer.EOS_ID, Keys.Tokenizer.EOT_ID):
        _drop_key(writer, key)
    writer.add_chat_template(template)
    writer.add_eos_token_id(end_id)
    writer.add_eot_token_id(end_id)


def _drop_key(writer, key: str) -> None:
    for kv in writer.kv_data:
        kv.pop(key, None)


def read_turn_end(path: Path) -> dict:
    """What a GGUF file says about its chat: template, EOS, EOT and whether BOS is added (read back after writing)."""
    import gguf

    reader = gguf.GGUFReader(path)

    def value(key):
        field = reader.fields.get(key)
        return None if field is None else field.contents()

    return {
        "chat_template": value(gguf.Keys.Tokenizer.CHAT_TEMPLATE),
        "eos_token_id": value(gguf.Keys.Tokenizer.EOS_ID),
        "eot_token_id": value(gguf.Keys.Tokenizer.EOT_ID),
        "add_bos_token": value(gguf.Keys.Tokenizer.ADD_BOS),
    }


# --- writing ----------------------------------------------------------------------------------------------------
def write_model(
    path: Path,
    state: dict,
    config,
    tok,
    tok_folder: Path,
    *,
    template: str,
    end_id: int,
    quant: str,
    base_gguf: Path | None,
    name: str,
) -> None:
    """One GGUF model file at `path` (the caller gives a temporary folder: the file is renamed into place)."""
    import gguf

    arch = arch_for(config)
    writer = gguf.GGUFWriter(path, arch.name)
    if base_gguf is not None:
        copy_metadata(writer, base_gguf)
    elif arch.name == "gemma3":
        raise TaskTuneError(
            "GGUF export of a Gemma 3 model needs its base model's GGUF file (its hyper-parameters come from there)",
            "train from the .gguf file (--model x.gguf), or export --format hf and convert with convert_hf_to_gguf.py",
        )
    else:
        config_metadata(writer, config)
        tokenizer_metadata(writer, tok, tok_folder)
    _drop_key(writer, gguf.Keys.General.NAME)
    _drop_key(writer, gguf.Keys.General.TYPE)
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.MODEL)
    writer.add_file_type(_file_type(quant))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    set_turn_end(writer, template, end_id)
    for gname, data in gguf_tensors(state, config, arch):
        qtype = _qtype(quant, data.shape)
        writer.add_tensor(gname, gguf.quants.quantize(data, qtype), raw_dtype=qtype)
    _finish(writer)


def write_lora(path: Path, state: dict, config, *, alpha: float, base_gguf: Path, name: str) -> None:
    """A GGUF LoRA adapter for the base's own GGUF file (llama.cpp `--lora`, Ollama `ADAPTER`), in f32: its matrices
    are small, and rounding them would only cost parity."""
    import gguf

    arch = arch_for(config)
    writer = gguf.GGUFWriter(path, arch.name)
    writer.add_name(name)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, float(alpha))
    writer.add_string("general.base_model.0.name", base_gguf.name)
    for gname, data in gguf_tensors(state, config, arch, lora=True):
        writer.add_tensor(gname, data.astype(np.float32))
    _finish(writer)


def _finish(writer) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
