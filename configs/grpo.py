"""GRPO (and its variants Dr. GRPO, DAPO, GSPO, RLOO) with rule rewards.

Variants: `<size>` or `<size>,<preset>` with size in {tiny, qwen2.5-1.5b, qwen2.5-7b-tpu} and
preset in {grpo, dr_grpo, dapo, gspo, rloo}; a bare preset means qwen2.5-1.5b.
Run locally (2 CPU cores, ~2 minutes; a random tiny model learns to write digits: this checks
the RL machinery end to end, the R1-Zero world is configs/r1_zero.py):
  r1jax --config=configs/grpo.py:tiny --workdir=runs/grpo-tiny
R1-Zero settings on a real base model (one GPU):
  r1jax --config=configs/grpo.py:qwen2.5-1.5b --workdir=runs/r1zero-1.5b \
      --config.model.init_from=/models/Qwen2.5-Math-1.5B
DAPO on the same model:
  r1jax --config=configs/grpo.py:qwen2.5-1.5b,dapo --workdir=runs/dapo-1.5b
Memory (estimates, README 'Scaling out'): the update and the log-prob passes take micro-batches
of 512 / train.grad_accum rows (8 for 1.5B; 16 for 7B: one row a device on 16 devices, set
--config.train.grad_accum=16 on 32); sampling holds one bf16 copy of the model on every
device (~31 GB of temporaries at 7B), so 7B sampling wants 80 GB devices (H100) more than 32 GB
TPU v4 chips.
"""

import ml_collections

from configs import base

SIZES = ("tiny", "qwen2.5-1.5b", "qwen2.5-7b-tpu")
PRESETS = ("grpo", "dr_grpo", "dapo", "gspo", "rloo")


def tiny(c: ml_collections.ConfigDict) -> None:
    """A tiny random model, GSM8K questions as prompts, the digit-writing reward."""
    c.model.preset = "tiny"
    c.model.max_seq_len = 64
    c.tokenizer.train_vocab_size = 512
    c.data.format = "gsm8k"
    c.data.train = base.data_path("gsm8k_train.jsonl")
    c.data.max_records = 500
    c.rl.prompts_per_step = 4
    c.rl.num_samples = 8
    c.rl.max_prompt_len = 32
    c.rl.max_new_tokens = 16
    c.rl.template = "none"
    c.rl.rewards = ml_collections.ConfigDict({"target_chars": 1.0})
    c.rl.reward_workers = 0
    c.rl.kl_coef = 0.001
    c.optim.lr = 3e-3
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"
    c.train.steps = 60
    c.train.log_every = 1
    c.train.checkpoint_every = 20
    c.rl.log_samples_every = 10


