"""The whole R1 recipe as one run: stage after stage, each stage's output the next one's input,
finishing with one evaluation table across stages.

A pipeline config (configs/pipeline.py) holds one full stage config per stage under
`stages.<name>` and the order in `pipeline.order`. Inside a stage config, a string "@name" (or
"@name/file") names the folder (or a file) of an earlier stage's output, WORKDIR/name; so the
cold-start stage reads `collect.model = "@r1_zero"`. Any field can be overridden from the
command line: `--config.stages.reasoning_rl.train.steps=100`.

1. For each stage in order: skip it when WORKDIR/<name>/stage_done.json exists; otherwise
   resolve its references, run it in WORKDIR/<name> (a killed stage resumes from its own
   checkpoints) and write stage_done.json.
2. Evaluate every model of `pipeline.table` ((label, model) pairs) on the same held-out reasoning
   problems and general prompts: pass@1, maj@k, greedy, response length, language consistency,
   format rate, and the reward model's score on general prompts (each row cached in
   WORKDIR/table/<label>.json).
3. Write WORKDIR/table.md, table.json and table.png, and log the table.
"""

import json
import pathlib
import time
import traceback

import jax
import numpy as np
from absl import logging

from r1jax import configlib, distributed, evaluation, files, memory, sharding, text
from r1jax.data import world

DONE = "stage_done.json"


def run_stage(cfg, workdir) -> dict:
    """Runs one stage config (any of configlib.STAGES) in `workdir`; returns what it returns.

    An out-of-memory error inside it (XLA's, or r1jax's own check, `memory`) comes out as a
    memory.OutOfMemory naming the stage's memory settings and where it ran out. Another run
    writing in `workdir` meanwhile is refused (files.WorkdirBusy)."""
    try:
        # The process that writes the folder's shared files holds it (each of a pipeline's
        # stage folders too, in turn): another run started on it is refused, by every process.
        with distributed.workdir_lock(workdir):
            return _dispatch(cfg, workdir)
    except Exception as e:
        if cfg.stage == "pipeline" or not memory.is_out_of_memory(e):
            raise  # (a pipeline's stages name their own settings)
        raise out_of_memory(cfg, e) from e


# The settings that size a stage's device memory, named when it runs out.
_TRAINING = ("data.batch_size", "data.seq_len", "train.grad_accum", "model.remat")
_SAMPLING = ("eval.prompts_per_batch", "eval.num_samples", "eval.max_new_tokens")
MEMORY_SETTINGS = {
    "pretrain": (*_TRAINING, "model.attention_chunk"),
    "sft": (*_TRAINING, "model.attention_chunk"),
    "reward_model": ("data.batch_size", "rm.max_len", "train.grad_accum", "model.remat"),
    "rl": (
        "rl.prompts_per_step",
        "rl.num_samples",
        "rl.max_new_tokens",
        "rl.sample_prompts_per_call",
        "rl.num_minibatches",
        "train.grad_accum",
        "model.remat",
        *_SAMPLING,
    ),
    "eval": _SAMPLING,
    "collect": ("collect.prompts_per_batch", "collect.num_samples", "collect.max_new_tokens"),
}


def out_of_memory(cfg, error: BaseException) -> memory.OutOfMemory:
    """`error` in one line, with where in r1jax it ran out and the stage's memory settings."""
    message = (str(error).strip().splitlines() or [type(error).__name__])[0][:400]
    where = ""
    if not isinstance(error, memory.OutOfMemory):  # (r1jax's own check says what it sized)
        package = pathlib.Path(__file__).resolve().parent
        frames = [
            f
            for f in traceback.extract_tb(error.__traceback__)
            if pathlib.Path(f.filename).resolve().is_relative_to(package)
        ]
        if frames:
            last = frames[-1]
            here = pathlib.Path(last.filename)
            where = f" (raised at {here.parent.name}/{here.name}:{last.lineno}, {last.name})"
    names = MEMORY_SETTINGS.get(cfg.stage, ())
    if cfg.stage == "collect" and cfg.collect.sft:
        names = (*names, *_TRAINING)
    settings = ", ".join(f"{name}={_field(cfg, name)!r}" for name in names)
    return memory.OutOfMemory(
        f"stage {cfg.stage} does not fit in device memory{where}: {message} (the settings "
        f"that size it: {settings}; and the model's size, dtype and the mesh)"
    )


