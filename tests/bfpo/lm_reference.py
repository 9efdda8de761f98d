"""Reference models for the LM tests: transformers' PyTorch implementations on tiny random configs."""

import numpy as np

ARCHS = ("llama", "qwen2", "mistral")


def random_hf_model(arch: str, seed: int = 0):
    """A tiny transformers model whose every weight (norm scales and biases included) is random."""
    import torch
    import transformers

    common = dict(hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=8,
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
