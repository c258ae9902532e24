"""Distillation (R1 section 4): SFT a smaller student on the final model's samples (correct
reasoning by the rule check; general answers the reward model accepts).

Stage `collect` with collect.sft. Compare the student with the same student trained by RL
directly (configs/distill.py:tiny_rl, GRPO from the student base): R1 finds distillation wins
for small models.

Variants:
- tiny: the small world on a CPU; the student is r1jax/assets/world_student (0.3M parameters,
  configs/pretrain.py:student), the teacher an all-domain RL run:
    r1jax --config=configs/distill.py:tiny --workdir=runs/distill \
        --config.collect.model=runs/all-domain-rl --config.collect.reward_model=runs/reward-model
- tiny_rl: the comparison, GRPO from the student base with the reasoning rewards:
    r1jax --config=configs/distill.py:tiny_rl --workdir=runs/student-rl
- qwen2.5-1.5b (student Qwen2.5-Math-1.5B on one GPU; teacher a 7B run) and qwen2.5-7b-tpu
  (student Qwen2.5-7B): R1-Distill's recipe, SFT only, 2 epochs:
    r1jax --config=configs/distill.py:qwen2.5-1.5b --workdir=runs/distill-1.5b \
        --config.collect.model=runs/all-domain-7b
  These sample MATH prompts only: R1 distils on its 800k rows, general ones included. Add
  general rows with --config.collect.general_data=FILE.jsonl --config.collect.general_ratio=0.33
  (and --config.collect.general_prompts=FILE with --config.collect.reward_model=RUN to sample
  the teacher's general answers); none are shipped at this scale.
"""

import ml_collections

from configs import base, cold_start, reasoning_rl

VARIANTS = ("tiny", "tiny_rl", "qwen2.5-1.5b", "qwen2.5-7b-tpu")


def tiny(c: ml_collections.ConfigDict) -> None:
    cold_start.world_collect(c)
    cold_start.world_sft(c)
    c.model.init_from = base.WORLD_STUDENT
    c.collect.model = "runs/all-domain-rl"
    c.collect.num_prompts = 2000
    c.collect.num_samples = 2
    c.collect.max_per_prompt = 1
    c.collect.summary = False
    c.collect.general_prompts = "general_train"
    c.collect.num_general_prompts = 500
    c.collect.reward_model = "runs/reward-model"
    c.collect.general_min_score = 0.0
    c.collect.sft = True
    c.optim.lr = 1e-3  # a smaller model takes a larger step
    c.train.steps = 600  # ~8 epochs of ~2.5k rows: 200 steps left it at its base's accuracy


def tiny_rl(c: ml_collections.ConfigDict) -> None:
    reasoning_rl.tiny(c)
    c.model.init_from = base.WORLD_STUDENT
    c.train.steps = 40


def real(c: ml_collections.ConfigDict, size: str) -> None:
    teacher = "runs/all-domain-7b"
    c.model.preset = "qwen2.5-1.5b" if size == "qwen2.5-1.5b" else "qwen2.5-7b"
    c.model.init_from = (
        "/models/Qwen2.5-Math-1.5B" if size == "qwen2.5-1.5b" else "/models/Qwen2.5-7B"
    )
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.attention_chunk = 1024  # blocks of queries: scores [rows, H, 1024, L], not L x L
    c.data.format = "math"
    c.data.train = base.data_path("math_train_rllm.json")
    c.data.on_error = "skip"
    c.data.template = "r1_zero"
    c.data.seq_len = 8192 + 512  # the teacher's longest completion and a prompt of up to 512
    c.data.batch_size = 64
    # Micro-batches of 8 rows of 8704 tokens on one GPU (~60 GB; 4 rows ~46 GB, and ~105 GB
    # without attention_chunk: estimates from CPU-compiled programs), 1 a chip on a v4-32.
    c.train.grad_accum = 8 if size == "qwen2.5-1.5b" else 4
    c.collect.model = teacher
    c.collect.template = "r1_zero"
    c.collect.num_samples = 4
    c.collect.max_per_prompt = 2
    c.collect.temperature = 0.7
    c.collect.max_new_tokens = 8192
    c.collect.min_language_consistency = 0.95
    c.collect.max_paragraph_chars = 2000  # R1 §2.3.3's readability filters, as rejection sampling
    c.collect.reject_code_blocks = True
    c.collect.prompts_per_batch = 16
    c.collect.summary = False
    c.collect.sft = True
    # R1-Distill (Supplementary B.4.3, Table 6): Qwen2.5-Math-1.5B from 1e-4, Qwen2.5-Math-7B from
    # 8e-5 (the 7B student here is Qwen2.5-7B), cosine down to a tenth (base's min_lr_ratio).
    c.optim.lr = 1e-4 if size == "qwen2.5-1.5b" else 8e-5
    c.optim.warmup_steps = 0  # 3% of the steps the epochs give (sft.py's qwen variants)
    c.optim.warmup_ratio = 0.03
    c.train.epochs = 2  # R1-Distill: 2 epochs; train.steps follows the collected dataset's size
    c.train.checkpoint_every = 200
    if size == "qwen2.5-7b-tpu":
        c.mesh.data = 1
        c.mesh.fsdp = -1


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """Variants: tiny, tiny_rl (the small world on a CPU), qwen2.5-1.5b, qwen2.5-7b-tpu."""
    if arg not in VARIANTS:
        raise ValueError(f"configs/distill.py: unknown variant {arg!r} (one of {VARIANTS})")
    c = base.get_config()
    if arg == "tiny_rl":
        c.stage = "rl"
        tiny_rl(c)
        return c
    c.stage = "collect"
    tiny(c) if arg == "tiny" else real(c, arg)
    return c
