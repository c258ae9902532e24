"""The reward-model stage: Bradley-Terry on chosen/rejected pairs, held-out and HH-RLHF accuracy.

Shapes: B pairs, T time (a length bucket), k micro-batches.

Data: data.train / data.eval are pair datasets: a world.DATASETS name (data.format=world, e.g.
"preference" / "preference_test"), or a file of {"prompt", "chosen", "rejected"} rows or of
HH-RLHF rows ({"chosen", "rejected"} whole transcripts). Writes WORKDIR/rm_eval.json, metrics,
checkpoints and config.json; `rewards.preference.RewardModelScorer.load(WORKDIR)` scores with it.
"""

import collections
import pathlib

import grain
import jax
import jax.numpy as jnp
import numpy as np
import optax
from absl import logging

from r1jax import configlib, distributed, files, sharding, text
from r1jax.data import pipeline, sources, world
from r1jax.model import transformer
from r1jax.rewards import preference
from r1jax.train import checkpoint, supervised, trainer
from r1jax.train import metrics as metrics_lib
from r1jax.train import state as state_lib

BATCH_KEYS = ("chosen_BxT", "chosen_mask_BxT", "rejected_BxT", "rejected_mask_BxT")
_GROUPS = ("aspect", "domain")  # pair fields that held-out accuracy is broken down by


# ---- the step -------------------------------------------------------------------------------


def rm_loss_terms(model_cfg, params, batch):
    """(summed pair NLL, summed terms) of one (micro-)batch: chosen and rejected in one forward."""
    # Pairs interleaved (chosen, rejected, chosen, ...): each device's rows stay its own pairs
    # (concatenated, the halves' blocks belonged to other devices and every micro-batch's
    # tokens and scores moved between them).
    pairs = lambda c, r: jnp.stack([c, r], axis=1).reshape(-1, *c.shape[1:])
    tokens_RxT = pairs(batch["chosen_BxT"], batch["rejected_BxT"])
    mask_RxT = pairs(batch["chosen_mask_BxT"], batch["rejected_mask_BxT"])
    r_Bx2 = preference.scores(model_cfg, params, tokens_RxT, mask_RxT).reshape(-1, 2)
    terms = preference.bradley_terry_terms(r_Bx2[:, 0], r_Bx2[:, 1])
    return terms["nll"], terms


def reward_model_step(state, batch, *, model_cfg, optimizer, grad_accum=1, lr_schedule=None):
    """One optimizer step on the mean pair loss -log σ(r_c - r_r), exact under accumulation.

    1. Split the batch into `grad_accum` micro-batches of pairs.
    2. Accumulate gradients of the summed NLL and the summed terms over them.
    3. Divide once by the global pair count.
    4. Apply the update unless the loss or gradient is not finite.

    The head's bias gets no gradient: the loss depends on r_c - r_r only, so the bias's true
    gradient is 0, and its computed one is rounding noise that Adam would scale up to a
    full-size step, a random walk of every score.
    """
    # (1)
    micro = trainer.micro_batches(batch, grad_accum)
    grad_fn = jax.value_and_grad(lambda p, b: rm_loss_terms(model_cfg, p, b), has_aux=True)

    # (2)
    def grads_terms(params, mb):
        (_, terms), grads = grad_fn(params, mb)
        return grads, terms

    zero = jnp.zeros((), jnp.float32)
    init_terms = {"nll": zero, "correct": zero, "margin": zero, "pairs": zero}
    init = (jax.tree.map(jnp.zeros_like, state.params), init_terms)
    grads, terms = trainer.accumulate(grads_terms, state.params, micro, init)
    # (3)
    grads = jax.tree.map(lambda g: g / jnp.maximum(terms["pairs"], 1.0), grads)
    grads["head"]["bias"] = jnp.zeros_like(grads["head"]["bias"])
    loss, pair_metrics = preference.terms_to_metrics(terms)
    grad_norm = optax.tree.norm(grads)
    updates, opt_state = state_lib.update_at_step(
        optimizer, grads, state.opt_state, state.params, state.step
    )
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state)
    # (4)
    new_state, finite = trainer.apply_if_finite(state, new_state, loss, grad_norm)
    tokens = jnp.sum(batch["chosen_mask_BxT"]) + jnp.sum(batch["rejected_mask_BxT"])
    metrics = {"loss": loss, **pair_metrics, "grad_norm": grad_norm, "finite": finite}
    metrics["tokens"] = tokens.astype(jnp.float32)
    if lr_schedule is not None:
        metrics["lr"] = lr_schedule(state.step)
    return new_state, metrics


