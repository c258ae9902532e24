"""Metrics: JSONL and TensorBoard writers, a progress bar, the matmul peak for MFU, and plots."""

import json
import math
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import tqdm

from r1jax import distributed, files

_PEAK_CACHE: dict[str, float] = {}


def measure_matmul_peak_flops(n: int = 1024, repeats: int = 5) -> float:
    """FLOP/s of a large float32 matmul on the default device: the practical peak for MFU."""
    key = f"{jax.devices()[0].platform}:{n}"
    if key in _PEAK_CACHE:
        return _PEAK_CACHE[key]
    a = jnp.ones((n, n), jnp.float32)
    matmul = jax.jit(lambda x, y: x @ y)
    matmul(a, a).block_until_ready()
    best = math.inf
    for _ in range(repeats):
        start = time.perf_counter()
        matmul(a, a).block_until_ready()
        best = min(best, time.perf_counter() - start)
    _PEAK_CACHE[key] = 2.0 * n**3 / best
    return _PEAK_CACHE[key]


def peak_units() -> int:
    """How many times the measured peak the whole job has: one per accelerator chip; on CPU one
    per process (the probe's matmul already uses every core of its host, which host devices
    made by --xla_force_host_platform_device_count share)."""
    if jax.devices()[0].platform == "cpu":
        return jax.process_count()
    return jax.device_count()


# All rows of a metrics.jsonl file ([] when it does not exist; a last line cut short by a kill
# is dropped).
read_jsonl = files.read_jsonl


def drop_rows_after(path, step: int) -> None:
    """Rewrites a JSONL log without its rows of steps after `step` (a resumed run redoes them)."""
    path = pathlib.Path(path)
    if path.exists():
        kept = [r for r in read_jsonl(path) if r.get("step", 0) <= step]
        files.write_atomic(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in kept))


class MetricsWriter:
    """Writes one JSON row per logged step to metrics.jsonl and scalars to TensorBoard."""

    def __init__(self, workdir, *, total_steps: int, start_step: int = 0, tensorboard=True):
        self.path = pathlib.Path(workdir) / "metrics.jsonl"
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._file = self._tb = None
        # Process 0 writes the shared files, every process constructs and writes through the
        # writer at the same steps: an error of process 0's (a full disk) stops them all
        # (distributed.shared_errors), not process 0 alone before the next step's collectives.
        with distributed.shared_errors():
            if jax.process_index() == 0:  # one writer of the shared file
                # A resumed run rewrites the steps after its checkpoint: drop the killed run's.
                drop_rows_after(self.path, start_step)
                self._file = self.path.open("a")
            if tensorboard and jax.process_index() == 0:
                import tensorboardX  # imported lazily: it pulls in protobuf

                folder = pathlib.Path(workdir) / "tensorboard"
                # A resumed run redoes the steps after its checkpoint: a SessionLog START at the
                # first of them makes TensorBoard drop the killed run's events from there on.
                resumed = folder.is_dir() and any(folder.glob("events.out.tfevents.*"))
                purge = start_step + 1 if resumed else None
                self._tb = tensorboardX.SummaryWriter(str(folder), purge_step=purge)
        self._bar = tqdm.tqdm(
            total=total_steps,
            initial=start_step,
            file=sys.stderr,
            dynamic_ncols=True,
            disable=jax.process_index() != 0,
            mininterval=1.0,
        )

    def write(self, step: int, metrics: dict) -> None:
        """Logs the scalars of one step."""
        row = {"step": int(step)}
        for name, value in metrics.items():
            value = np.asarray(value).item() if not isinstance(value, str) else value
            row[name] = value
        with distributed.shared_errors():
            if self._file is not None:
                self._file.write(json.dumps(row) + "\n")
                self._file.flush()
            if self._tb is not None:
                for name, value in row.items():
                    if name != "step" and isinstance(value, int | float):
                        self._tb.add_scalar(name, value, step)
        shown = {k: row[k] for k in ("loss", "reward", "accuracy", "tokens_per_s") if k in row}
        self._bar.set_postfix({k: f"{v:.4g}" for k, v in shown.items()}, refresh=False)
        self._bar.n = int(step)
        self._bar.refresh()

    def close(self) -> None:
        """Flushes and closes every sink."""
        self._bar.close()
        if self._file is not None:
            self._file.close()
        if self._tb is not None:
            self._tb.close()


def plot_curves(rows: list[dict], keys: list[str], out_path, *, title: str = "") -> None:
    """One panel per metric key over steps, saved as a PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [k for k in keys if any(k in r for r in rows)]
    if not keys:
        return
    cols = min(3, len(keys))
    nrows = math.ceil(len(keys) / cols)
    fig, axes = plt.subplots(nrows, cols, figsize=(4.2 * cols, 3.0 * nrows), squeeze=False)
    for ax, key in zip(axes.flat, keys):
        pts = [(r["step"], r[key]) for r in rows if key in r and r[key] is not None]
        ax.plot([p[0] for p in pts], [p[1] for p in pts], lw=1.2)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(keys) :]:
        ax.axis("off")
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    files.save_figure(fig, out_path, dpi=110)
    plt.close(fig)
