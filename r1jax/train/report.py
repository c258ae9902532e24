"""What an RL run leaves behind for people: held-out evaluations before/after, summary.json and
report.png (training curves and the test-time-compute curve), and sampled completions.

The evaluations are r1jax.evaluation's (pass@1 over k samples at the eval temperature, greedy
pass@1, unbiased pass@k, maj@k); compute is counted as MFU counts it (`step_flops`): 3 forwards a
trained token for the update plus a forward per sampled and per scored (reference/old log-prob)
token.
"""

import dataclasses
import json
import pathlib
import time

import jax
from absl import logging

from r1jax import distributed, evaluation, files, sharding, text
from r1jax.model import config as model_config
from r1jax.train import metrics as metrics_lib

# Headline numbers copied from each evaluation into summary.json, in this order.
HEADLINE = (
    "pass@1",
    "pass@1_greedy",
    "format_rate",
    "reasoning_rate",
    "mean_length",
    "truncation_rate",
    "language_consistency",
)
CURVES = (
    "reward",
    "reward/accuracy",
    "completion_len_mean",
    "kl_ref",
    "entropy",
    "reward/format",
)


def step_flops(
    model_cfg,
    *,
    trained_tokens: float,
    generated_tokens: float,
    scored_tokens: float,
    epochs: int,
    seq_len: int,
    trained_models: int = 1,
) -> dict:
    """One RL step's compute, in the count MFU uses (`forward_flops_per_token`: the matmuls,
    LM head and attention of a forward): training 3 forwards a token (forward and backward) per
    epoch and trained model, and a forward per sampled and scored token.

    trained_tokens: prompt + completion tokens of the rollout batch (the update's D per epoch);
    generated_tokens: sampled tokens; scored_tokens: tokens the reference (and old) log-prob
    passes read; seq_len: the rollout's sequence length (prompt + completion), which the
    attention term counts (not the model's max_seq_len, 32k-128k for real presets);
    trained_models: 2 for PPO with a separate critic (its forward and backward as well).
    """
    fwd = model_config.forward_flops_per_token(model_cfg, seq_len)
    return {
        "train_flops": 3.0 * fwd * trained_tokens * epochs * trained_models,
        "rollout_flops": fwd * (generated_tokens + scored_tokens),
    }


class Evaluator:
    """Held-out evaluation of an RL run's policy, written next to its metrics."""

    def __init__(self, cfg, workdir, model_cfg, tokenizer, records, mesh):
        self.cfg, self.workdir = cfg, pathlib.Path(workdir)
        self.model_cfg, self.tokenizer, self.mesh = model_cfg, tokenizer, mesh
        limit = cfg.eval.max_problems or cfg.rl.eval_prompts
        self.records = records[:limit] if limit else records
        template = cfg.eval.template or cfg.rl.template
        self.prompt_fn = lambda r: text.apply_template(template, r["prompt"])
        self.eval_cfg = evaluation.eval_config(cfg, mesh)

    def evaluate(self, params, name: str, *, quick: bool = False) -> evaluation.EvalResult:
        """Evaluates `params`; writes {name}.json and {name}_samples.jsonl unless quick.

        Unless quick, finished batches are journaled in {name}_journal.jsonl (as the eval
        stage's): a run killed during its before / after evaluation resumes it there."""
        eval_cfg = self.eval_cfg
        journal = None
        if quick:  # periodic checks during training: fewer samples, no curves worth keeping
            n = min(eval_cfg.num_samples, 8)
            eval_cfg = dataclasses.replace(eval_cfg, num_samples=n, ks=(1, n), greedy=False)
        else:
            prompts = [self.prompt_fn(r) for r in self.records]
            header = evaluation.journal_header(eval_cfg, prompts, self.model_cfg, params)
            journal = (self.workdir / f"{name}_journal.jsonl", header)
        t0 = time.perf_counter()
        result = evaluation.evaluate(
            self.model_cfg,
            params,
            self.tokenizer,
            self.records,
            prompt_fn=self.prompt_fn,
            cfg=eval_cfg,
            mesh=self.mesh,
            rules=sharding.rules_from_config(self.cfg.mesh.rules),
            progress=not quick,
            journal=journal,
        )
        logging.info(
            "evaluation %s (%d problems, %.0f s):\n%s",
            name,
            len(self.records),
            time.perf_counter() - t0,
            evaluation.format_table(result.metrics),
        )
        if not quick:
            with distributed.shared_errors():  # process 0's write (a full disk) stops them all
                if jax.process_index() == 0:
                    evaluation.write_result(result, self.workdir, name)
                    journal[0].unlink(missing_ok=True)  # the results hold it all now
        return result

    def load(self, name: str) -> evaluation.EvalResult | None:
        """A result written earlier by this run (e.g. the 'before' of a resumed run). Its journal
        is removed, if a kill came between the result and the journal's removal."""
        path, saved = self.workdir / f"{name}.json", None
        # Process 0's reading (the processes must agree whether to evaluate again).
        with distributed.shared_errors():
            if jax.process_index() == 0 and path.exists():
                (self.workdir / f"{name}_journal.jsonl").unlink(missing_ok=True)
                saved = json.loads(path.read_text())
        saved = distributed.from_primary(saved)
        if saved is None:
            return None
        return evaluation.EvalResult(metrics=saved["metrics"], curves=saved["curves"], samples=[])


