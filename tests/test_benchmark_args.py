"""The benchmarks refuse a count of timed steps or calls that leaves nothing to time, in one
line naming the flag, before they build anything (statistics.median of no times raised
StatisticsError at the end of the run)."""

import importlib.util
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]


def _load(name):
    spec = importlib.util.spec_from_file_location(name, REPO / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "name, argv, flag",
    [
        ("grpo_step", ["--side", "r1jax", "--steps", "0"], "--steps"),
        ("grpo_step", ["--side", "r1jax", "--warmup", "-1"], "--warmup"),
        ("sampler", ["--side", "r1jax", "--repeats", "0"], "--repeats"),
        (
            "scaling",
            ["--steps", "0", "--meshes", "1x1x1", "--kinds", "sft", "--rows", "1"],
            "--steps",
        ),
    ],
)
def test_nothing_to_time_is_refused_naming_the_flag(
    name, argv, flag, tmp_path, monkeypatch, capsys
):
    module = _load(name)
    model_dir = [] if name == "scaling" else ["--model-dir", str(tmp_path)]  # (an empty one)
    monkeypatch.setattr(sys, "argv", [name, *model_dir, *argv])
    monkeypatch.setenv("XLA_FLAGS", "")  # (the scripts add to it for their own processes)
    with pytest.raises(SystemExit) as exit_info:
        module.main()
    assert exit_info.value.code == 2
    assert flag in capsys.readouterr().err
