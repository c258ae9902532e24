"""Supervised fine-tuning on prompt/response pairs (the loss covers response tokens and EOS).

Run locally (2 CPU cores, a few minutes; GSM8K from ../shared/data, SentencePiece trained on it):
  r1jax --config=configs/sft.py:tiny --workdir=runs/sft
A real model on one GPU (point init_from at a Hugging Face folder, e.g. Qwen2.5-Math-1.5B):
  r1jax --config=configs/sft.py:qwen2.5-1.5b --workdir=runs/sft-1.5b \
      --config.model.init_from=/models/Qwen2.5-Math-1.5B
"""

import ml_collections

from configs import base


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """Variants: tiny (CPU, minutes), qwen2.5-1.5b (one GPU), qwen2.5-7b-tpu (a pod slice)."""
    c = base.get_config()
    c.stage = "sft"
    c.data.format = "gsm8k"
    c.data.train = base.data_path("gsm8k_train.jsonl")
    c.data.eval = base.data_path("gsm8k_test.jsonl")
    if arg == "tiny":
        c.model.preset = "tiny"
        c.model.d_model = 128
        c.model.n_layers = 4
        c.model.n_heads = 4
        c.model.n_kv_heads = 2
        c.model.head_dim = 32
        c.model.d_ff = 384
        c.model.max_seq_len = 256
        c.tokenizer.train_vocab_size = 1024
        c.data.seq_len = 256
        c.data.batch_size = 16
        c.optim.lr = 1e-3
        c.optim.warmup_steps = 20
        c.train.steps = 200
        c.train.log_every = 10
        c.train.eval_every = 100
        c.train.checkpoint_every = 50
    elif arg in ("qwen2.5-1.5b", "qwen2.5-7b-tpu"):
        c.model.preset = "qwen2.5-1.5b" if arg == "qwen2.5-1.5b" else "qwen2.5-7b"
        c.model.init_from = (
            "/models/Qwen2.5-Math-1.5B" if arg == "qwen2.5-1.5b" else "/models/Qwen2.5-7B"
        )
        c.model.dtype = "bfloat16"
        c.model.remat = "full"
        c.model.attention_chunk = 1024  # blocks of queries: scores [rows, H, 1024, L], not L x L
        c.data.seq_len = 4096
        c.data.batch_size = 64 if arg == "qwen2.5-1.5b" else 256
        # 7B: one 4096-token row a chip per micro-batch on a v4-32 (16 rows a chip needed
        # ~81 GB against 32; the realcfg audit's estimate).
        c.train.grad_accum = 8 if arg == "qwen2.5-1.5b" else 16
        c.optim.lr = 1e-5
        # A share of the steps the epochs give (a fixed 50 was the whole run at 7B: ~3-7 steps
        # an epoch at batch 256); 3%, a common SFT choice (R1 does not give its warm-up).
        c.optim.warmup_steps = 0
        c.optim.warmup_ratio = 0.03
        c.optim.weight_decay = 0.01
        # Steps from the data: GSM8K's 7.5k answers pack ~13 to a 4096-token row, so a fixed
        # 2000 steps were ~200 epochs.
        c.train.epochs = 3
        c.train.log_every = 10
        c.train.eval_every = 200
        c.train.checkpoint_every = 200
        if arg == "qwen2.5-7b-tpu":
            c.mesh.data = 1
            c.mesh.fsdp = -1
    else:
        raise ValueError(
            f"configs/sft.py: unknown variant {arg!r} (tiny, qwen2.5-1.5b, qwen2.5-7b-tpu)"
        )
    return c
