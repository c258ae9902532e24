"""Supervised stages (pretrain, sft): the masked next-token loss, its step, and the run driver.

Shapes: B rows, T time, k micro-batches.
"""

import dataclasses
import filecmp
import hashlib
import json
import math
import os
import pathlib
import time
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import optax
from absl import logging

from r1jax import configlib, distributed, files, sharding, text
from r1jax.data import pipeline, sources, world
from r1jax.model import config as model_config
from r1jax.model import hf_io, logprobs, transformer
from r1jax.train import checkpoint, trainer
from r1jax.train import metrics as metrics_lib
from r1jax.train import state as state_lib


def lm_loss_terms(model_cfg, params, batch):
    """(sum of masked token NLL, number of trained tokens) for one (micro-)batch."""
    h_BxTxD = transformer.hidden_states(
        model_cfg,
        params,
        batch["inputs"],
        positions_BxT=batch["positions"],
        segment_ids_BxT=batch["segment_ids"],
    )
    logp_BxT, _ = logprobs.token_logprobs(model_cfg, params, h_BxTxD, batch["targets"])
    mask_BxT = batch["loss_mask"].astype(jnp.float32)
    return -jnp.sum(logp_BxT * mask_BxT), jnp.sum(mask_BxT)


def supervised_step(state, batch, *, model_cfg, optimizer, grad_accum=1, lr_schedule=None):
    """One optimizer step on the token-mean NLL, exact under gradient accumulation.

    1. Split the batch into `grad_accum` micro-batches.
    2. Accumulate gradients of the summed NLL and the trained-token count over them.
    3. Divide once by the global token count (so accumulation does not change the loss).
    4. Apply the update unless the loss or gradient is not finite.
    """
    # (1)
    micro = trainer.micro_batches(batch, grad_accum)
    grad_fn = jax.value_and_grad(lambda p, b: lm_loss_terms(model_cfg, p, b), has_aux=True)

    # (2)
    def grads_nll_count(params, mb):
        (nll, count), grads = grad_fn(params, mb)
        return grads, nll, count

    zero = jnp.zeros((), jnp.float32)
    init = (jax.tree.map(jnp.zeros_like, state.params), zero, zero)
    grads, nll, count = trainer.accumulate(grads_nll_count, state.params, micro, init)
    # (3)
    denom = jnp.maximum(count, 1.0)
    grads = jax.tree.map(lambda g: g / denom, grads)
    loss = nll / denom
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = state_lib.update_at_step(
        optimizer, grads, state.opt_state, state.params, state.step
    )
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    # (4)
    new_state, finite = trainer.apply_if_finite(state, new_state, loss, grad_norm)
    metrics = {
        "loss": loss,
        "grad_norm": grad_norm,
        "trained_tokens": count,
        "tokens": jnp.sum(batch["segment_ids"] > 0).astype(jnp.float32),  # non-padding inputs
        "finite": finite,
    }
    if lr_schedule is not None:
        metrics["lr"] = lr_schedule(state.step)
    return new_state, metrics


def eval_terms(params, batch, *, model_cfg):
    """(NLL sum, token count) of one eval batch; jitted by the caller."""
    return lm_loss_terms(model_cfg, params, batch)


_BIG_FILE_BYTES = 100_000_000  # data files past this size are announced before they are read