# ---- data -----------------------------------------------------------------------------------


def load_pairs(cfg, path: str, *, max_pairs: int = 0) -> list[dict]:
    """Pairs {"prompt", "chosen", "rejected", ...} of a world dataset name or a pair file."""
    max_pairs = max_pairs or cfg.data.max_records
    if cfg.data.format == "world" and path in world.DATASETS:
        pairs = world.dataset(path, seed=cfg.data.world_seed, n=max_pairs)
    else:
        stats: dict = {}
        pairs = sources.preference_records(
            path, on_error=cfg.data.on_error, stats=stats, max_pairs=max_pairs
        )
        if stats.get("skipped") or stats.get("identical"):
            logging.warning(
                "%s: skipped %d malformed rows, dropped %d pairs with equal replies",
                path,
                stats.get("skipped", 0),
                stats.get("identical", 0),
            )
    if not pairs:
        raise sources.DataError(f"config.data: no preference pairs in {path}")
    missing = [k for k in ("prompt", "chosen", "rejected") if k not in pairs[0]]
    if missing:
        raise sources.DataError(f"{path}: not a pair dataset (its rows lack {missing})")
    return pairs


def _tokenize_pair(pair, tokenizer, template, max_len) -> dict:
    row = lambda side: np.asarray(
        preference.tokenize(
            tokenizer, pair["prompt"], pair[side], template=template, max_len=max_len
        ),
        np.int32,
    )
    return {"chosen": row("chosen"), "rejected": row("rejected")}


def _pad_pairs(items, *, pad_id: int, max_len: int, fixed_len: int) -> dict:
    """A batch of tokenized pairs, both sides padded to one length bucket (or fixed_len)."""
    longest = max(max(len(x["chosen"]), len(x["rejected"])) for x in items)
    length = fixed_len or preference.bucket_length(longest, max_len)
    batch = {}
    for side in ("chosen", "rejected"):
        tokens, mask = preference.pad_rows([x[side] for x in items], length, pad_id)
        batch[f"{side}_BxT"], batch[f"{side}_mask_BxT"] = tokens, mask
    return batch


def pair_batches(
    pairs,
    tokenizer,
    *,
    template: str,
    max_len: int,
    batch_size: int,
    seed: int,
    shard_index: int = 0,
    shard_count: int = 1,
    fixed_len: int = 0,
):
    """An endless iterator of pair batches (BATCH_KEYS, numpy), reshuffled each epoch and
    checkpointable; rows are padded to a length bucket, or to fixed_len when given (processes
    must agree on the shape in a multi-process run)."""
    # Every process sees every pair: all of them stop here together (a process with no pairs
    # ended its stream at the first batch, and the others waited for it in their collective).
    if len(pairs) < shard_count:
        raise sources.DataError(  # one line from main, not a traceback
            f"{len(pairs)} preference pairs for {shard_count} processes: each process reads "
            "its own share and needs at least one"
        )
    ds = grain.MapDataset.source(pairs)[shard_index::shard_count]
    ds = ds.shuffle(seed=seed).repeat(None)
    ds = ds.map(lambda p: _tokenize_pair(p, tokenizer, template, max_len))
    ds = ds.to_iter_dataset(pipeline.read_options())
    pad = lambda items: _pad_pairs(
        items, pad_id=tokenizer.pad_id, max_len=max_len, fixed_len=fixed_len
    )
    return iter(ds.batch(batch_size, drop_remainder=True, batch_fn=pad))