def real(c: ml_collections.ConfigDict, size: str) -> None:
    """The published R1-Zero settings: lr 3e-6, KL 0.001, G=16, T=1.0, 32 prompts, ref reset 400."""
    c.model.preset = "qwen2.5-1.5b" if size == "qwen2.5-1.5b" else "qwen2.5-7b"
    c.model.init_from = (
        "/models/Qwen2.5-Math-1.5B" if size == "qwen2.5-1.5b" else "/models/Qwen2.5-7B"
    )
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.attention_chunk = 1024  # blocks of queries: scores [rows, H, 1024, L], not L x L
    c.data.format = "math"
    c.data.train = base.data_path("math_train_rllm.json")
    c.data.eval = base.data_path("math500_test.jsonl")
    c.data.on_error = "skip"  # four rows of the MATH train file have no answer
    c.rl.prompts_per_step = 32
    c.rl.num_samples = 16
    c.rl.temperature = 1.0
    c.rl.max_prompt_len = 512
    # R1-Zero samples up to 32,768 tokens (65,536 after step 8.2k): budgets for one GPU here.
    c.rl.max_new_tokens = 4096 if size == "qwen2.5-1.5b" else 8192
    # 1.5B on one GPU: the 512 rows' KV cache would be ~61 GB (bf16, 28 layers x 1 KB a slot)
    # beside ~28 GB of params, Adam, reference and decode copy; 16 prompts a call hold ~30 GB.
    c.rl.sample_prompts_per_call = 16 if size == "qwen2.5-1.5b" else 0
    c.rl.kl_coef = 0.001
    c.rl.ref_reset_every = 400
    # R1 (first RL stage) clips at epsilon 10, each rollout of 8,192 samples split into 16
    # updates of 32 prompts. Here a step samples its 32 prompts and updates once: the ratio is 1,
    # so the clip (base's 0.2; clip_low must stay below 1) never binds. R1's layout would be
    # rl.prompts_per_step 512, rl.num_minibatches 16, clip_high 10, and train.steps and
    # ref_reset_every / 16 (they count rollouts; R1's steps are updates).
    c.rl.rewards = ml_collections.ConfigDict({"accuracy": 1.0, "format": 1.0})
    c.rl.reward_workers = 8
    c.optim.lr = 3e-6
    c.optim.warmup_steps = 0
    c.optim.schedule = "constant"
    c.optim.weight_decay = 0.0
    # Not a published count: R1-Zero ran 10,400 steps, 1.6 epochs of its prompts; 8000 steps of
    # 32 prompts are ~34 passes over MATH's 7.5k train problems.
    c.train.steps = 8000
    # Micro-batches of 8 rows (1.5B on one 80 GB GPU: the update ~46 GB, an estimate from a
    # CPU-compiled program with attention_chunk 1024; 4 rows took ~54 GB without the blocks) /
    # 16 (7B over 16+ devices). The reference, old and value passes take the same micro-batches
    # (`rl.in_micro_batches`).
    c.train.grad_accum = 64 if size == "qwen2.5-1.5b" else 32
    # Held-out answers as long as the rollouts (1024 cut R1-Zero's growing answers short).
    c.eval.max_new_tokens = c.rl.get_ref("max_new_tokens")
    c.train.checkpoint_every = 50
    c.train.log_every = 1
    if size == "qwen2.5-7b-tpu":
        c.mesh.data = 1
        c.mesh.fsdp = -1


def apply_preset(c: ml_collections.ConfigDict, preset: str) -> None:
    """Each variant's objective as its paper sets it, on the size's shared settings (lr, batch,
    samples, lengths: R1's on the real sizes), so runs differ in the objective alone."""
    if preset == "dr_grpo":  # Liu et al. 2025: no std, constant length normaliser
        # Their runs (understand-r1-zero examples/*.sh) also set lr 1e-6, KL 0 (--beta 0),
        # 8 samples, 128 prompts and 3000 new tokens: not applied here.
        c.rl.std_normalize = "none"
        c.rl.aggregation = "seq-mean-token-sum-norm"
    elif preset == "dapo":  # Yu et al. 2025
        # Not applied (DAPO §4.1): lr 1e-6, 512 prompts a rollout in 16 updates of 32.
        c.rl.clip_low, c.rl.clip_high = 0.2, 0.28
        c.rl.aggregation = "token-mean"
        c.rl.dynamic_sampling = True
        # DAPO: the last 4,096 of 20,480 tokens. A reference: --config.rl.max_new_tokens=N
        # moves the buffer with it (N // 5).
        c.rl.overlong_buffer = c.rl.get_ref("max_new_tokens") // 5
        c.rl.kl_coef = 0.0
    elif preset == "gspo":  # Zheng et al. 2025: sequence-level ratio, tiny clip ranges
        # The clip binds only with several updates a rollout (rl.num_minibatches > 1): with
        # one, the ratio is 1.
        c.rl.ratio_level = "sequence"
        c.rl.clip_low, c.rl.clip_high = 3e-4, 4e-4
        c.rl.kl_coef = 0.0
    elif preset == "rloo":
        c.rl.advantage = "rloo"


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """`size[,preset]`; see the module docstring."""
    parts = [p for p in arg.split(",") if p]
    size = next((p for p in parts if p in SIZES), "qwen2.5-1.5b")
    preset = next((p for p in parts if p in PRESETS), "grpo")
    unknown = [p for p in parts if p not in SIZES + PRESETS]
    if unknown:
        raise ValueError(
            f"configs/grpo.py: unknown variant {unknown} (sizes {SIZES}, presets {PRESETS})"
        )
    c = base.get_config()
    c.stage = "rl"
    c.rl.algorithm = "grpo"
    if size == "tiny":
        tiny(c)
    else:
        real(c, size)
    apply_preset(c, preset)
    return c
