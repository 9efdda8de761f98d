"""The Llama-family causal LM: config and presets, the NNX model, and loaders for local checkpoints."""

from bfpo.model.config import LlamaConfig, RopeScaling
from bfpo.model.execution import ExecutionConfig
from bfpo.model.llama import KVCache, LlamaForCausalLM, init_params

__all__ = ["ExecutionConfig", "KVCache", "LlamaConfig", "LlamaForCausalLM", "RopeScaling", "init_params"]
