"""The main job, shortened: R1-Zero from the shipped world base, and the base's reproduction."""

import json
import pathlib

import numpy as np
import pytest

from r1jax import configlib
from r1jax.train import metrics as metrics_lib

REPO = pathlib.Path(__file__).resolve().parents[1]
BASE = REPO / "r1jax" / "assets" / "world_base"


def test_the_shipped_base_has_its_provenance():
    prov = json.loads((BASE / "provenance.json").read_text())
    assert prov["command"] == "r1jax --config=configs/pretrain.py:tiny --workdir=runs/world-base"
    assert (BASE / "model.safetensors").stat().st_size > 1_000_000
    cfg = configlib.load_config(str(REPO / "configs/r1_zero.py") + ":tiny")
    assert pathlib.Path(cfg.model.init_from) == BASE and pathlib.Path(cfg.tokenizer.path) == BASE


@pytest.fixture(scope="module")
def corpus_once():
    """world.dataset, its rows made once per (name, seed, n) in this module: both pretraining
    checks read the same 50 000-row corpus (Python makes it in 5-10 s); each run gets copies."""
    from r1jax.data import world

    made = {}

    def dataset(name, *, seed=0, n=0):
        if (name, seed, n) not in made:
            made[name, seed, n] = make(name, seed=seed, n=n)
        return [dict(row) for row in made[name, seed, n]]

    make = world.dataset
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(world, "dataset", dataset)
        yield


def _two_pretraining_steps(variant: str, workdir) -> list[dict]:
    """Runs configs/pretrain.py:<variant> for two steps; returns its metric rows with a loss."""
    from r1jax.train import supervised

    cfg = configlib.load_config(
        str(REPO / "configs/pretrain.py") + f":{variant}",
        train__steps=2,
        train__log_every=1,
        train__checkpoint_every=2,
        metrics__tensorboard=False,
    )
    supervised.run(cfg, workdir)
    return [r for r in metrics_lib.read_jsonl(workdir / "metrics.jsonl") if "loss" in r]


def test_pretraining_command_starts_like_the_shipped_base(tmp_path, corpus_once):
    """Two steps of configs/pretrain.py:tiny give the recorded first losses and the same
    tokenizer, byte for byte: the base model is reproducible from its command and seed."""
    prov = json.loads((BASE / "provenance.json").read_text())
    rows = _two_pretraining_steps("tiny", tmp_path)
    assert (tmp_path / "tokenizer.model").read_bytes() == (BASE / "tokenizer.model").read_bytes()
    got = [(r["step"], r["loss"]) for r in rows]
    want = [(r["step"], r["loss"]) for r in prov["first_steps"]]
    assert [s for s, _ in got] == [s for s, _ in want]
    np.testing.assert_allclose([v for _, v in got], [v for _, v in want], rtol=2e-5)


def _short_config():
    return configlib.load_config(
        str(REPO / "configs/r1_zero.py") + ":tiny",
        train__steps=STEPS,
        rl__prompts_per_step=8,
        optim__lr=1e-4,
        rl__log_samples_every=5,
        eval__max_problems=16,
        eval__num_samples=8,
        eval__ks=(1, 2, 4, 8),
        metrics__tensorboard=False,
    )


@pytest.fixture(scope="module")
def short_run(tmp_path_factory):
    """configs/r1_zero.py:tiny, shortened: 16 steps of 8 prompts at a 2.5x learning rate (the
    full run's rise, compressed), and a small evaluation."""
    from r1jax.train import rl

    workdir = tmp_path_factory.mktemp("r1_zero")
    rl.run(_short_config(), workdir)
    return workdir


STEPS = 16


def test_short_r1_zero_run_connects_every_piece(short_run):
    rows = [r for r in metrics_lib.read_jsonl(short_run / "metrics.jsonl") if "reward" in r]
    assert [r["step"] for r in rows] == list(range(1, STEPS + 1))
    for key in ("reward/accuracy", "reward/format", "completion_len_mean", "kl_ref", "entropy"):
        assert all(np.isfinite(r[key]) for r in rows), key
    flops = [r["total_flops"] for r in rows]
    assert flops[0] > 0 and all(b > a for a, b in zip(flops, flops[1:]))
    summary = json.loads((short_run / "summary.json").read_text())
    for when in ("before", "after"):
        assert 0.0 <= summary[when]["pass@1"] <= 1.0
        assert summary[when]["maj@8"] >= 0.0 and summary[when]["pass@8"] >= summary[when]["pass@1"]
    assert summary["compute"]["total_flops"] == pytest.approx(flops[-1], rel=1e-6)
    assert (short_run / "report.png").stat().st_size > 20_000
    # The run folder alone can be evaluated or exported: it keeps its tokenizer.
    assert (short_run / "tokenizer.model").read_bytes() == (BASE / "tokenizer.model").read_bytes()
    samples = metrics_lib.read_jsonl(short_run / "samples.jsonl")
    assert {s["step"] for s in samples} == {5, 10, 15}
    assert all("<answer>" in s["completion"] or s["completion"] for s in samples)


def test_short_r1_zero_run_raises_the_reward(short_run):
    rows = [r for r in metrics_lib.read_jsonl(short_run / "metrics.jsonl") if "reward" in r]
    # The format reward pays for reasoning; the base reasons in ~20% of its T=1 samples, and
    # reasoning is right ~4x as often on chain problems. (Seeded run: 0.35 -> 0.74.)
    for key, margin in (("reward", 0.2), ("reward/format", 0.2), ("completion_len_mean", 5.0)):
        first = np.mean([r[key] for r in rows[:4]])
        last = np.mean([r[key] for r in rows[-4:]])
        assert last > first + margin, (key, first, last)


def test_the_shipped_student_starts_like_its_command(tmp_path, corpus_once):
    """The distillation student (configs/pretrain.py:student): its provenance names the command,
    and two steps of it give the recorded first losses (the world base's tokenizer, reused)."""
    student = REPO / "r1jax" / "assets" / "world_student"
    prov = json.loads((student / "provenance.json").read_text())
    assert prov["command"].startswith("r1jax --config=configs/pretrain.py:student ")
    assert (student / "tokenizer.model").read_bytes() == (BASE / "tokenizer.model").read_bytes()
    got = [r["loss"] for r in _two_pretraining_steps("student", tmp_path)]
    np.testing.assert_allclose(got, [r["loss"] for r in prov["first_steps"]], rtol=2e-5)


def test_a_finished_run_started_again_evaluates_nothing_again(short_run, monkeypatch):
    # The same command on a finished run sampled its after-evaluation again (2 minutes here,
    # hours at the real sizes); eval_before was already read back.
    from r1jax.train import report, rl

    summary = (short_run / "summary.json").read_text()

    def evaluate(self, params, name, *, quick=False):
        raise AssertionError(f"{name} evaluated again")

    monkeypatch.setattr(report.Evaluator, "evaluate", evaluate)
    rl.run(_short_config(), short_run)
    assert (short_run / "summary.json").read_text() == summary