def summary(before, after, flops: dict, *, steps: int) -> dict:
    """The numbers a reader wants first: before vs after, test-time compute, training compute."""
    out = {"steps": steps, "compute": dict(flops)}
    out["compute"]["total_flops"] = sum(flops.values())
    for label, result in (("before", before), ("after", after)):
        if result is None:
            continue
        m = result.metrics
        row = {key: m[key] for key in HEADLINE if key in m}
        for k in map(int, result.curves["k"]):  # JSON round trips may make them floats
            for name in ("pass", "maj"):
                if f"{name}@{k}" in m:
                    row[f"{name}@{k}"] = m[f"{name}@{k}"]
        for key, value in m.items():
            if "/" in key and key.split("/", 1)[1] in HEADLINE:  # per-kind breakdown
                row[key] = value
        out[label] = row
    if before is not None and after is not None:
        out["gain"] = {
            key: after.metrics[key] - before.metrics[key]
            for key in HEADLINE
            if key in before.metrics and key in after.metrics
        }
    return out


def write_report(workdir, before, after, flops: dict, *, steps: int) -> dict:
    """summary.json and report.png (training curves + pass@k / maj@k against k)."""
    workdir = pathlib.Path(workdir)
    result = summary(before, after, flops, steps=steps)
    files.write_json(workdir / "summary.json", result)
    rows = metrics_lib.read_jsonl(workdir / "metrics.jsonl")
    _plot(workdir / "report.png", rows, {"before": before, "after": after})
    return result


def _plot(path, rows, results) -> None:
    import matplotlib  # plotting only; as train/metrics.py

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in CURVES if any(k in r for r in rows)]
    results = {label: r for label, r in results.items() if r is not None}
    panels = len(keys) + 2 * bool(results)
    cols = 4
    nrows = -(-panels // cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.0 * cols, 3.0 * nrows), squeeze=False)
    flat = list(axes.flat)
    for ax, key in zip(flat, keys):
        pts = [(r["step"], r[key]) for r in rows if r.get(key) is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.0)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    if results:
        for ax, name in zip(flat[len(keys) : len(keys) + 2], ("pass@k", "maj@k")):
            for label, result in results.items():
                ax.plot(result.curves["k"], result.curves[name], marker="o", label=label)
            ax.set_xscale("log", base=2)
            ax.set_xlabel("k (samples per problem)")
            ax.set_title(f"held-out {name}")
            ax.set_ylim(0.0, 1.0)
            ax.grid(alpha=0.3)
            ax.legend()
    for ax in flat[panels:]:
        ax.axis("off")
    fig.tight_layout()
    files.save_figure(fig, path, dpi=100)
    plt.close(fig)
