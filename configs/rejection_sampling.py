"""Rejection sampling (R1 stage 3, first half): many answers per prompt from the reasoning-RL
checkpoint, kept when the rule check accepts them (correct, R1 format, one language, no
repetition loop; the real variants also drop thoughts with long paragraphs or code blocks, R1
§2.3.3), deduplicated, mixed with general (non-reasoning) SFT data (general_ratio rows per
reasoning row, taken as they are).

Stage `collect` (no SFT here: configs/sft_all.py trains the base model on the dataset).

Variants:
- tiny: the small world on a CPU (about a minute), from a configs/reasoning_rl.py:tiny run;
  general rows come from the world's general SFT data (world.dataset("general_sft")), one per
  reasoning row (R1 has one per three, 600k + 200k, for a base that already chats):
    r1jax --config=configs/rejection_sampling.py:tiny --workdir=runs/rejection-sampling \
        --config.collect.model=runs/reasoning-rl
- qwen2.5-1.5b / qwen2.5-7b-tpu: MATH train prompts, 16 samples each, up to 4 kept per prompt;
  general rows from a JSONL of {"prompt", "response"} (e.g. an instruction-tuning set):
    r1jax --config=configs/rejection_sampling.py:qwen2.5-1.5b --workdir=runs/rs-1.5b \
        --config.collect.model=runs/reasoning-rl-1.5b \
        --config.collect.general_data=/data/general_sft.jsonl
"""

import ml_collections

from configs import base, cold_start

VARIANTS = ("tiny", "qwen2.5-1.5b", "qwen2.5-7b-tpu")


def tiny(c: ml_collections.ConfigDict) -> None:
    cold_start.world_collect(c)
    c.collect.model = "runs/reasoning-rl"
    c.collect.num_prompts = 2000
    c.collect.num_samples = 4
    c.collect.max_per_prompt = 2  # distinct correct answers per prompt
    c.collect.summary = False  # the RL model already ends its thoughts with a summary
    c.collect.general_data = "general_sft"
    # One general row per reasoning row (R1: one per three): R1's base already chats, this
    # world's base has never seen a general request, so it needs more of them.
    c.collect.general_ratio = 1.0


def real(c: ml_collections.ConfigDict, size: str) -> None:
    c.model.preset = "qwen2.5-1.5b" if size == "qwen2.5-1.5b" else "qwen2.5-7b"
    c.model.dtype = c.model.param_dtype = "bfloat16"
    c.data.format = "math"
    c.data.train = base.data_path("math_train_rllm.json")
    c.data.on_error = "skip"
    c.collect.model = "runs/reasoning-rl-1.5b" if size == "qwen2.5-1.5b" else "runs/reasoning-rl-7b"
    c.collect.template = "r1_zero"
    c.collect.num_samples = 16
    c.collect.max_per_prompt = 4
    c.collect.temperature = 0.7
    c.collect.max_new_tokens = 8192 if size == "qwen2.5-1.5b" else 16384
    c.collect.min_language_consistency = 0.95
    c.collect.max_paragraph_chars = 2000  # R1's "long paragraphs" (its threshold is not given)
    c.collect.reject_code_blocks = True  # R1's "code blocks" in the thought
    c.collect.prompts_per_batch = 8 if size == "qwen2.5-1.5b" else 32
    c.collect.summary = False
    c.collect.general_data = "/data/general_sft.jsonl"
    c.collect.general_ratio = 1 / 3
    if size == "qwen2.5-7b-tpu":
        c.mesh.data = 1
        c.mesh.fsdp = -1


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """Variants: tiny (the small world on a CPU), qwen2.5-1.5b, qwen2.5-7b-tpu."""
    if arg not in VARIANTS:
        raise ValueError(
            f"configs/rejection_sampling.py: unknown variant {arg!r} (one of {VARIANTS})"
        )
    c = base.get_config()
    c.stage = "collect"
    tiny(c) if arg == "tiny" else real(c, arg)
    return c