def load_records(
    cfg,
    path: str,
    *,
    generic: bool = False,
    required=(),
    lazy: bool = False,
    index_dir: pathlib.Path | None = None,
) -> Sequence[dict]:
    """Reads a data file in the configured format into prompt/response (or text) records.

    generic=True reads plain rows whatever data.format says (general prompts and SFT rows mixed
    into a math run), except world dataset names. A malformed row stops the run naming
    file:line, or with data.on_error="skip" is skipped, counted in the log; for plain rows
    that includes a row without the string fields `required` asks for (`sources.read_records`).
    lazy=True reads a plain .jsonl file's rows from the file when they are used
    (sources.JsonlRecords: a training set need not fit in every process's memory); the
    records are then read-only. index_dir keeps that file's row check for the next start
    (`sources.JsonlRecords`' index; written by process 0, read by every process).
    """
    stats: dict = {}
    on_error = cfg.data.on_error
    fmt = "jsonl" if generic and cfg.data.format != "world" else cfg.data.format
    start = time.monotonic()
    size = os.path.getsize(path) if os.path.isfile(path) else 0
    index = None if index_dir is None else _index_path(index_dir, path, required, on_error)
    if size > _BIG_FILE_BYTES and not (index and index.exists()):  # a minute or more at R1's
        logging.info("%s: reading and checking %.1f GB of rows", path, size / 1e9)  # SFT sizes
    if fmt == "gsm8k":
        records = sources.gsm8k_records(path, on_error=on_error, stats=stats)
    elif fmt == "math":  # a row trains on its solution where `required` asks for a response
        solutions = any("response" in names for names in required)
        records = sources.math_records(path, on_error=on_error, stats=stats, solutions=solutions)
    elif fmt == "humaneval":  # code problems: an instruction around each stub (task "code")
        records = sources.humaneval_records(path, on_error=on_error, stats=stats)
    elif fmt == "humaneval_completion":  # a base model continues each stub (template "none")
        records = sources.humaneval_records(path, on_error=on_error, stats=stats, instruction=False)
    elif fmt == "world" and path in world.DATASETS:  # generated in memory
        records = world.dataset(path, seed=cfg.data.world_seed, n=cfg.data.max_records)
    elif fmt in ("jsonl", "world") and lazy and sources.is_plain_jsonl(path):
        records = sources.JsonlRecords(
            path,
            on_error=on_error,
            stats=stats,
            required=required,
            index=index,
            write_index=jax.process_index() == 0,
        )
        logging.info(
            "%s: %d rows %s in %.1f s; each is read from the file when used",
            path,
            len(records),
            "found by the index of an earlier start" if records.from_index else "checked",
            time.monotonic() - start,
        )
    elif fmt in ("jsonl", "world"):  # .jsonl, .json (one list) or .parquet, each possibly .gz
        records = sources.read_records(path, on_error=on_error, stats=stats, required=required)
    else:  # a format added to configlib.DATA_FORMATS needs its reader here
        raise ValueError(f"config.data.format {fmt!r} has no reader in load_records")
    if stats.get("skipped"):
        shown = stats.get("errors", [])[:3]
        logging.warning(
            "%s: skipped %d malformed rows (data.on_error='skip')%s",
            path,
            stats["skipped"],
            "".join(f"\n  {e}" for e in shown) + ("\n  ..." if stats["skipped"] > 3 else ""),
        )
    if cfg.data.max_records:
        records = records[: cfg.data.max_records]
    if not records:
        raise sources.DataError(f"config.data: no records in {path}")
    if required and not isinstance(records, sources.JsonlRecords):  # (which checked its rows)
        _check_required(records, required, f"{path} (data.format={fmt!r})")
    return records


def _index_path(index_dir, path: str, required, on_error: str) -> pathlib.Path:
    """Where a run keeps the row index of data file `path` as read with these settings."""
    key = json.dumps([str(pathlib.Path(path).resolve()), required, on_error])
    digest = hashlib.sha256(key.encode()).hexdigest()[:16]
    return pathlib.Path(index_dir) / f"{pathlib.Path(path).name}.{digest}.rows.npz"


def _check_required(records, required, where: str) -> None:
    """Every record holds one of the `required` alternatives as string fields (a format's own
    reader, e.g. HumanEval's, gives no response to train on); else DataError naming `where`."""
    for i, record in enumerate(records, start=1):
        if any(all(isinstance(record.get(f), str) for f in names) for names in required):
            continue
        needs = " or ".join("+".join(repr(f) for f in names) for names in required)
        missing = [f for f in required[0] if not isinstance(record.get(f), str)]
        raise sources.DataError(
            f"{where}: record {i}: no string field {missing[0]!r}; this stage's rows need {needs}"
        )


def record_text(record: dict) -> str:
    """The text a tokenizer is trained on: `text` (unless null), or prompt and response (a
    preference pair's: prompt, chosen and rejected)."""
    if record.get("text") is not None:
        return record["text"]
    if "chosen" in record:  # a reward model's pair has no response: its replies were unseen
        return "\n".join((record.get("prompt", ""), record["chosen"], record["rejected"]))
    return f"{record.get('prompt', '')}\n{record.get('response', '')}"


