"""The chat launcher on the 8-device mesh (weights split eight ways, the KV cache split over the batch, three
prompts padded to eight rows) answers exactly as the same model does on one device."""

import jax

from bfpo.generate import SamplingConfig, generate_chat
from bfpo.model.load_gguf import load_gguf, smollm2_gguf_path, tokenizer_from_gguf
from experiments import lm_generate
from experiments.configs.lm_generate import LMGenerateConfig
from experiments.run_dir import LaunchConfig
from runtime import make_mesh
from runtime.sharding import activate


def test_sharded_greedy_replies_equal_the_single_device_ones(tmp_path):
    cfg = LMGenerateConfig(run=LaunchConfig(out_dir=str(tmp_path)), max_new_tokens=6)
    summary = lm_generate.main(cfg)
    path = smollm2_gguf_path()
    one_device = make_mesh({"data": 1}, devices=jax.devices()[:1])
    model = load_gguf(path, one_device)
    with activate(one_device):
        expected = generate_chat(model, tokenizer_from_gguf(path),
                                 [[{"role": "user", "content": p}] for p in cfg.prompts],
                                 SamplingConfig(max_new_tokens=6), jax.random.PRNGKey(cfg.seed))
    assert summary.replies == expected and all(summary.replies)
    assert (tmp_path / "replies.jsonl").read_text().count("\n") == len(cfg.prompts)
