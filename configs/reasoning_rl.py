"""Reasoning RL (R1 stage 2): GRPO from the cold-start model with accuracy, format and the
language-consistency reward (share of the thought's words in the prompt's language).

Variants:
- tiny: the small world on a CPU (a few minutes), from a configs/cold_start.py:tiny run:
    r1jax --config=configs/reasoning_rl.py:tiny --workdir=runs/reasoning-rl \
        --config.model.init_from=runs/cold-start
- qwen2.5-1.5b / qwen2.5-7b-tpu: R1's settings (lr 3e-6, KL 0.001, 16 samples per prompt,
  T 1.0, 32 prompts a step, reference reset every 400 steps; the language reward is added
  unweighted, as the paper sums the rewards):
    r1jax --config=configs/reasoning_rl.py:qwen2.5-1.5b --workdir=runs/reasoning-rl-1.5b \
        --config.model.init_from=runs/cold-start-1.5b
"""

import ml_collections

from configs import base, grpo, r1_zero

VARIANTS = ("tiny", "qwen2.5-1.5b", "qwen2.5-7b-tpu")
DEFAULT_INIT = "runs/cold-start"  # where configs/cold_start.py's docstring puts its run


def tiny(c: ml_collections.ConfigDict) -> None:
    """configs/r1_zero.py:tiny from the cold-start model, plus the language reward."""
    r1_zero.tiny(c)
    c.model.init_from = DEFAULT_INIT
    c.rl.rewards = ml_collections.ConfigDict({"accuracy": 1.0, "format": 0.5, "language": 0.5})
    c.rl.max_new_tokens = 80  # cold-start answers end their thought with a summary line
    c.eval.max_new_tokens = 80
    c.train.steps = 40
    c.train.checkpoint_every = 20


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """Variants: tiny (the small world on a CPU), qwen2.5-1.5b, qwen2.5-7b-tpu."""
    if arg not in VARIANTS:
        raise ValueError(f"configs/reasoning_rl.py: unknown variant {arg!r} (one of {VARIANTS})")
    if arg == "tiny":
        c = base.get_config()
        c.stage = "rl"
        tiny(c)
        return c
    c = grpo.get_config(arg)
    c.model.init_from = "runs/cold-start-1.5b" if arg == "qwen2.5-1.5b" else "runs/cold-start-7b"
    c.data.template = "r1_zero"
    c.rl.template = "r1_zero"
    c.rl.rewards = ml_collections.ConfigDict({"accuracy": 1.0, "format": 1.0, "language": 1.0})
    return c