def resolve_tokenizer(cfg, workdir, records):
    """The configured tokenizer; else model.init_from's (its weights know no other ids); else a
    SentencePiece model trained on the data (kept in workdir)."""
    # A tokenizer one process cannot read, or process 0 cannot copy into the run, stops every
    # process (the agreement is also the others' wait for the copies).
    if cfg.tokenizer.path:
        with distributed.shared_errors():
            _check_init_from_tokenizer(cfg)
            return _keep_tokenizer(cfg.tokenizer.path, workdir)
    if cfg.model.init_from:
        if cfg.tokenizer.train_vocab_size:
            logging.info(
                "tokenizer: model.init_from's own (tokenizer.train_vocab_size=%d is not used)",
                cfg.tokenizer.train_vocab_size,
            )
        with distributed.shared_errors():
            return _keep_tokenizer(_init_from_tokenizer_dir(cfg), workdir)
    if cfg.tokenizer.train_vocab_size:
        path = pathlib.Path(workdir) / "tokenizer.model"
        if jax.process_count() > 1:  # process 0 trains it (deterministic); the others read it
            error = None
            if jax.process_index() == 0 and not path.exists():
                try:
                    _train_tokenizer(cfg, workdir, records)
                except text.TokenizerError as e:  # every process stops (the others waited)
                    error = e
            if distributed.global_min(int(error is None)) == 0:  # (the processes' barrier)
                raise error or text.TokenizerError(
                    f"config.tokenizer.train_vocab_size={cfg.tokenizer.train_vocab_size}: "
                    "process 0 could not train the tokenizer (its log says why)"
                )
        if path.exists():  # a resumed run reuses the tokenizer it trained
            return text.load_tokenizer(path)
        return _train_tokenizer(cfg, workdir, records)
    raise configlib.ConfigError(
        "config.tokenizer.path: no tokenizer (set a path, train_vocab_size, or model.init_from)"
    )


def check_tokenizer(cfg) -> None:
    """Refuses now the tokenizer resolve_tokenizer would refuse (without reading the data or
    writing the run): a collect.sft run checks its student before it samples the teacher."""
    if cfg.tokenizer.path:
        _check_init_from_tokenizer(cfg)
    elif cfg.model.init_from:
        _init_from_tokenizer_dir(cfg)


def _init_from_tokenizer_dir(cfg) -> pathlib.Path:
    """The folder of model.init_from's own tokenizer, else a ConfigError."""
    source = _init_from_dir(cfg)
    if not source.is_dir() or not any(
        (source / n).is_file() for n in ("tokenizer.json", "tokenizer.model")
    ):
        raise configlib.ConfigError(
            f"config.model.init_from: {cfg.model.init_from} is not a model to start from "
            "with its tokenizer (a Hugging Face folder with tokenizer.json or "
            "tokenizer.model, an r1jax run folder, RUN/checkpoints or RUN/checkpoints/STEP); "
            "a bare checkpoint needs config.tokenizer.path"
        )
    return source


# Text whose ids tell two tokenizers apart (R1 tags, digits, CJK, accents, code, spacing).
_PROBE_TEXT = (
    "<think>Let 3 + 4 = 7; 计算 八加九 = 17. Café, naïve — résumé!</think>\n"
    "<answer>\\frac{1}{2}</answer>  def f(x):\n    return x ** 2  # ok"
)


def _init_from_dir(cfg) -> pathlib.Path:
    # a run, an HF folder, RUN/checkpoints or RUN/checkpoints/STEP
    path, _ = configlib.checkpoint_step(cfg.model.init_from)
    return next((d for d in (path, path.parent) if configlib.is_run_dir(d)), path)


