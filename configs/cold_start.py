"""Cold start (R1 stage 1): long, readable chains of thought rejection-sampled from an R1-Zero
checkpoint, then SFT of the *base* model on them.

Stage `collect` with collect.sft: samples collect.num_samples answers per prompt, keeps those
that are correct, in the R1 format, in one language (the prompt's), without repetition loops and
within the length bounds, renders each with a summary line at the end of its thought, writes
WORKDIR/dataset.jsonl + provenance.json, then fine-tunes model.init_from on it in WORKDIR.

Variants:
- tiny: the small world on a CPU (a minute or two), from an R1-Zero run of
  configs/r1_zero.py:tiny (collect.model defaults to runs/r1-zero):
    r1jax --config=configs/cold_start.py:tiny --workdir=runs/cold-start
- qwen2.5-1.5b / qwen2.5-7b-tpu: R1's recipe on a real base (the paper collects thousands of
  such samples; SFT 2 epochs, cosine from 5e-5 to 5e-6, as R1's cold start):
    r1jax --config=configs/cold_start.py:qwen2.5-1.5b --workdir=runs/cold-start-1.5b \
        --config.collect.model=runs/r1zero-1.5b --config.model.init_from=/models/Qwen2.5-Math-1.5B
"""

import ml_collections

from configs import base, sft

VARIANTS = ("tiny", "qwen2.5-1.5b", "qwen2.5-7b-tpu")


def world_sft(c: ml_collections.ConfigDict) -> None:
    """SFT of the world base in its own template (shared by cold start, sft_all and distill)."""
    c.model.init_from = base.WORLD_BASE  # and its tokenizer (a swapped-in model brings its own)
    c.data.template = "world"
    c.data.seq_len = 128
    c.data.batch_size = 32
    c.optim.lr = 3e-4
    c.optim.warmup_steps = 10
    c.optim.schedule = "cosine"
    c.train.log_every = 10
    c.train.eval_every = 0
    c.train.checkpoint_every = 100


def world_collect(c: ml_collections.ConfigDict) -> None:
    """Sampling the world's train prompts in the world template (T 0.7, 80 new tokens)."""
    c.data.format = "world"
    c.data.train = "train"  # world.dataset("train"): never a held-out problem
    c.collect.template = "world"
    c.collect.temperature = 0.7
    c.collect.top_p = 0.95
    c.collect.max_new_tokens = 80  # worked solutions reach ~67 tokens, plus the summary line
    c.collect.prompts_per_batch = 64
    c.collect.min_language_consistency = 1.0  # one language: the prompt's
    c.collect.ngram_size = 4  # world chains are ~30 words: a loop repeats short sentences
    c.eval.grade_workers = 0  # world answers are compared as strings: workers add start-up only


def tiny(c: ml_collections.ConfigDict) -> None:
    world_collect(c)
    world_sft(c)
    c.collect.model = "runs/r1-zero"  # configs/r1_zero.py:tiny's documented workdir
    c.collect.num_prompts = 1000
    c.collect.num_samples = 2
    c.collect.max_per_prompt = 1
    c.collect.summary = True
    c.collect.sft = True
    c.train.steps = 120  # ~4 epochs of ~1000 rows


def real(c: ml_collections.ConfigDict, size: str) -> None:
    """Published-scale settings: MATH prompts, 8 samples each, 2 epochs of SFT from lr 5e-5."""
    s = sft.get_config(size)
    for name in ("model", "data", "optim", "train", "mesh"):
        c[name] = s[name]
    c.data.format = "math"
    c.data.train = base.data_path("math_train_rllm.json")
    c.data.eval = ""
    c.data.on_error = "skip"
    c.data.template = "r1_zero"
    c.collect.template = "r1_zero"
    c.collect.model = "runs/r1zero-1.5b" if size == "qwen2.5-1.5b" else "runs/r1zero-7b"
    c.collect.num_prompts = 0
    c.collect.num_samples = 8
    c.collect.max_per_prompt = 1
    c.collect.temperature = 0.7
    # The chains are SFT rows of data.seq_len with their prompt (up to 512 tokens) and summary
    # line: a longer one would train without its summary, answer and EOS.
    c.collect.max_new_tokens = c.data.get_ref("seq_len") - 512  # follows --config.data.seq_len
    c.collect.min_tokens = 256  # long chains of thought
    c.collect.min_language_consistency = 0.95
    c.collect.max_paragraph_chars = 2000  # readable: no long paragraphs, no code blocks (R1)
    c.collect.reject_code_blocks = True
    c.collect.prompts_per_batch = 16
    c.collect.summary = True
    c.collect.sft = True
    c.train.epochs = 2  # R1's cold start: train.steps from the collected chains (data_stats.json)
    # R1 (Supplementary B.4.2, cold-start and second-stage SFT): cosine from 5e-5 down to 5e-6,
    # batch 128 of up to 32,768 tokens; sft.py's 1e-5 is its own GSM8K choice. The batch and
    # length stay sft.py's, sized for one GPU.
    c.optim.lr = 5e-5
    c.optim.min_lr_ratio = 0.1


def get_config(arg: str = "tiny") -> ml_collections.ConfigDict:
    """Variants: tiny (the small world on a CPU), qwen2.5-1.5b, qwen2.5-7b-tpu."""
    if arg not in VARIANTS:
        raise ValueError(f"configs/cold_start.py: unknown variant {arg!r} (one of {VARIANTS})")
    c = base.get_config()
    c.stage = "collect"
    tiny(c) if arg == "tiny" else real(c, arg)
    return c
