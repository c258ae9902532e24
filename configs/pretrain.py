"""Pretraining on plain text (every token is trained).

The base model of the built-in small world (configs/r1_zero.py:tiny starts from it; its step-750
checkpoint ships in r1jax/assets/world_base, as this takes about an hour on 2 CPU cores):
  r1jax --config=configs/pretrain.py:tiny --workdir=runs/world-base
A smaller base for the distillation stage (shipped in r1jax/assets/world_student):
  r1jax --config=configs/pretrain.py:student --workdir=runs/world-student
A few minutes of plain-text training (GSM8K solutions stand in for a corpus):
  r1jax --config=configs/pretrain.py:gsm8k --workdir=runs/pretrain
Continued pretraining of a real model (a corpus of {"text": ...} rows):
  r1jax --config=configs/pretrain.py:qwen2.5-0.5b --workdir=runs/pt \
      --config.model.init_from=/models/Qwen2.5-0.5B --config.data.train=/data/corpus.jsonl
"""

import ml_collections

from configs import base


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """Variants: tiny (alias world: the world base), student, gsm8k (minutes), qwen2.5-0.5b."""
    c = base.get_config()
    c.stage = "pretrain"
    if arg == "gsm8k":
        c.data.format = "gsm8k"
        c.data.train = base.data_path("gsm8k_train.jsonl")
        c.data.eval = base.data_path("gsm8k_test.jsonl")
        c.model.preset = "tiny"
        c.model.max_seq_len = 256
        c.tokenizer.train_vocab_size = 1024
        c.data.seq_len = 256
        c.data.batch_size = 16
        c.optim.lr = 1e-3
        c.train.steps = 200
        c.train.eval_every = 100
    elif arg in ("tiny", "world"):
        world_base(c)
    elif arg == "student":
        world_student(c)
    elif arg == "qwen2.5-0.5b":
        c.model.preset = "qwen2.5-0.5b"
        c.model.init_from = "/models/Qwen2.5-0.5B"
        c.model.dtype = "bfloat16"
        c.model.remat = "full"
        c.model.attention_chunk = 1024  # blocks of queries: scores [rows, H, 1024, L], not L x L
        c.data.format = "jsonl"
        c.data.train = "/data/corpus.jsonl"
        c.data.seq_len = 2048
        c.data.batch_size = 64
        c.optim.lr = 2e-5
        c.train.steps = 5000
        c.train.checkpoint_every = 500
        c.train.eval_every = 500
    else:
        raise ValueError(
            f"configs/pretrain.py: unknown variant {arg!r} "
            "(tiny, world, student, gsm8k, qwen2.5-0.5b)"
        )
    return c


def world_base(c: ml_collections.ConfigDict) -> None:
    """A 1.1M-parameter decoder on the world corpus (30% worked solutions, 70% direct answers)."""
    c.data.format = "world"  # r1jax.data.world generates the corpus in memory (seeded)
    c.data.train = "corpus"
    c.data.eval = ""
    c.tokenizer.train_vocab_size = 512
    c.data.seq_len = 128
    c.data.batch_size = 64
    c.model.preset = "tiny"
    c.model.max_seq_len = 128
    c.model.d_model = 128
    c.model.n_layers = 4
    c.model.n_heads = 4
    c.model.n_kv_heads = 4
    c.model.head_dim = 32
    c.model.d_ff = 512
    c.optim.lr = 1e-3
    c.optim.warmup_steps = 50
    c.train.steps = 1500
    c.train.log_every = 50
    c.train.eval_every = 0
    c.train.checkpoint_every = 250
    c.train.keep_checkpoints = 10


def world_student(c: ml_collections.ConfigDict) -> None:
    """A smaller base for distillation in the small world: d 64 (0.3M parameters), same corpus
    and the world base's tokenizer, so teacher samples need no re-tokenizing."""
    world_base(c)
    c.tokenizer.path = base.WORLD_BASE
    c.tokenizer.train_vocab_size = 0
    c.model.d_model = 64
    c.model.head_dim = 16
    c.model.d_ff = 256
    c.train.steps = 1000