def _check_init_from_tokenizer(cfg) -> None:
    """Refuses a tokenizer.path other than model.init_from's own tokenizer (when it has one):
    its weights know their own ids, and another tokenizer trained them on the wrong ones, with
    no error (a swapped-in student on the world's ids)."""
    if not cfg.model.init_from:
        return
    own_dir = _init_from_dir(cfg)
    if not any((own_dir / n).is_file() for n in ("tokenizer.json", "tokenizer.model")):
        return  # weights without a tokenizer: tokenizer.path names it
    own, configured = text.load_tokenizer(own_dir), text.load_tokenizer(cfg.tokenizer.path)
    # The pieces' ids only: another end token over the same vocabulary is a choice, not a
    # mismatch (a base model with its instruct sibling's tokenizer_config.json).
    ids = lambda t: (t.vocab_size, t.encode(_PROBE_TEXT))  # noqa: E731
    if ids(own) != ids(configured):
        raise configlib.ConfigError(
            f"config.tokenizer.path: {cfg.tokenizer.path} is not the tokenizer of "
            f"model.init_from ({own_dir}; vocab {own.vocab_size} against "
            f"{configured.vocab_size}, or other ids for the same text): its weights know "
            "their own token ids. "
            "Leave tokenizer.path empty to use init_from's tokenizer"
        )


# Files of a Hugging Face tokenizer folder worth keeping beside tokenizer.json.
# generation_config.json names the other ids generation stops on (text.stop_ids).
_HF_TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "generation_config.json",
)


def _keep_tokenizer(path, workdir):
    """Loads the tokenizer at `path` and copies its files into the run, so that the run folder
    alone can be evaluated, exported or resumed from (process 0 writes)."""
    tokenizer = text.load_tokenizer(path)
    path, workdir = pathlib.Path(path), pathlib.Path(workdir)
    if path.is_dir():
        names = ["tokenizer.model"] if (path / "tokenizer.model").is_file() else []
        if (path / "tokenizer.json").is_file():  # load_tokenizer prefers it
            names = [n for n in _HF_TOKENIZER_FILES if (path / n).is_file()]
        copies = [(path / n, n) for n in names]
    else:  # a lone file keeps the name a folder load looks for
        copies = [(path, "tokenizer.model" if path.suffix == ".model" else "tokenizer.json")]
        if path.suffix == ".json" and (path.parent / "generation_config.json").is_file():
            copies.append((path.parent / "generation_config.json", "generation_config.json"))
    # A resumed run must not switch token ids under its checkpoint: not to another tokenizer
    # file of the same name, nor to one of the other format (load_tokenizer prefers .json).
    kept = [n for n in ("tokenizer.model", "tokenizer.json") if (workdir / n).is_file()]
    other = [n for n in kept if n not in {name for _, name in copies}]
    if other:
        raise text.TokenizerError(
            f"{workdir / other[0]}: this run folder was made with another tokenizer than the "
            f"configured {path} (use a new workdir, or the tokenizer the run was made with)"
        )
    for src, name in copies:
        dst = workdir / name
        if name not in ("tokenizer.model", "tokenizer.json") or not dst.is_file():
            continue
        if src.resolve() != dst.resolve() and not filecmp.cmp(src, dst, shallow=False):
            raise text.TokenizerError(
                f"{dst} differs from the configured tokenizer {src}: this run folder was made "
                "with another tokenizer (use a new workdir, or the tokenizer the run was made with)"
            )
    kept_config = workdir / "tokenizer_config.json"
    if isinstance(tokenizer, text.HFTokenizer) and kept_config.is_file():
        kept = text.HFTokenizer(workdir)  # a resumed run: same tokenizer.json, same ids?
        ids = lambda t: (t.eos_id, t.bos_id, t.pad_id)  # noqa: E731
        if ids(kept) != ids(tokenizer):
            raise text.TokenizerError(
                f"{workdir}: its tokenizer has eos/bos/pad ids {ids(kept)}, the configured "
                f"{path} has {ids(tokenizer)} (its config files changed); use a new workdir or "
                "the tokenizer files the run was made with"
            )
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        for src, name in copies:
            dst = workdir / name
            if name == "tokenizer_config.json":
                continue  # written below, with the special tokens this load resolved
            if not dst.exists() and src.resolve() != dst.resolve():
                # Whole or absent: the other processes compare it (above) while this one writes.
                files.write_atomic(dst, src.read_bytes())
        if isinstance(tokenizer, text.HFTokenizer) and not kept_config.is_file():
            # The eos/bos/pad the run trains with, named in its own tokenizer_config.json: they
            # may have come from files the run does not keep (generation_config.json, the
            # model's config.json) or from a guess, and the run folder must load the same ids.
            folder = path if path.is_dir() else path.parent
            source = folder / "tokenizer_config.json"
            config = json.loads(source.read_text()) if source.is_file() else {}
            config.update(tokenizer.special_tokens())
            files.write_json(kept_config, config, sort_keys=False)
    return tokenizer