# ---- evaluation -----------------------------------------------------------------------------


class PairEval:
    """Accuracy of a reward model on a fixed set of pairs (tokenized once), overall and by
    aspect, domain and domain/aspect where the pairs carry them."""

    def __init__(self, pairs, scorer: preference.RewardModelScorer):
        self.pairs, self.scorer = pairs, scorer
        self.rows, cut = [], 0
        for p in pairs:
            for side in ("chosen", "rejected"):
                self.rows.append(scorer.tokenize(p["prompt"], p[side]))
                full = preference.tokenize(
                    scorer.tokenizer, p["prompt"], p[side], template=scorer.template, max_len=0
                )
                cut += len(full) > scorer.max_len
        self.truncated = cut / max(len(self.rows), 1)

    def __call__(self, params) -> dict:
        self.scorer.params = params
        s = self.scorer.score_tokens(self.rows)
        margin = s[0::2] - s[1::2]
        out = _summary(margin)
        out["truncated"] = self.truncated
        # The scale RL's normalize reads (RewardModelScorer.load): scores of all responses.
        out["score_mean"], out["score_std"] = float(np.mean(s)), float(np.std(s))
        groups = collections.defaultdict(list)
        for i, p in enumerate(self.pairs):
            for field in _GROUPS:
                if field in p:
                    groups[(f"by_{field}", str(p[field]))].append(i)
            if all(field in p for field in _GROUPS):
                groups[("by_domain_aspect", f"{p['domain']}/{p['aspect']}")].append(i)
        for (table, name), idx in sorted(groups.items()):
            out.setdefault(table, {})[name] = _summary(margin[idx])
        return out


def _summary(margin: np.ndarray) -> dict:
    return {
        "accuracy": float(np.mean(margin > 0)),
        "loss": float(np.mean(np.logaddexp(0.0, -margin))),  # -log σ(margin)
        "margin": float(np.mean(margin)),
        "pairs": int(len(margin)),
    }


def _flat(prefix: str, result: dict) -> dict:
    """metrics.jsonl scalars: eval_accuracy, eval_accuracy/general/helpful, ..."""
    out = {f"{prefix}_{k}": result[k] for k in ("accuracy", "loss", "margin")}
    for name, cell in result.get("by_domain_aspect", result.get("by_aspect", {})).items():
        out[f"{prefix}_accuracy/{name}"] = cell["accuracy"]
    return out


# ---- the run --------------------------------------------------------------------------------


def _check_pairs_differ(cfg, pairs, tokenizer, max_len: int, limit: int = 500) -> None:
    """Refuses a max_len that cuts every pair's chosen and rejected rows (their ends are kept) to
    the same tokens, and warns when it does so to many: such a pair has no margin to learn
    (rm.max_len=2 trained at loss 0.693 and gradient ~0, with no word). Checks up to `limit`
    evenly spaced pairs."""
    sample = pipeline.spaced_sample(pairs, limit)
    same = 0
    for p in sample:
        rows = _tokenize_pair(p, tokenizer, cfg.data.template, max_len)
        same += np.array_equal(rows["chosen"], rows["rejected"])
    if sample and same == len(sample):
        raise configlib.ConfigError(
            f"config.rm.max_len: at {max_len} tokens (the end of each row is kept) chosen and "
            f"rejected are the same tokens in all {len(sample)} pairs checked: nothing to learn"
        )
    if same > 0.1 * len(sample):
        logging.warning(
            "rm.max_len=%d: chosen and rejected are the same tokens in %d of %d pairs checked",
            max_len,
            same,
            len(sample),
        )


