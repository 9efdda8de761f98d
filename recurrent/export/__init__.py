"""Compiled models written for other tools: the chain checkpoint (``chain_checkpoint``) and a transformers
``MambaForCausalLM`` directory (``hf_mamba``)."""