def _train_tokenizer(cfg, workdir, records):
    size = cfg.tokenizer.train_vocab_size
    logging.info("training a SentencePiece tokenizer (%d pieces)", size)
    try:
        tokenizer = text.SentencePieceTokenizer.train(
            (record_text(r) for r in records), pathlib.Path(workdir) / "tokenizer", vocab_size=size
        )
    except (RuntimeError, text.TokenizerError) as e:  # e.g. fewer pieces than characters
        raise text.TokenizerError(
            f"config.tokenizer.train_vocab_size={size}: SentencePiece could not train ({e})"
        ) from None
    if tokenizer.vocab_size < size:
        logging.warning(
            "config.tokenizer.train_vocab_size=%d: the data gave only %d pieces",
            size,
            tokenizer.vocab_size,
        )
    return tokenizer


# What this run's config decides about a model whose shape comes from elsewhere.
_RUN_NUMERICS = ("dtype", "param_dtype", "remat", "unroll_layers", "attention_chunk")


def _loaded_shape(cfg, model_cfg, loaded):
    """The loaded model's shape with this config's numerics, and config.model.max_seq_len when
    it is longer (a context extension, recorded and exported). Other shape fields the config
    sets cannot apply to loaded weights: a warning names them."""
    keep = {name: getattr(model_cfg, name) for name in _RUN_NUMERICS}
    if cfg.model.max_seq_len > loaded.max_seq_len:
        keep["max_seq_len"] = int(cfg.model.max_seq_len)
    ignored = [
        f"{name}={cfg.model[name]} (it has {getattr(loaded, name)})"
        for name in (*configlib.MODEL_SHAPE_FIELDS, "max_seq_len")
        if cfg.model[name] and cfg.model[name] != getattr(loaded, name) and name not in keep
    ]
    if cfg.model.get("family", "") not in ("", loaded.family):
        ignored.append(f"family={cfg.model.family} (it is {loaded.family})")
    if ignored:
        logging.warning(
            "model.init_from %s brings its own shape; config.model %s not applied",
            cfg.model.init_from,
            ", ".join(ignored),
        )
    return dataclasses.replace(loaded, **keep)


def warn_past_context(model_cfg, tokens: int, what: str) -> None:
    """A warning when a run's sequences reach past the model's max_seq_len: nothing fails
    (RoPE takes any position) but the model was not trained there."""
    if tokens > model_cfg.max_seq_len:
        logging.warning(
            "%s = %d tokens, past the model's max_seq_len %d: positions beyond it are "
            "extrapolated (set config.model.max_seq_len to extend the context on purpose)",
            what,
            tokens,
            model_cfg.max_seq_len,
        )


def initial_params(cfg, model_cfg):
    """Params to start from: None (random init), a Hugging Face folder, or an r1jax run."""
    if not cfg.model.init_from:
        return model_cfg, None
    path, step = configlib.checkpoint_step(cfg.model.init_from)
    if (path / "config.json").exists() and not (path / "checkpoints").exists():
        # In this config's param_dtype: a bfloat16 Hub checkpoint under param_dtype float32
        # trains float32 master weights (kept in bfloat16, Adam's small updates were lost).
        hf_cfg, params = hf_io.load_hf(path, dtype=model_cfg.param_dtype)
        return _loaded_shape(cfg, model_cfg, hf_cfg), params
    run_dir = next((d for d in (path, path.parent) if configlib.is_run_dir(d)), None)
    if run_dir is not None:  # an r1jax run brings its own model shape (this config's numerics)
        run_cfg, _ = configlib.load_resolved(run_dir, language_model=True)
        model_cfg = _loaded_shape(cfg, model_cfg, run_cfg)
    abstract = jax.eval_shape(lambda k: transformer.init_params(model_cfg, k), jax.random.key(0))
    try:
        return model_cfg, checkpoint.restore_params(path, abstract, step=step)
    except ValueError as e:  # another shape, or a damaged checkpoint: one line, not a traceback
        raise configlib.ConfigError(f"config.model.init_from: {e}") from e