def _initial_state(cfg, model_cfg, trunk, optimizer, mesh, rules):
    """A step-0 state around the trunk (random when None) and a seeded random head."""
    init_key, state_key, head_key = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)
    logical = preference.logical_axes(model_cfg)
    if trunk is None:
        init = lambda key: preference.init_params(
            model_cfg, transformer.init_params(model_cfg, key), head_key
        )
        return trainer.init_sharded_state(
            init, logical, optimizer, mesh, rules, init_key, state_key
        )
    params = preference.init_params(model_cfg, trunk, head_key)
    abstract = jax.eval_shape(lambda: params)
    shardings = trainer.state_shardings(logical, abstract, optimizer, mesh, rules)
    return trainer.state_from_params(params, shardings, optimizer, state_key), shardings


def run(cfg, workdir) -> dict:
    """Trains a reward model to cfg.train.steps (resuming from WORKDIR); writes rm_eval.json."""
    workdir = pathlib.Path(workdir)
    with distributed.shared_errors():  # a data file one process cannot read stops them all
        configlib.validate(cfg)
        pairs = load_pairs(cfg, cfg.data.train)
        eval_pairs = load_pairs(cfg, cfg.data.eval) if cfg.data.eval else []
        hh = _hh_pairs(cfg)
    tokenizer = supervised.resolve_tokenizer(cfg, workdir, pairs)
    model_cfg = configlib.model_config_from(cfg, vocab_size=tokenizer.vocab_size)
    model_cfg, trunk = supervised.initial_params(cfg, model_cfg)
    text.check_fits(tokenizer, model_cfg.vocab_size)
    configlib.save_resolved(cfg, workdir, model_cfg)
    max_len = min(cfg.rm.max_len or model_cfg.max_seq_len, model_cfg.max_seq_len)
    _check_pairs_differ(cfg, pairs, tokenizer, max_len)
    mesh = sharding.make_mesh(cfg.mesh.to_dict())
    rules = sharding.rules_from_config(cfg.mesh.rules)
    schedule = state_lib.learning_rate_schedule(cfg.optim, cfg.train.steps)
    optimizer = state_lib.make_optimizer(cfg.optim, cfg.train.steps)
    state, shardings = _initial_state(cfg, model_cfg, trunk, optimizer, mesh, rules)
    iterator = pair_batches(
        pairs,
        tokenizer,
        template=cfg.data.template,
        max_len=max_len,
        batch_size=cfg.data.batch_size // jax.process_count(),
        seed=cfg.seed,
        shard_index=jax.process_index(),
        shard_count=jax.process_count(),
        fixed_len=max_len if jax.process_count() > 1 else 0,
    )
    ckpt = checkpoint.manager(
        workdir / "checkpoints", max_to_keep=cfg.train.keep_checkpoints, writer=True
    )
    restored = checkpoint.restore_latest(ckpt, state, iterator)
    if restored is not None:
        state, iterator, _ = restored
        logging.info("resumed from step %d", int(state.step))
    step_fn = trainer.jit_step(
        reward_model_step,
        shardings,
        mesh,
        rules=rules,
        model_cfg=model_cfg,
        optimizer=optimizer,
        grad_accum=cfg.train.grad_accum,
        lr_schedule=schedule,
    )
    scorer = preference.RewardModelScorer(
        model_cfg,
        state.params,
        tokenizer,
        template=cfg.data.template,
        max_len=max_len,
        mesh=mesh,
        rules=rules,
        batch_size=max(64, cfg.data.batch_size),
    )
    heldout = PairEval(eval_pairs, scorer) if eval_pairs else None
    results: dict[int, dict] = {}  # step -> held-out result (the loop's evals, reused at the end)

    def eval_fn(st):
        results[int(st.step)] = heldout(st.params)
        return _flat("eval", results[int(st.step)])

    loop = trainer.Loop(
        workdir=workdir,
        cfg=cfg,
        total_steps=cfg.train.steps,
        start_step=int(state.step),
        ckpt_manager=ckpt,
        peak_flops=cfg.metrics.peak_flops or 1.0,
    )
    batches = (sharding.put_batch(b, mesh) for b in iterator)
    state = loop.run(
        state, step_fn, batches, iterator=iterator, eval_fn=eval_fn if heldout else None
    )
    report = _final_report(cfg, state, scorer, heldout, results, pairs, max_len, hh)
    with distributed.shared_errors():  # (a pipeline's next stage waits for this one)
        if jax.process_index() == 0:
            files.write_json(workdir / "rm_eval.json", report)
            _log_table(report)
            metrics_lib.plot_curves(
                metrics_lib.read_jsonl(workdir / "metrics.jsonl"),
                ["loss", "accuracy", "eval_accuracy", "margin", "grad_norm", "lr"],
                workdir / "curves.png",
                title=f"reward model: {cfg.model.preset}",
            )
    return {"step": int(state.step), "model": model_cfg, **report}