def _field(cfg, dotted: str):
    """The value of a dotted field ('?' where the config has none: an error message must not
    fail in turn)."""
    for name in dotted.split("."):
        if not hasattr(cfg, "get") or name not in cfg:
            return "?"
        cfg = cfg[name]
    return cfg


def _dispatch(cfg, workdir) -> dict:
    stage = cfg.stage
    if stage in ("pretrain", "sft"):
        from r1jax.train import supervised

        return supervised.run(cfg, workdir)
    if stage == "rl":
        from r1jax.train import rl

        return rl.run(cfg, workdir)
    if stage == "eval":
        return evaluation.run(cfg, workdir)
    if stage == "collect":
        from r1jax.train import collect

        return collect.run(cfg, workdir)
    if stage == "reward_model":
        from r1jax.train import reward_model

        return reward_model.run(cfg, workdir)
    if stage == "pipeline":
        return run(cfg, workdir)
    raise configlib.ConfigError(
        f"config.stage: unknown stage {stage!r}; expected one of {configlib.STAGES}"
    )


def stage_of(value) -> str | None:
    """The stage an '@name[/path]' value refers to, else None."""
    if isinstance(value, str) and value.startswith("@"):
        return value[1:].split("/", 1)[0]
    return None


def resolve(value, workdir: pathlib.Path):
    """'@name[/path]' -> WORKDIR/name[/path]; other values unchanged."""
    return str(workdir / value[1:]) if stage_of(value) else value


def _leaves(node):
    """(parent, key, value) of every non-section field of a config, depth first."""
    for key in list(node.keys()):
        value = node[key]
        if hasattr(value, "keys"):
            yield from _leaves(value)
        else:
            yield node, key, value


def resolve_config(stage_cfg, workdir: pathlib.Path):
    """A copy of a stage config with every '@name' reference replaced by its folder."""
    out = stage_cfg.copy_and_resolve_references()
    out.unlock()
    for node, key, value in list(_leaves(out)):
        node[key] = resolve(value, workdir)
    return out


def references(stage_cfg) -> set[str]:
    """The stage names a stage config refers to ('@name...')."""
    return {stage_of(value) for _, _, value in _leaves(stage_cfg)} - {None}


def check(cfg) -> None:
    """Stage names, order and references make sense (before hours of work start)."""
    order = list(cfg.pipeline.order)
    stages = cfg.stages
    if not order:
        raise configlib.ConfigError("config.pipeline.order: no stages")
    for i, name in enumerate(order):
        if name not in stages:
            raise configlib.ConfigError(
                f"config.pipeline.order: stage {name!r} has no config under config.stages"
            )
        if stages[name].stage not in configlib.STAGES or stages[name].stage == "pipeline":
            raise configlib.ConfigError(
                f"config.stages.{name}.stage: {stages[name].stage!r} is not a runnable stage"
            )
        for ref in references(stages[name]):
            if ref not in order[:i]:
                raise configlib.ConfigError(
                    f"config.stages.{name}: refers to '@{ref}', which is not an earlier stage"
                )
    for label, model in cfg.pipeline.table:
        if stage_of(model) is not None:
            if stage_of(model) not in order:
                raise configlib.ConfigError(
                    f"config.pipeline.table.{label}: '{model}' is not a stage of this pipeline"
                )


def check_stage_configs(cfg, workdir: pathlib.Path) -> None:
    """Validates every stage's config and the table's evaluation settings now, not when the
    stage is reached (hours later); paths into stage folders are not required to exist yet."""
    order = list(cfg.pipeline.order)
    with configlib.pending_outputs([workdir / name for name in order]):
        for name in order:
            if not (workdir / name / DONE).exists():
                try:
                    configlib.validate(resolve_config(cfg.stages[name], workdir))
                except configlib.ConfigError as e:
                    raise configlib.ConfigError(
                        str(e).replace("config.", f"config.stages.{name}.", 1)
                    ) from None
    if cfg.pipeline.table:
        configlib.validate_eval_sampling(cfg)


