"""benchmarks/weight_stream.py's units: its streaming rate is in GB/s of 10^9 bytes, as
sampler.py's read bandwidth and `config.decode_bytes_per_step` count bytes."""

import importlib.util
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("weight_stream", REPO / "benchmarks/weight_stream.py")
weight_stream = importlib.util.module_from_spec(spec)
spec.loader.exec_module(weight_stream)


def test_streaming_rate_is_bytes_over_seconds_in_decimal_gigabytes(monkeypatch):
    monkeypatch.setattr(weight_stream, "_best", lambda fn, *args, repeats: 0.5)  # seconds
    # 2 MiB = 2,097,152 bytes read in 0.5 s: 0.0041943 GB/s (not 2/1024/0.5 = 0.0039 "GB"/s).
    assert weight_stream.stream_gbs(2, repeats=1) == pytest.approx(2 * 2**20 / 1e9 / 0.5)