def _hh_pairs(cfg) -> tuple[list[dict], dict]:
    """(pairs, stats) of rm.hh_eval, read before training: a file with no HH-RLHF pair in it
    (e.g. prompt/chosen/rejected rows) is refused now; its accuracy was NaN, after the run."""
    stats: dict = {}
    if not cfg.rm.hh_eval:
        return [], stats
    hh = sources.hh_rlhf_pairs(
        cfg.rm.hh_eval, on_error="skip", stats=stats, max_pairs=cfg.rm.hh_max_pairs
    )
    if not hh:
        why = (stats.get("errors") or ["no row with two different replies"])[0]
        raise sources.DataError(f"config.rm.hh_eval: no HH-RLHF pair in {cfg.rm.hh_eval} ({why})")
    return hh, stats


def _final_report(cfg, state, scorer, heldout, results, pairs, max_len: int, hh) -> dict:
    """rm_eval.json: held-out accuracy (by aspect / domain) and HH-RLHF accuracy at the end, and
    the mean and std of the scores of the held-out responses (else of up to 500 training
    pairs'), which RL's rl.reward_model.normalize divides by."""
    step = int(state.step)
    report = {"step": step, "train_pairs": len(pairs), "max_len": max_len}
    report["template"] = cfg.data.template
    if heldout is not None:
        result = results.get(step) or heldout(state.params)
        report["heldout_accuracy"] = result["accuracy"]
        report.update({f"heldout_{k}": v for k, v in result.items() if k != "accuracy"})
    else:
        result = PairEval(pipeline.spaced_sample(pairs, 500), scorer)(state.params)
    report["score_mean"], report["score_std"] = result["score_mean"], result["score_std"]
    hh, stats = hh
    if hh:
        result = PairEval(hh, scorer)(state.params)
        report.update(
            hh_accuracy=result["accuracy"],
            hh_pairs=result["pairs"],
            hh_loss=result["loss"],
            hh_margin=result["margin"],
            hh_truncated=result["truncated"],
            hh_skipped=stats.get("skipped", 0) + stats.get("identical", 0),
            hh_file=cfg.rm.hh_eval,
        )
    return report


def _log_table(report: dict) -> None:
    lines = [f"{'pairs':<28}{'n':>6}{'accuracy':>10}{'margin':>9}"]
    if "heldout_pairs" in report:
        row = {k: report[f"heldout_{k}"] for k in ("pairs", "accuracy", "margin")}
        cells = [("held-out", row)]
        for table in ("by_domain", "by_aspect", "by_domain_aspect"):
            cells += [(f"  {name}", c) for name, c in report.get(f"heldout_{table}", {}).items()]
    else:
        cells = []
    if "hh_pairs" in report:
        cells.append(("HH-RLHF", {k: report[f"hh_{k}"] for k in ("pairs", "accuracy", "margin")}))
    for name, c in cells:
        lines.append(f"{name:<28}{c['pairs']:>6}{c['accuracy']:>10.3f}{c['margin']:>9.3f}")
    logging.info("reward model at step %d:\n%s", report["step"], "\n".join(lines))
