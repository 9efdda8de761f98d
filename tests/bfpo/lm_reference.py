"""Reference models for the LM tests: transformers' PyTorch implementations on tiny random configs."""

from pathlib import Path

import numpy as np

ARCHS = ("llama", "qwen2", "mistral")


def random_hf_model(arch: str, seed: int = 0, num_layers: int = 2):
    """A tiny transformers model whose every weight (norm scales and biases included) is random."""
    import torch
    import transformers

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=num_layers, num_attention_heads=8,
                  num_key_value_heads=4, vocab_size=264, rms_norm_eps=1e-6, attn_implementation="eager")
    if arch == "llama":
        cfg = transformers.LlamaConfig(
            **common, tie_word_embeddings=False, max_position_embeddings=256,
            rope_parameters={"rope_type": "llama3", "rope_theta": 10000.0, "factor": 8.0, "low_freq_factor": 1.0,
                             "high_freq_factor": 4.0, "original_max_position_embeddings": 32})
        cls = transformers.LlamaForCausalLM
    elif arch == "qwen2":
        cfg = transformers.Qwen2Config(
            **common, tie_word_embeddings=True, max_position_embeddings=256,
            rope_parameters={"rope_type": "yarn", "rope_theta": 10000.0, "factor": 4.0,
                             "original_max_position_embeddings": 64})
        cls = transformers.Qwen2ForCausalLM
    elif arch == "mistral":
        cfg = transformers.MistralConfig(
            **common, tie_word_embeddings=False, max_position_embeddings=256, sliding_window=4,
            rope_parameters={"rope_type": "linear", "rope_theta": 10000.0, "factor": 2.0})
        cls = transformers.MistralForCausalLM
    else:
        raise ValueError(arch)
    torch.manual_seed(seed)
    model = cls(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            base = 1.0 if "norm" in name else 0.0
            p.copy_(base + 0.1 * torch.randn_like(p))
    return model


def hf_logits(model, tokens: np.ndarray) -> np.ndarray:
    import torch

    with torch.no_grad():
        return model(torch.as_tensor(np.asarray(tokens, np.int64))).logits.float().numpy()


def llama_cpp_permute(w: np.ndarray, heads: int) -> np.ndarray:
    """llama.cpp's converter layout for Q/K rows: per head, interleave the two rotary halves."""
    return w.reshape(heads, 2, w.shape[0] // heads // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


GGUF_NAMES = {
    "input_layernorm.weight": "attn_norm.weight", "post_attention_layernorm.weight": "ffn_norm.weight",
    "self_attn.q_proj.weight": "attn_q.weight", "self_attn.k_proj.weight": "attn_k.weight",
    "self_attn.v_proj.weight": "attn_v.weight", "self_attn.o_proj.weight": "attn_output.weight",
    "mlp.gate_proj.weight": "ffn_gate.weight", "mlp.up_proj.weight": "ffn_up.weight",
    "mlp.down_proj.weight": "ffn_down.weight", "self_attn.q_proj.bias": "attn_q.bias",
    "self_attn.k_proj.bias": "attn_k.bias", "self_attn.v_proj.bias": "attn_v.bias",
}
CHAT_TEMPLATE = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
                 "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")


def tiny_bpe():
    """A byte-level BPE vocabulary: 256 bytes, a few merges, three specials (ids 0-2), 264 tokens in all."""
    from bfpo.tokenize import byte_alphabet

    specials = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
    merges = [("h", "e"), ("l", "l"), ("he", "ll"), ("Ġ", "t"), ("o", "Ġ")]
    tokens = specials + byte_alphabet() + ["".join(m) for m in merges]
    return tokens, [3] * 3 + [1] * (len(tokens) - 3), [" ".join(m) for m in merges]


def write_tiny_gguf(model, path, qtypes: dict[str, str], skip: tuple[str, ...] = ()):
    """Writes a transformers Llama or Qwen2 model as a llama.cpp-style GGUF file (Q/K rows permuted for the
    ``llama`` architecture), each tensor in the quantisation type of the first ``qtypes`` key that its GGUF
    name contains (F32 otherwise)."""
    import gguf
    from gguf import quants

    cfg = model.config
    arch = "qwen2" if cfg.model_type == "qwen2" else "llama"
    w = gguf.GGUFWriter(str(path), arch)
    w.add_block_count(cfg.num_hidden_layers)
    w.add_context_length(cfg.max_position_embeddings)
    w.add_embedding_length(cfg.hidden_size)
    w.add_feed_forward_length(cfg.intermediate_size)
    w.add_head_count(cfg.num_attention_heads)
    w.add_head_count_kv(cfg.num_key_value_heads)
    w.add_rope_freq_base(cfg.rope_parameters["rope_theta"])
    w.add_layer_norm_rms_eps(cfg.rms_norm_eps)
    w.add_rope_dimension_count(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)
    w.add_vocab_size(cfg.vocab_size)
    tokens, types, merges = tiny_bpe()
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    w.add_chat_template(CHAT_TEMPLATE)
    for name, tensor in model.state_dict().items():
        x = tensor.float().numpy()
        if name == "model.embed_tokens.weight":
            g = "token_embd.weight"
        elif name == "model.norm.weight":
            g = "output_norm.weight"
        elif name == "lm_head.weight":
            g = "output.weight"
        else:
            parts = name.split(".")
            g = f"blk.{parts[2]}." + GGUF_NAMES[".".join(parts[3:])]
        if g in skip or (name == "lm_head.weight" and cfg.tie_word_embeddings):
            continue
        if arch == "qwen2":
            pass
        elif g.endswith("attn_q.weight"):
            x = llama_cpp_permute(x, cfg.num_attention_heads)
        elif g.endswith("attn_k.weight"):
            x = llama_cpp_permute(x, cfg.num_key_value_heads)
        kind = next((q for key, q in qtypes.items() if key in g), "F32")
        qtype = getattr(gguf.GGMLQuantizationType, kind)
        if kind == "F32":
            w.add_tensor(g, x.astype(np.float32))
        else:
            data = quants.quantize(x, qtype)
            w.add_tensor(g, data, raw_shape=data.shape, raw_dtype=qtype)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def transformers_from_gguf(path):
    """transformers' own reading of a GGUF file (its dequantisation and Q/K un-permutation) as a PyTorch model.

    ``from_pretrained(gguf_file=...)`` needs the accelerate package; without it the same reader is called
    directly and the tensors are loaded with ``load_state_dict``.
    """
    import importlib.util

    import torch
    import transformers
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    path = str(path)
    if importlib.util.find_spec("accelerate") is not None:
        return transformers.AutoModelForCausalLM.from_pretrained(
            str(Path(path).parent), gguf_file=Path(path).name, attn_implementation="eager").eval()
    config = transformers.AutoConfig.from_pretrained(str(Path(path).parent), gguf_file=Path(path).name)
    config._attn_implementation = "eager"
    model = transformers.AutoModelForCausalLM.from_config(config).eval()
    tensors = load_gguf_checkpoint(path, return_tensors=True, model_to_load=model)["tensors"]
    state = {k: torch.as_tensor(np.asarray(v)) for k, v in tensors.items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not unexpected and all("lm_head" in m for m in missing), (missing, unexpected)
    if missing:
        model.tie_weights()
    return model
