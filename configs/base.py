"""Fields every stage shares. Stage files start from get_config() here and override what differs.

Not run directly: pick a stage, e.g. `r1jax --config=configs/sft.py:tiny --workdir=runs/sft`.
"""

import os
import pathlib

import ml_collections

# ../shared/data next to the checkout; R1JAX_DATA overrides it.
DATA_DIR = os.environ.get(
    "R1JAX_DATA", str(pathlib.Path(__file__).resolve().parents[2] / "shared" / "data")
)


def get_config() -> ml_collections.ConfigDict:
    """The shared defaults, one comment per field."""
    c = ml_collections.ConfigDict()
    c.stage = ""  # which loop r1jax.main runs: pretrain | sft | ...
    c.seed = 0  # root seed: init, data order and sampling keys all derive from it

    c.model = ml_collections.ConfigDict()
    c.model.preset = "tiny"  # a name from r1jax.model.config.PRESETS
    c.model.init_from = (
        ""  # '' = random init; a Hugging Face folder; or an r1jax run/checkpoint dir
    )
    c.model.vocab_size = 0  # 0 = the preset's, or the tokenizer's when training one
    c.model.d_model = 0  # 0 = the preset's; likewise the shape fields below
    c.model.n_layers = 0
    c.model.n_heads = 0
    c.model.n_kv_heads = 0
    c.model.head_dim = 0
    c.model.d_ff = 0
    c.model.max_seq_len = 0
    c.model.dtype = "float32"  # compute dtype: float32 | bfloat16
    c.model.param_dtype = "float32"  # master weights and optimizer state
    c.model.remat = "none"  # none | full | dots: rematerialise each layer in the backward pass

    c.tokenizer = ml_collections.ConfigDict()
    c.tokenizer.path = ""  # a SentencePiece .model, or a folder/tokenizer.json; '' = model folder
    c.tokenizer.train_vocab_size = 0  # >0 and no path: train SentencePiece on the training text

    c.data = ml_collections.ConfigDict()
    c.data.train = ""  # training file (.jsonl, .json list, .parquet; .gz allowed)
    c.data.eval = ""  # held-out file for the eval loss ('' = none)
    c.data.format = "jsonl"  # jsonl (prompt/response or text) | gsm8k | math
    c.data.seq_len = 256  # tokens per packed row
    c.data.batch_size = 16  # global rows per optimizer step (all processes together)
    c.data.pack = True  # pack several examples per row (segment ids keep them apart)
    c.data.template = "chat"  # prompt template for SFT: chat | r1_zero | none
    c.data.on_error = "raise"  # malformed rows: raise (file:line) | skip (and count)
    c.data.max_records = 0  # use only the first N records (0 = all)
    c.data.eval_batches = 4  # batches in each eval-loss measurement

    c.optim = ml_collections.ConfigDict()
    c.optim.lr = 3e-4  # peak learning rate
    c.optim.schedule = "cosine"  # constant | cosine | linear (after warmup)
    c.optim.warmup_steps = 20
    c.optim.min_lr_ratio = 0.1  # final lr as a fraction of the peak
    c.optim.b1 = 0.9
    c.optim.b2 = 0.95
    c.optim.eps = 1e-8
    c.optim.weight_decay = 0.0
    c.optim.grad_clip = 1.0  # global-norm clipping (0 = off)

    c.train = ml_collections.ConfigDict()
    c.train.steps = 100  # optimizer steps
    c.train.grad_accum = 1  # micro-batches per step (the loss stays exact: sums and counts)
    c.train.log_every = 10  # metrics row every N steps
    c.train.eval_every = 50  # eval loss every N steps (0 = only at the end)
    c.train.checkpoint_every = 50  # checkpoint every N steps (and at the end)
    c.train.keep_checkpoints = 2  # how many checkpoints to keep
    c.train.max_bad_steps = 3  # stop after this many non-finite steps in a row

    c.mesh = ml_collections.ConfigDict()
    c.mesh.data = -1  # data-parallel axis (-1 = all remaining devices)
    c.mesh.fsdp = 1  # parameter-sharded data-parallel axis
    c.mesh.tensor = 1  # tensor-parallel axis
    c.mesh.rules = []  # [[logical name, mesh axis or list or None], ...]; [] = r1jax defaults

    c.metrics = ml_collections.ConfigDict()
    c.metrics.peak_flops = 0.0  # per-device peak FLOP/s for MFU; 0 = measure a float32 matmul
    c.metrics.tensorboard = True  # also write TensorBoard event files
    return c


def data_path(name: str) -> str:
    """A file in the shared data folder."""
    return str(pathlib.Path(DATA_DIR) / name)
