"""Preference reward model (Bradley-Terry on chosen/rejected pairs): R1's helpfulness and
harmlessness judges for general prompts in the all-domain RL stage.

Variants:
- tiny: the built-in small world on a CPU (about 2 minutes on 2 busy cores). Trunk from the
  shipped base model, a fresh scalar head; world preference pairs over both domains (reasoning,
  general) and both aspects (helpful: right vs wrong; harmless: polite vs rude); held-out pairs
  from the test split; also scored on the shared HH-RLHF harmless test pairs.
    r1jax --config=configs/reward_model.py:tiny --workdir=runs/reward-model
  Writes rm_eval.json (held-out accuracy by domain and aspect, HH-RLHF accuracy) next to
  metrics.jsonl; the all-domain RL stage reads the folder (rl.reward_model.path). Measured:
  held-out 0.72 = harmless 0.99 + helpful 0.48 (chance: a 1.1M-parameter model does not learn
  to check a translation or a direct answer in CPU minutes, see configs/world_notes.md);
  HH-RLHF 0.53 (a 512-piece tokenizer and a 128-token context see little of those talks).
- qwen2.5-1.5b: one GPU; HH-RLHF-style training pairs at a path you give (rows {"chosen",
  "rejected"} transcripts, or {"prompt", "chosen", "rejected"}), InstructGPT's RM settings
  (lr 9e-6 cosine, batch 64; 2513 steps: one epoch of all four HH-RLHF train splits, ~3.7
  epochs of one split: pass --config.train.steps=-(-PAIRS // 64) for one epoch of yours, e.g.
  685 for helpful-base's 43 835 pairs). R1's two judges, one run each, as
  configs/all_domain_rl.py's qwen variants read them:
    r1jax --config=configs/reward_model.py:qwen2.5-1.5b --workdir=runs/rm-helpful-1.5b \
        --config.model.init_from=/models/Qwen2.5-1.5B-Instruct \
        --config.data.train=/data/hh-rlhf/helpful-base/train.jsonl.gz
    r1jax --config=configs/reward_model.py:qwen2.5-1.5b --workdir=runs/rm-harmless-1.5b \
        --config.model.init_from=/models/Qwen2.5-1.5B-Instruct \
        --config.data.train=/data/hh-rlhf/harmless-base/train.jsonl.gz
- qwen2.5-7b-tpu: the same on a pod slice, parameters sharded (mesh fsdp):
    r1jax --config=configs/reward_model.py:qwen2.5-7b-tpu --workdir=/mnt/shared/rm-7b \
        --config.model.init_from=/models/Qwen2.5-7B-Instruct \
        --config.data.train=/data/hh-rlhf/train.jsonl.gz
"""

import ml_collections

from configs import base

HH_TEST = base.data_path("hh_rlhf_harmless_base_test.jsonl.gz")
HH_TRAIN_PAIRS = 160_800  # the four HH-RLHF train splits together (harmless + helpful)


def tiny(c: ml_collections.ConfigDict) -> None:
    """The small world: shipped base trunk, world preference pairs, CPU minutes."""
    c.model.init_from = base.WORLD_BASE
    c.tokenizer.path = base.WORLD_BASE
    c.data.format = "world"
    c.data.train = "preference"  # world.dataset: 2000 pairs, half reasoning, half general
    c.data.eval = "preference_test"  # 500 pairs from the held-out split
    c.data.template = "world"
    c.data.batch_size = 32
    c.rm.hh_eval = HH_TEST
    c.rm.hh_max_pairs = 500
    c.optim.lr = 1e-4
    c.optim.warmup_steps = 3
    c.optim.schedule = "cosine"
    c.optim.weight_decay = 0.0
    c.train.steps = 30  # ~half an epoch; 60 or 300 steps reach the same held-out numbers
    c.train.log_every = 5
    c.train.eval_every = 15
    c.train.checkpoint_every = 15


def real_model(c: ml_collections.ConfigDict, arg: str) -> None:
    """A Qwen2.5 trunk (an SFT/instruct model is the usual start), bf16, one epoch of pairs."""
    c.model.preset = "qwen2.5-1.5b" if arg == "qwen2.5-1.5b" else "qwen2.5-7b"
    c.model.init_from = f"/models/Qwen2.5-{'1.5B' if arg == 'qwen2.5-1.5b' else '7B'}-Instruct"
    c.model.dtype = "bfloat16"
    c.model.remat = "full"
    c.model.attention_chunk = 1024  # blocks of queries: scores [rows, H, 1024, L], not L x L
    c.data.format = "jsonl"
    c.data.train = "/data/hh-rlhf/train.jsonl.gz"  # yours: HH-RLHF rows or prompt/chosen/rejected
    c.data.eval = ""  # a held-out pair file of yours ('' = only the HH-RLHF test below)
    c.data.template = "chat"
    c.data.batch_size = 64  # pairs per step (InstructGPT's RM batch)
    c.train.grad_accum = 8 if arg == "qwen2.5-1.5b" else 1
    c.rm.max_len = 1024  # HH conversations longer than this keep their end
    c.rm.hh_eval = HH_TEST
    c.rm.hh_max_pairs = 0  # all 2312 pairs
    c.optim.lr = 9e-6
    c.optim.schedule = "cosine"
    c.optim.warmup_steps = 75  # 3% of the epoch
    c.optim.min_lr_ratio = 0.1
    c.optim.weight_decay = 0.0
    # One epoch of all four HH-RLHF splits (2513 steps); one split alone is ~1/4 of it.
    c.train.steps = -(-HH_TRAIN_PAIRS // c.data.batch_size)
    c.train.log_every = 10
    c.train.eval_every = 500
    c.train.checkpoint_every = 500
    if arg == "qwen2.5-7b-tpu":
        c.mesh.data = 1
        c.mesh.fsdp = -1


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """Variants: tiny (the small world on a CPU), qwen2.5-1.5b (one GPU), qwen2.5-7b-tpu."""
    c = base.get_config()
    c.stage = "reward_model"
    if arg == "tiny":
        tiny(c)
    elif arg in ("qwen2.5-1.5b", "qwen2.5-7b-tpu"):
        real_model(c, arg)
    else:
        raise ValueError(
            f"configs/reward_model.py: unknown variant {arg!r} (tiny, qwen2.5-1.5b, qwen2.5-7b-tpu)"
        )
    return c
