"""PPO baseline: critic (value head), GAE, clipped surrogate, per-token KL in the reward.

Run locally (2 CPU cores, ~2 minutes; the digit-writing check task of configs/grpo.py:tiny):
  r1jax --config=configs/ppo.py:tiny --workdir=runs/ppo-tiny
A real model (one GPU): r1jax --config=configs/ppo.py:qwen2.5-1.5b --workdir=runs/ppo-1.5b
Variants: tiny | qwen2.5-1.5b, optionally `,separate` (separate critic model) or
`,kl_penalty` (PPO's adaptive-KL-penalty form instead of clipping: beta * KL(old || new) in the
loss, beta halved or doubled after each update toward rl.kl_target, Schulman et al. 2017 §4).
The clip form's KL-in-reward coefficient is fixed unless rl.kl_horizon is set (Ziegler et al.'s
adaptive controller toward rl.kl_target KL per sample, e.g. TRL's 6 over a horizon of 10000).
The critic shares the policy's optimizer unless rl.critic_lr is set (its own rate and clip; the
OpenRLHF examples train the critic at 9e-6 against the actor's 5e-7), e.g.
  r1jax --config=configs/ppo.py:tiny,separate --config.rl.critic_lr=1e-2 --workdir=runs/ppo-own
"""

import ml_collections

from configs import base, grpo


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """`size[,separate][,kl_penalty]`."""
    parts = [p for p in arg.split(",") if p]
    size = "tiny" if "tiny" in parts else "qwen2.5-1.5b"
    unknown = [p for p in parts if p not in ("tiny", "qwen2.5-1.5b", "separate", "kl_penalty")]
    if unknown:
        raise ValueError(
            f"configs/ppo.py: unknown variant {unknown}; expected `size[,separate][,kl_penalty]` "
            "with size tiny or qwen2.5-1.5b, e.g. tiny,separate"
        )
    c = base.get_config()
    c.stage = "rl"
    if size == "tiny":
        grpo.tiny(c)
    else:
        grpo.real(c, size)
    c.rl.algorithm = "ppo"
    c.rl.num_samples = 4  # PPO needs no group; a few samples share a prompt
    c.rl.prompts_per_step = 8 if size == "tiny" else 128
    c.rl.gamma, c.rl.lam = 1.0, 0.95
    c.rl.vf_coef = 0.1
    # In the reward, per token (k1). The tiny check task starts near reward 0.03, so its
    # coefficient is small: at 0.01 the penalty outweighed the early reward differences. The
    # real size keeps R1's GRPO coefficient for comparison (InstructGPT's PPO used 0.02).
    c.rl.kl_coef = 0.003 if size == "tiny" else 0.001
    c.rl.kl_estimator = "k1"  # logp - ref_logp per token, as in Ziegler et al. / InstructGPT
    c.rl.epochs = 2 if size == "tiny" else 1
    c.rl.num_minibatches = 2
    c.rl.ref_reset_every = 0
    if "separate" in parts:
        c.rl.critic = "separate"
    if "kl_penalty" in parts:  # beta starts at kl_coef, halves / doubles toward kl_target
        c.rl.ppo_form = "kl_penalty"
        c.rl.kl_target = 0.01
    return c
