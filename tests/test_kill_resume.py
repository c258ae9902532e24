"""benchmarks/kill_resume.py's comparison: timing fields and the workdir's path are let go,
everything else is compared (runs themselves are the tool's job, not the suite's)."""

import importlib.util
import json
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("kill_resume", REPO / "benchmarks/kill_resume.py")
kill_resume = importlib.util.module_from_spec(spec)
spec.loader.exec_module(kill_resume)


def _run_folder(root: pathlib.Path, *, step_s: float, loss: float, std: float) -> pathlib.Path:
    root.mkdir()
    rows = [
        {"step": 1, "loss": loss, "reward_std": std, "step_time_s": step_s, "mfu": 0.1},
        {"step": 2, "loss": 0.5, "tokens_per_s": 1000 * step_s, "rewards/seconds": step_s},
    ]
    (root / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    done = {"seconds": 60 * step_s, "resumed": step_s > 1, "output": str(root / "model")}
    (root / "stage_done.json").write_text(json.dumps(done))
    (root / "tokenizer.model").write_bytes(b"\x00spm")
    (root / "table.md").write_text(f"| minutes | {step_s} |")  # prints times: not compared
    (root / "tensorboard").mkdir()
    (root / "tensorboard" / "events").write_bytes(bytes([int(step_s)]))
    return root


def test_timing_fields_resumed_markers_and_paths_do_not_count(tmp_path):
    a = _run_folder(tmp_path / "a", step_s=1.0, loss=2.0, std=0.25)
    b = _run_folder(tmp_path / "b", step_s=7.0, loss=2.0, std=0.25)
    assert kill_resume.compare(a, b) == []


@pytest.mark.parametrize(
    "change, expected",
    [
        (dict(loss=2.0000001), "metrics.jsonl: [0]/loss: 2.0 against 2.0000001"),
        # Keys that merely contain "_s" or "seconds" somewhere are results, not times.
        (dict(std=0.3), "metrics.jsonl: [0]/reward_std: 0.25 against 0.3"),
    ],
)
def test_a_changed_result_is_named(tmp_path, change, expected):
    a = _run_folder(tmp_path / "a", step_s=1.0, loss=2.0, std=0.25)
    b = _run_folder(tmp_path / "b", **{"step_s": 1.0, "loss": 2.0, "std": 0.25, **change})
    assert kill_resume.compare(a, b) == [expected]


def test_missing_extra_and_changed_files_are_named(tmp_path):
    a = _run_folder(tmp_path / "a", step_s=1.0, loss=2.0, std=0.25)
    b = _run_folder(tmp_path / "b", step_s=1.0, loss=2.0, std=0.25)
    (a / "summary.json").write_text("{}")
    (b / "samples.jsonl").write_text("")
    (b / "tokenizer.model").write_bytes(b"\x01spm")
    (b / "metrics.jsonl").write_text((b / "metrics.jsonl").read_text()[:-20])  # cut by a kill
    problems = kill_resume.compare(a, b)
    assert problems[:2] == [
        "summary.json: only in the uninterrupted run",
        "samples.jsonl: only in the killed run",
    ]
    assert problems[2].startswith("metrics.jsonl: does not parse (")
    assert problems[3:] == ["tokenizer.model: other bytes"]


def test_the_timing_rule():
    timing = ("generate_s", "eval_seconds", "seconds", "gen_tokens_per_s", "stage_minutes", "mfu")
    kept = ("reward_std", "num_samples", "batch_size", "rewards/timeouts/accuracy", "mfu_target")
    assert all(kill_resume._timing(k) for k in timing + ("resumed", "resumed_stages"))
    assert not any(kill_resume._timing(k) for k in kept)