def run_stages(cfg, workdir: pathlib.Path) -> dict[str, dict]:
    """Step 1 of the module docstring; returns each stage's done record."""
    order = list(cfg.pipeline.order)
    done = {}
    for i, name in enumerate(order, 1):
        stage_dir = workdir / name
        marker = stage_dir / DONE
        if marker.exists():
            done[name] = json.loads(marker.read_text())
            logging.info("stage %d/%d %s: already done, skipped", i, len(order), name)
            continue
        stage_cfg = resolve_config(cfg.stages[name], workdir)
        logging.info(
            "==== stage %d/%d: %s (%s) in %s ====", i, len(order), name, stage_cfg.stage, stage_dir
        )
        # A stage that left files here was stopped and resumes: its seconds are only this run's.
        resumed = stage_dir.is_dir() and any(stage_dir.iterdir())
        t0 = time.perf_counter()
        run_stage(stage_cfg, stage_dir)
        record = {"stage": stage_cfg.stage, "seconds": time.perf_counter() - t0}
        record["resumed"] = resumed
        with distributed.shared_errors():  # (the processes' barrier before the next stage)
            if jax.process_index() == 0:
                stage_dir.mkdir(parents=True, exist_ok=True)
                files.write_json(marker, record, sort_keys=False)
        done[name] = record
        logging.info("stage %s done in %.1f min", name, record["seconds"] / 60)
    return done


# ---------------------------------------------------------------------------------------------
# The table.


def general_metrics(cfg, model_cfg, params, tokenizer, scorer, records, *, mesh) -> dict:
    """Reward-model score (mean over samples) of the model's answers to general prompts, plus
    rule diagnostics where the world has them (rudeness, translation correct)."""
    e = cfg.pipeline
    template = cfg.eval.template or "world"
    prompts = [text.apply_template(template, r["prompt"]) for r in records]
    ids = [evaluation.encode_prompt(tokenizer, p) for p in prompts]
    texts = []
    root = jax.random.key(cfg.seed + 1)
    per_call = evaluation.prompts_per_call(cfg.eval.prompts_per_batch, mesh)
    # Sampled as the reasoning prompts are (top-k and stop strings too, which were left out).
    sampling = evaluation.eval_config(cfg, mesh)
    stops = evaluation.sampler_stops(sampling, tokenizer)
    for b, start in enumerate(range(0, len(ids), per_call)):
        out, _, _ = evaluation.sample_completions(
            model_cfg,
            params,
            tokenizer,
            ids[start : start + per_call],
            rows=min(per_call, len(ids)),
            key=jax.random.fold_in(root, b),
            mesh=mesh,
            rules=sharding.rules_from_config(cfg.mesh.rules),
            num_samples=e.general_samples,
            max_new_tokens=cfg.eval.max_new_tokens,
            temperature=sampling.temperature,
            top_p=sampling.top_p,
            top_k=sampling.top_k,
            **stops,
        )
        texts += out
    group = [r for r in records for _ in range(e.general_samples)]
    metrics = {}
    if scorer is not None:
        scores = scorer.score([r["prompt"] for r in group], texts)
        metrics["general/rm_score"] = float(np.mean(scores))
    if all(r.get("task") == "world" for r in group):
        metrics["general/correct"] = float(
            np.mean([world.grade_general(t, r) for t, r in zip(texts, group, strict=True)])
        )
        metrics["general/rude_rate"] = float(np.mean([world.is_rude(t) for t in texts]))
        metrics["general/thinks"] = float(np.mean([world.is_reasoning(t) for t in texts]))
    return metrics


def evaluate_model(cfg, label: str, model: str, *, mesh, scorer, reasoning, general) -> dict:
    """One row of the table (reasoning metrics, general metrics) for the model at `model`."""
    src = configlib.updated(cfg, model__init_from=model)
    rules = sharding.rules_from_config(cfg.mesh.rules)
    model_cfg, params, tokenizer, _ = evaluation.load_model(src, mesh, rules)
    template = cfg.eval.template or "world"
    t0 = time.perf_counter()
    result = evaluation.evaluate(
        model_cfg,
        params,
        tokenizer,
        reasoning,
        prompt_fn=lambda r: text.apply_template(template, r["prompt"]),
        cfg=evaluation.eval_config(cfg, mesh),
        mesh=mesh,
        rules=rules,  # the KV cache laid out as the params (config.mesh.rules)
        progress=False,
    )
    row = dict(result.metrics)
    if general:
        row.update(general_metrics(cfg, model_cfg, params, tokenizer, scorer, general, mesh=mesh))
    row["eval_seconds"] = time.perf_counter() - t0
    row["model"] = model
    logging.info("table row %s (%.0f s): %s", label, row["eval_seconds"], _short(row, cfg))
    return row


def _short(row: dict, cfg) -> str:
    keys = ("pass@1", f"maj@{max(cfg.eval.ks)}", "language_consistency", "general/rm_score")
    return ", ".join(f"{k} {row[k]:.3f}" for k in keys if k in row)


