"""r1jax: the DeepSeek-R1 training recipe in JAX/Flax."""

import setuptools

setuptools.setup(
    name="r1jax",
    version="0.1.0",
    description="DeepSeek-R1 training recipe (GRPO, PPO, rule rewards, SFT) in JAX/Flax",
    long_description=open("README.md", encoding="utf-8").read(),
    long_description_content_type="text/markdown",
    python_requires=">=3.11",  # jax 0.10, flax, orbax and grain need 3.11
    packages=setuptools.find_packages(include=["r1jax", "r1jax.*"]),
    # The small world's base model (configs/r1_zero.py:tiny starts from it).
    package_data={"r1jax": ["assets/world_base/*", "assets/world_student/*"]},
    # Ranges admit jax 0.10 (CPU, Python 3.11) and jax 0.11 (GPU, Python 3.12).
    install_requires=[
        "jax>=0.10,<0.12",
        "flax>=0.12,<0.14",
        "optax>=0.2.5,<0.3",
        "orbax-checkpoint>=0.11,<0.14",
        "grain>=0.2.12,<0.3",
        "ml-collections>=1.0,<2",
        "sentencepiece>=0.2,<0.3",
        "tokenizers>=0.20,<1",
        "safetensors>=0.4,<1",
        "numpy>=1.26,<3",
        "absl-py>=2.0",
        "math-verify>=0.7,<1",
        "tensorboardX>=2.6,<3",
        "matplotlib>=3.8",
        "tqdm>=4.60",
    ],
    extras_require={
        "test": [
            "pytest>=8",
            "pytest-timeout",
            "pytest-xdist>=3",
            "torch==2.13.0",
            "transformers>=4.50",
            "chex>=0.1.88",
        ],
        "hf": ["transformers>=4.50"],
        "bench": ["torch==2.13.0", "transformers>=4.50", "trl"],
    },
    entry_points={"console_scripts": ["r1jax=r1jax.main:run"]},
)