def _kind(cfg) -> str:
    """The pipeline's example kind of a supervised stage."""
    return "pretrain" if cfg.stage == "pretrain" else "sft"


def _rows_args(cfg) -> dict:
    """How this process's rows are made: the arguments make_dataset and rows_per_epoch share."""
    return dict(
        kind=_kind(cfg),
        seq_len=cfg.data.seq_len,
        batch_size=cfg.data.batch_size // jax.process_count(),
        template=cfg.data.template,
        pack=cfg.data.pack,
    )


def _steps_for_epochs(cfg, records, tokenizer):
    """(cfg with train.steps = train.epochs passes over `records`, rows one pass fills)."""
    rows = pipeline.rows_per_epoch(records, tokenizer, **_rows_args(cfg))
    steps = max(1, math.ceil(cfg.train.epochs * rows / cfg.data.batch_size))
    logging.info(
        "train.epochs=%g: %d records fill ~%d rows of %d tokens a pass; train.steps = %d",
        cfg.train.epochs,
        len(records),
        rows,
        cfg.data.seq_len,
        steps,
    )
    cfg = configlib.updated(cfg, train__steps=steps)
    configlib.warn_long_warmup(cfg)  # validate could not tell before the steps were known
    return cfg, rows


def make_batches(cfg, records, tokenizer, *, seed, num_epochs=None):
    """This process's share of the global batch, as a grain iterator (state is checkpointable)."""
    ds = pipeline.make_dataset(
        records,
        tokenizer,
        seed=seed,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        num_epochs=num_epochs,
        **_rows_args(cfg),
    )
    return pipeline.resumable_iterator(ds, _kind(cfg))


def _report_truncation(cfg, records, tokenizer, workdir, rows_per_epoch=None) -> None:
    """Warns when SFT examples do not fit data.seq_len (one that long trains without the end of
    its response and its EOS; a pretraining document continues in the next rows) and writes
    the count to WORKDIR/data_stats.json."""
    with distributed.shared_errors():  # process 0's data_stats.json (a full disk)
        _truncation_stats(cfg, records, tokenizer, workdir, rows_per_epoch)


def _truncation_stats(cfg, records, tokenizer, workdir, rows_per_epoch) -> None:
    cut, checked = pipeline.truncation_count(
        records, tokenizer, kind=_kind(cfg), seq_len=cfg.data.seq_len, template=cfg.data.template
    )
    if cut:
        logging.warning(
            "%d of %d training records checked (%.1f%%) are longer than data.seq_len=%d "
            "tokens and are cut (the prompt's start, then the response's end and EOS); raise "
            "data.seq_len or drop long records",
            cut,
            checked,
            100 * cut / checked,
            cfg.data.seq_len,
        )
    if jax.process_index() == 0:
        stats = {"records": len(records), "checked": checked, "longer_than_seq_len": cut}
        if rows_per_epoch is not None:
            stats.update(rows_per_epoch=rows_per_epoch, steps=cfg.train.steps)
        files.write_json(pathlib.Path(workdir) / "data_stats.json", stats)


def eval_program(model_cfg, mesh, rules=sharding.DEFAULT_RULES):
    """`eval_terms` jitted and laid out over the mesh as the training step is (without the
    layout, the partitioner split the activations like the FSDP weights and all-reduced every
    q/k/v and MLP product)."""
    return jax.jit(
        sharding.laid_out(lambda p, b: eval_terms(p, b, model_cfg=model_cfg), mesh, rules)
    )


def make_eval_fn(cfg, model_cfg, mesh, records, tokenizer, rules=sharding.DEFAULT_RULES):
    """A function state -> {'eval_loss': ...} over a fixed set of held-out batches."""
    if not records:
        return None
    batches = []
    # Another order than training's; wrapped, as grain takes seeds below 2**32 (validate's
    # largest seed crashed here).
    seed = (cfg.seed + 1) % 2**32
    with distributed.shared_errors():  # one process's shard with nothing to evaluate
        it = make_batches(cfg, records, tokenizer, seed=seed, num_epochs=None)
        for _ in range(cfg.data.eval_batches):
            batches.append(next(it))
    terms = eval_program(model_cfg, mesh, rules)

    def eval_fn(state):
        nll = count = 0.0
        for b in batches:
            n, c = terms(state.params, sharding.put_batch(b, mesh))
            nll, count = nll + float(n), count + float(c)
        return {"eval_loss": nll / max(count, 1.0)}

    return eval_fn


