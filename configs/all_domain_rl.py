"""All-domain RL (R1 stage 4): one GRPO run over reasoning prompts (rule rewards: accuracy,
format, language consistency) and general prompts (a preference reward model's score), routed
per prompt by its domain; general prompts join only for the last part of the run, as in R1.
Two reward compositions for general prompts (rl.general_rule_rewards): the reward models' score
alone, as the arXiv paper's §2.3.4 describes (tiny, whose recorded pipeline results used it), or
that score plus the format and language rewards, as R1's Nature version writes it (equations
8-10: Reward = Reward_reasoning + Reward_general + Reward_language, Reward_general =
Reward_reward_model + Reward_format; the qwen variants).

Variants:
- tiny: the small world on a CPU (a few minutes), from configs/sft_all.py:tiny with the reward
  model of configs/reward_model.py:tiny; general prompts are world.dataset("general_train"):
    r1jax --config=configs/all_domain_rl.py:tiny --workdir=runs/all-domain-rl \
        --config.model.init_from=runs/sft-all --config.rl.reward_model.path=runs/reward-model
- qwen2.5-1.5b / qwen2.5-7b-tpu: R1's second RL stage: T 0.7, 1700 steps, general data and
  the preference rewards only in the last 400. Two reward models, as R1 §2.3.4: helpfulness
  judged on the summary (the text after </think>), harmlessness on the whole response; each
  z-scored by its own evaluation scores (normalize) and added. Train them with
  configs/reward_model.py on HH-RLHF's helpful-base and harmless-base splits:
    r1jax --config=configs/all_domain_rl.py:qwen2.5-1.5b --workdir=runs/all-domain-1.5b \
        --config.model.init_from=runs/sft-all-1.5b \
        --config.rl.reward_model.path=runs/rm-helpful-1.5b \
        --config.rl.harmlessness_model.path=runs/rm-harmless-1.5b \
        --config.rl.general_prompts=/data/general_prompts.jsonl
"""

import ml_collections

from configs import base, grpo, reasoning_rl

VARIANTS = ("tiny", "qwen2.5-1.5b", "qwen2.5-7b-tpu")


def tiny(c: ml_collections.ConfigDict) -> None:
    reasoning_rl.tiny(c)
    c.model.init_from = "runs/sft-all"
    c.rl.temperature = 0.7  # R1's second RL stage samples cooler
    c.rl.reward_model.path = "runs/reward-model"
    c.rl.reward_model.scope = "response"  # harmlessness is judged on the whole response
    c.rl.reward_model.weight = 1.0
    c.rl.general_prompts = "general_train"
    c.rl.general_fraction = 0.25
    c.train.steps = 40
    c.rl.general_from_step = 10  # general prompts in the last 30 steps


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """Variants: tiny (the small world on a CPU), qwen2.5-1.5b, qwen2.5-7b-tpu."""
    if arg not in VARIANTS:
        raise ValueError(f"configs/all_domain_rl.py: unknown variant {arg!r} (one of {VARIANTS})")
    if arg == "tiny":
        c = base.get_config()
        c.stage = "rl"
        tiny(c)
        return c
    c = grpo.get_config(arg)
    size = arg.split("-")[1]
    c.model.init_from = f"runs/sft-all-{size}"
    c.rl.template = "r1_zero"
    c.rl.temperature = 0.7
    c.rl.rewards = ml_collections.ConfigDict({"accuracy": 1.0, "format": 1.0, "language": 1.0})
    c.rl.reward_model.path = f"runs/rm-helpful-{size}"
    c.rl.reward_model.scope = "summary"
    c.rl.reward_model.normalize = True
    c.rl.harmlessness_model.path = f"runs/rm-harmless-{size}"
    c.rl.harmlessness_model.scope = "response"
    c.rl.general_prompts = "/data/general_prompts.jsonl"
    c.rl.general_fraction = 0.25
    c.train.steps = 1700
    c.rl.general_from_step = 1300  # the last 400 steps
    c.rl.general_rule_rewards = ("format", "language")  # Nature's equations 8-10
    return c
