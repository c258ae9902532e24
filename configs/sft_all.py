"""SFT on all the data (R1 stage 3, second half): the *base* model fine-tuned on the rejection-
sampled reasoning data mixed with general data (configs/rejection_sampling.py's dataset).

Variants:
- tiny: the small world base on a CPU (a couple of minutes):
    r1jax --config=configs/sft_all.py:tiny --workdir=runs/sft-all \
        --config.data.train=runs/rejection-sampling/dataset.jsonl
- qwen2.5-1.5b / qwen2.5-7b-tpu: 2 epochs, as R1 fine-tunes on its 800k samples:
    r1jax --config=configs/sft_all.py:qwen2.5-1.5b --workdir=runs/sft-all-1.5b \
        --config.data.train=runs/rs-1.5b/dataset.jsonl \
        --config.model.init_from=/models/Qwen2.5-Math-1.5B
"""

import ml_collections

from configs import base, cold_start, sft

VARIANTS = ("tiny", "qwen2.5-1.5b", "qwen2.5-7b-tpu")


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """Variants: tiny (the small world on a CPU), qwen2.5-1.5b, qwen2.5-7b-tpu."""
    if arg not in VARIANTS:
        raise ValueError(f"configs/sft_all.py: unknown variant {arg!r} (one of {VARIANTS})")
    if arg == "tiny":
        c = base.get_config()
        c.stage = "sft"
        cold_start.world_sft(c)
        c.data.format = "jsonl"
        c.data.train = "runs/rejection-sampling/dataset.jsonl"
        c.train.steps = 400  # ~3.5 epochs of ~3.7k rows (general answers are new to the base)
        return c
    c = sft.get_config(arg)
    c.data.format = "jsonl"
    c.data.eval = ""
    c.data.train = f"runs/rs-{arg.split('-')[1]}/dataset.jsonl"
    c.data.template = "r1_zero"
    # configs/rejection_sampling.py's longest completion plus a prompt of up to 512 tokens.
    c.data.seq_len = (8192 if arg == "qwen2.5-1.5b" else 16384) + 512
    # R1: 2 epochs, cosine from 5e-5 down to 5e-6 (batch 128 rows of up to 32,768 tokens there;
    # sft.py's batch here).
    c.optim.lr = 5e-5
    c.optim.min_lr_ratio = 0.1
    c.train.epochs = 2  # train.steps from the collected dataset's size (data_stats.json)
    # Estimates from CPU-compiled programs at the real widths, model.attention_chunk 1024 (the
    # sft variants'): 1.5B, 8 rows of 8704 tokens a micro-batch on one GPU ~60 GB (4 rows needed
    # ~105 GB without the blocks); 7B, one row of 16896 tokens a chip on a v4-32 ~32 GB of a
    # chip's 34.4 (at the limit: 80 GB GPUs are safer; 137+ GB without the blocks).
    c.train.grad_accum = 8 if arg == "qwen2.5-1.5b" else c.train.grad_accum
    return c