COLUMNS = (
    ("pass@1", "pass@1", "{:.3f}"),
    ("maj@{k}", "maj@{k}", "{:.3f}"),
    ("greedy", "pass@1_greedy", "{:.3f}"),
    ("length", "mean_length", "{:.1f}"),
    ("lang. consistency", "language_consistency", "{:.3f}"),
    ("format", "format_rate", "{:.3f}"),
    ("reasoning", "reasoning_rate", "{:.3f}"),
    ("RM score (general)", "general/rm_score", "{:+.2f}"),
    ("rude (general)", "general/rude_rate", "{:.3f}"),
    ("correct (general)", "general/correct", "{:.3f}"),
)


def stage_time_line(done: dict[str, dict]) -> str:
    """The stages' total minutes, saying which count only the run that finished them (those
    resumed after a stop: the time before the stop is not known)."""
    total = sum(d["seconds"] for d in done.values()) / 60
    resumed = [n for n, d in done.items() if d.get("resumed")]
    if not resumed:
        return f"Stages took {total:.1f} min."
    return (
        f"Stages took {total:.1f} min in the runs that finished them ({', '.join(resumed)} "
        "resumed after a stop: their time before it is not counted)."
    )


def format_markdown(
    rows: dict[str, dict], k: int, minutes: dict[str, float], resumed=frozenset()
) -> str:
    """The table as Markdown: one row per model, the headline columns, stage minutes (marked *
    for a stage resumed after a stop: the minutes of the run that finished it)."""
    columns = [(t.format(k=k), key.format(k=k), fmt) for t, key, fmt in COLUMNS]
    lines = [
        "| stage | " + " | ".join(t for t, _, _ in columns) + " | minutes |",
        "|---|" + "---:|" * (len(columns) + 1),
    ]
    for label, row in rows.items():
        cells = [fmt.format(row[key]) if key in row else "-" for _, key, fmt in columns]
        m = minutes.get(label)
        cell = "-" if m is None else f"{m:.1f}" + ("*" if label in resumed else "")
        lines.append(f"| {label} | " + " | ".join(cells) + f" | {cell} |")
    if resumed:
        lines.append("\n\\* resumed after a stop: the minutes of the run that finished the stage")
    return "\n".join(lines) + "\n"


def findings(rows: dict[str, dict], checks) -> list[str]:
    """The comparisons the recipe predicts (pipeline.checks: [metric, lower row, higher row]),
    each stated with its numbers and whether it held in this run."""
    out = []
    for metric, low, high in checks:
        if low in rows and high in rows and metric in rows[low] and metric in rows[high]:
            a, b = rows[low][metric], rows[high][metric]
            verdict = "holds" if b > a else "does NOT hold"
            out.append(f"{metric}: {low} {a:.3f} -> {high} {b:.3f} ({verdict})")
    return out


def plot_table(rows: dict[str, dict], path, k: int) -> None:
    """Grouped bars per stage: pass@1, maj@k, language consistency, format, RM score."""
    import matplotlib  # only plotting needs it

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    labels = list(rows)
    metrics = [
        ("pass@1", "pass@1"),
        (f"maj@{k}", f"maj@{k}"),
        ("lang. consistency", "language_consistency"),
        ("format", "format_rate"),
    ]
    fig, axes = plt.subplots(1, 2, figsize=(13, 4.2), gridspec_kw={"width_ratios": [3, 1]})
    x = np.arange(len(labels))
    width = 0.8 / len(metrics)
    for i, (title, key) in enumerate(metrics):
        values = [rows[lab].get(key, np.nan) for lab in labels]
        axes[0].bar(x + (i - len(metrics) / 2 + 0.5) * width, values, width, label=title)
    axes[0].set_xticks(x, labels, rotation=30, ha="right")
    axes[0].set_ylim(0, 1.05)
    axes[0].legend(ncol=4, fontsize=8, loc="upper left")
    axes[0].set_title("held-out reasoning problems")
    axes[0].grid(axis="y", alpha=0.3)
    rm = [rows[lab].get("general/rm_score", np.nan) for lab in labels]
    axes[1].bar(x, rm, color="tab:purple")
    axes[1].set_xticks(x, labels, rotation=30, ha="right")
    axes[1].set_title("general prompts: reward-model score (bars)", fontsize=10)
    axes[1].grid(axis="y", alpha=0.3)
    correct = [rows[lab].get("general/correct", np.nan) for lab in labels]
    if not np.all(np.isnan(correct)):  # the world's rule check, which the reward model lacks
        twin = axes[1].twinx()
        twin.plot(x, correct, "o-", color="black")
        twin.set_ylim(0, 1.05)
        twin.set_ylabel("correct by the rule check (line)")
    fig.tight_layout()
    files.save_figure(fig, path, dpi=100)
    plt.close(fig)