def run(cfg, workdir) -> dict:
    """Trains a pretrain or sft stage to cfg.train.steps, resuming from WORKDIR when it can."""
    workdir = pathlib.Path(workdir)
    required = pipeline.REQUIRED_FIELDS[_kind(cfg)]  # the string fields a training row needs
    index_dir = workdir / configlib.DATA_INDEX_DIR  # the rows' check, kept for a resume
    with distributed.shared_errors():  # a data file one process cannot read stops them all
        configlib.validate(cfg)
        records = load_records(
            cfg, cfg.data.train, required=required, lazy=True, index_dir=index_dir
        )
        eval_records = []
        if cfg.data.eval:
            eval_records = load_records(
                cfg, cfg.data.eval, required=required, lazy=True, index_dir=index_dir
            )
    tokenizer = resolve_tokenizer(cfg, workdir, records)
    rows = None
    if cfg.train.epochs > 0:  # the step count follows the data (a collected dataset's size)
        cfg, rows = _steps_for_epochs(cfg, records, tokenizer)
    model_cfg = configlib.model_config_from(cfg, vocab_size=tokenizer.vocab_size)
    model_cfg, params = initial_params(cfg, model_cfg)
    warn_past_context(model_cfg, cfg.data.seq_len, "data.seq_len")
    text.check_fits(tokenizer, model_cfg.vocab_size)
    configlib.save_resolved(cfg, workdir, model_cfg)
    mesh = sharding.make_mesh(cfg.mesh.to_dict())
    rules = sharding.rules_from_config(cfg.mesh.rules)
    schedule = state_lib.learning_rate_schedule(cfg.optim, cfg.train.steps)
    optimizer = state_lib.make_optimizer(cfg.optim, cfg.train.steps)
    rng = jax.random.PRNGKey(cfg.seed)
    state, shardings = trainer.init_state(model_cfg, optimizer, rng, mesh, rules, params)
    _report_truncation(cfg, records, tokenizer, workdir, rows_per_epoch=rows)
    iterator = make_batches(cfg, records, tokenizer, seed=cfg.seed)
    ckpt = checkpoint.manager(
        workdir / "checkpoints", max_to_keep=cfg.train.keep_checkpoints, writer=True
    )
    restored = checkpoint.restore_latest(ckpt, state, iterator)
    if restored is not None:
        state, iterator, _ = restored
        logging.info("resumed from step %d", int(state.step))
    step_fn = trainer.jit_step(
        supervised_step,
        shardings,
        mesh,
        rules=rules,
        model_cfg=model_cfg,
        optimizer=optimizer,
        grad_accum=cfg.train.grad_accum,
        lr_schedule=schedule,
    )
    peak = cfg.metrics.peak_flops or metrics_lib.measure_matmul_peak_flops()
    tokens_per_step = cfg.data.batch_size * cfg.data.seq_len
    flops = model_config.flops_per_token(model_cfg, cfg.data.seq_len) * tokens_per_step
    loop = trainer.Loop(
        workdir=workdir,
        cfg=cfg,
        total_steps=cfg.train.steps,
        start_step=int(state.step),
        ckpt_manager=ckpt,
        peak_flops=peak,
    )
    batches = (sharding.put_batch(b, mesh) for b in iterator)
    eval_fn = make_eval_fn(cfg, model_cfg, mesh, eval_records, tokenizer, rules)
    state = loop.run(
        state, step_fn, batches, iterator=iterator, flops_per_step=flops, eval_fn=eval_fn
    )
    with distributed.shared_errors():  # (a pipeline's next stage waits for this one)
        if jax.process_index() == 0:
            metrics_lib.plot_curves(
                metrics_lib.read_jsonl(workdir / "metrics.jsonl"),
                ["loss", "eval_loss", "grad_norm", "lr", "tokens_per_s", "mfu"],
                workdir / "curves.png",
                title=f"{cfg.stage}: {cfg.model.preset}",
            )
    return {"step": int(state.step), "model": model_cfg}