def write_table(cfg, workdir: pathlib.Path, done: dict[str, dict]) -> dict:
    """Steps 2 and 3 of the module docstring; returns {label: metrics}."""
    table_dir = workdir / "table"
    mesh = sharding.make_mesh(cfg.mesh.to_dict())
    reasoning = evaluation.load_eval_records(cfg)
    general = []
    if cfg.pipeline.general_eval:
        from r1jax.train import supervised

        general = supervised.load_records(cfg, cfg.pipeline.general_eval)
        general = general[: cfg.pipeline.general_problems]
    scorer = None
    if cfg.pipeline.reward_model:
        from r1jax.rewards import preference

        scorer = preference.RewardModelScorer.load(
            resolve(cfg.pipeline.reward_model, workdir), mesh=mesh
        )
    rows = {}
    for label, model in cfg.pipeline.table:
        path = table_dir / f"{label}.json"
        if path.exists():
            rows[label] = json.loads(path.read_text())
            continue
        row = evaluate_model(
            cfg,
            label,
            resolve(model, workdir),
            mesh=mesh,
            scorer=scorer,
            reasoning=reasoning,
            general=general,
        )
        with distributed.shared_errors():  # process 0's write (a full disk) stops them all
            if jax.process_index() == 0:
                table_dir.mkdir(parents=True, exist_ok=True)
                files.write_json(path, row)
        rows[label] = row
    k = max(int(x) for x in cfg.eval.ks if x <= cfg.eval.num_samples)
    minutes, resumed = {}, set()
    for label, model in cfg.pipeline.table:
        name = stage_of(model)
        if name in done:
            minutes[label] = done[name]["seconds"] / 60
            if done[name].get("resumed"):
                resumed.add(label)
    notes = findings(rows, [tuple(c) for c in cfg.pipeline.checks])
    body = format_markdown(rows, k, minutes, resumed)
    total = sum(d["seconds"] for d in done.values()) / 60
    summary = {
        "rows": rows,
        "order": list(rows),  # the table's row order (the keys below are sorted)
        "stage_minutes": {n: d["seconds"] / 60 for n, d in done.items()},
        "resumed_stages": [n for n, d in done.items() if d.get("resumed")],
        "total_stage_minutes": total,
        "findings": notes,
        "eval": {
            "problems": len(reasoning),
            "samples": cfg.eval.num_samples,
            "temperature": cfg.eval.temperature,
            "general_prompts": len(general),
            "general_samples": cfg.pipeline.general_samples,
        },
    }
    with distributed.shared_errors():  # process 0's files (a full disk) fail every process
        if jax.process_index() == 0:
            head = (
                f"Held-out: {len(reasoning)} reasoning problems x {cfg.eval.num_samples} "
                f"samples (T {cfg.eval.temperature}, top-p {cfg.eval.top_p}); {len(general)} "
                f"general prompts x {cfg.pipeline.general_samples} samples scored by the reward "
                f"model. {stage_time_line(done)}\n\n"
            )
            tail = "".join(f"- {n}\n" for n in notes)
            files.write_atomic(workdir / "table.md", head + body + ("\n" + tail if tail else ""))
            files.write_json(workdir / "table.json", summary)
            plot_table(rows, workdir / "table.png", k)
    logging.info("R1 pipeline table (%s):\n%s%s", workdir / "table.md", body, "\n".join(notes))
    return rows


def run(cfg, workdir) -> dict:
    """The pipeline stage: every stage in order, then the evaluation table."""
    workdir = pathlib.Path(workdir)
    with distributed.shared_errors():  # a check or process 0's write stops every process
        check(cfg)
        check_stage_configs(cfg, workdir)
        configlib.check_resumable(cfg, workdir)  # not over a single stage's run folder
        if jax.process_index() == 0:
            workdir.mkdir(parents=True, exist_ok=True)
            files.write_json(workdir / "config.json", {"config": cfg.to_dict()}, default=str)
    t0 = time.perf_counter()
    done = run_stages(cfg, workdir)
    rows = write_table(cfg, workdir, done) if cfg.pipeline.table else {}
    logging.info("pipeline finished in %.1f min", (time.perf_counter() - t0) / 60)
    return {"stages": done, "table": rows}
