"""Step time and per-device memory of the GRPO update and the SFT step versus mesh shape.

N rows (sequences), P prompt tokens, T completion tokens, L = P + T (GRPO); S tokens per row
(SFT). Mesh shapes are data x fsdp x tensor.

One model and one global batch on every mesh (built directly sharded with the trainer's own
init and jitted steps), so the rows of the table differ only in how the work is laid out.
Each row reports, against the 1-device row of the same run:
- step time: median of the timed steps after the warm-up (state donated, as in training);
- state/device: bytes of params + optimizer state held by the fullest device, read from the
  arrays' shards (what FSDP and tensor parallelism divide);
- peak/device: the compiled step's peak memory per device from XLA's buffer assignment
  (state and batch shards, outputs not donated in place, activations and other temporaries);
  `memory_stats()` is None on CPU, and process-wide elsewhere.

Run (about 3 minutes on 2 cores; 8 host CPU devices unless JAX already has more devices):
  python benchmarks/scaling.py [--meshes 1x1x1,8x1x1,1x8x1,2x2x2,1x4x2,1x2x4] [--steps 3]
"""

import argparse
import dataclasses
import json
import os
import pathlib
import statistics
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

DEFAULT_MESHES = "1x1x1,8x1x1,1x8x1,2x2x2,1x4x2,1x2x4"


def _model_cfg(args):
    from r1jax.model import config as config_lib

    # Every sharded dimension divides 8 (embed over fsdp) and 4 (heads, kv heads, mlp, vocab
    # over tensor), so each mesh below splits every matrix.
    return config_lib.ModelConfig(
        vocab_size=2048,
        d_model=256,
        n_layers=4,
        n_heads=8,
        n_kv_heads=4,
        head_dim=32,
        d_ff=1024,
        qkv_bias=True,
        dtype=args.dtype,
        remat=args.remat,
    )


def _optimizer(steps: int):
    import ml_collections

    from r1jax.train import state as state_lib

    optim = ml_collections.ConfigDict(
        dict(lr=1e-4, schedule="constant", warmup_steps=0, min_lr_ratio=1.0, b1=0.9, b2=0.95)
    )
    optim.update(eps=1e-8, weight_decay=0.0, grad_clip=1.0)
    return state_lib.make_optimizer(optim, steps)


def sft_batch(cfg, rows: int, seq: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(0)
    tokens = rng.integers(0, cfg.vocab_size, (rows, seq + 1)).astype(np.int32)
    return {
        "inputs": tokens[:, :-1],
        "targets": tokens[:, 1:],
        "loss_mask": np.ones((rows, seq), np.float32),
        "segment_ids": np.ones((rows, seq), np.int32),
        "positions": np.tile(np.arange(seq, dtype=np.int32), (rows, 1)),
    }


def grpo_batch(cfg, n: int, p: int, t: int) -> dict:
    import numpy as np

    rng = np.random.default_rng(1)
    mask_NxT = (np.arange(t)[None] < rng.integers(t // 2, t + 1, n)[:, None]).astype(np.float32)
    logp = lambda: (-np.log(cfg.vocab_size) + 0.1 * rng.standard_normal((n, t))) * mask_NxT
    return {
        "input_ids_NxL": rng.integers(0, cfg.vocab_size, (n, p + t)).astype(np.int32),
        "positions_NxL": np.tile(np.arange(p + t, dtype=np.int32), (n, 1)),
        "segment_ids_NxL": np.concatenate([np.ones((n, p)), mask_NxT], 1).astype(np.int32),
        "completion_mask_NxT": mask_NxT,
        "advantages_N": rng.standard_normal(n).astype(np.float32),
        "old_logp_NxT": logp().astype(np.float32),
        "ref_logp_NxT": logp().astype(np.float32),
        "sampler_logp_NxT": logp().astype(np.float32),
    }


def _mesh(shape):
    import jax

    from r1jax import sharding

    sizes = dict(zip(sharding.MESH_AXES, shape))
    return sharding.make_mesh(sizes, jax.devices()[: shape[0] * shape[1] * shape[2]])


def _state(kind, cfg, opt, mesh):
    """A step-0 state initialised directly sharded on `mesh` (GRPO: params under "policy")."""
    import jax

    from r1jax import sharding
    from r1jax.model import transformer
    from r1jax.train import trainer

    key = jax.random.key(0)
    if kind == "sft":
        return trainer.init_state(cfg, opt, key, mesh, sharding.DEFAULT_RULES)
    init = lambda k: {"policy": transformer.init_params(cfg, k)}
    logical = {"policy": transformer.logical_axes(cfg)}
    return trainer.init_sharded_state(init, logical, opt, mesh, sharding.DEFAULT_RULES, key, key)


def _step_fn(kind, cfg, opt, args):
    import functools

    from r1jax.rl import steps
    from r1jax.train import supervised

    if kind == "sft":
        return functools.partial(
            supervised.supervised_step, model_cfg=cfg, optimizer=opt, grad_accum=args.grad_accum
        )
    loss_cfg = steps.LossConfig(kl_coef=0.04, aggregation="token-mean")
    return functools.partial(
        steps.grpo_update,
        model_cfg=cfg,
        optimizer=opt,
        loss_cfg=loss_cfg,
        num_minibatches=1,
        grad_accum=args.grad_accum,
    )


def _peak_bytes(compiled) -> int:
    """Peak bytes per device of a compiled step, from XLA's buffer assignment.

    Arguments + outputs - donated aliases + temporaries; the same figure on every backend
    (a device's own `peak_bytes_in_use` counts the whole process, so later meshes would
    inherit earlier ones' peaks).
    """
    m = compiled.memory_analysis()  # per device for a partitioned program
    live = m.argument_size_in_bytes + m.output_size_in_bytes - m.alias_size_in_bytes
    return int(live + m.temp_size_in_bytes)


def measure(kind: str, shape, args) -> dict:
    """Compiles one step on one mesh, runs warm-up + timed steps; returns times and bytes."""
    import jax

    from r1jax import sharding
    from r1jax.train import trainer

    cfg, opt, mesh = _model_cfg(args), _optimizer(args.warmup + args.steps), _mesh(shape)
    state, shardings = _state(kind, cfg, opt, mesh)
    if kind == "sft":
        host = sft_batch(cfg, args.rows, args.prompt_len + args.new_tokens)
    else:
        host = grpo_batch(cfg, args.rows, args.prompt_len, args.new_tokens)
    batch = sharding.put_batch(host, mesh)
    jitted = trainer.jit_step(_step_fn(kind, cfg, opt, args), shardings, mesh)
    t0 = time.perf_counter()
    compiled = jitted.lower(state, batch).compile()
    compile_s = time.perf_counter() - t0
    held = sharding.bytes_per_device((state.params, state.opt_state))
    times = []
    for _ in range(args.warmup + args.steps):
        t0 = time.perf_counter()
        state, metrics = compiled(state, batch)
        jax.block_until_ready((state, metrics))
        times.append(time.perf_counter() - t0)
    return {
        "kind": kind,
        "mesh": "x".join(map(str, shape)),
        "devices": mesh.size,
        "step_s": statistics.median(times[args.warmup :]),
        "compile_s": compile_s,
        "state_bytes_per_device": max(held.values()),
        "state_bytes_total": sum(
            x.nbytes for x in jax.tree.leaves((state.params, state.opt_state))
        ),
        "peak_bytes_per_device": _peak_bytes(compiled),
        "loss": float(metrics["loss"]),
    }


def _mib(x: float) -> str:
    return f"{x / 2**20:.2f}"


def print_table(results: list[dict]) -> None:
    """Markdown table per step kind, ratios against that kind's 1-device row."""
    for kind in ("grpo", "sft"):
        rows = [r for r in results if r["kind"] == kind]
        if not rows:
            continue
        ref = next((r for r in rows if r["devices"] == 1), rows[0])
        print(f"\n{kind.upper()} step (reference: mesh {ref['mesh']})\n")
        print(
            "| mesh (data x fsdp x tensor) | step s | vs ref | compile s | state MiB/device "
            "| vs ref | peak MiB/device | vs ref | loss |"
        )
        print("|---|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(
                f"| {r['mesh']} | {r['step_s']:.3f} | {r['step_s'] / ref['step_s']:.2f}x "
                f"| {r['compile_s']:.1f} | {_mib(r['state_bytes_per_device'])} "
                f"| {r['state_bytes_per_device'] / ref['state_bytes_per_device']:.3f} "
                f"| {_mib(r['peak_bytes_per_device'])} "
                f"| {r['peak_bytes_per_device'] / ref['peak_bytes_per_device']:.3f} "
                f"| {r['loss']:.6f} |"
            )


def _parse_meshes(text: str) -> list[tuple[int, int, int]]:
    shapes = []
    for item in text.split(","):
        parts = item.strip().split("x")
        if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
            raise SystemExit(f"--meshes: {item!r} is not DATAxFSDPxTENSOR (e.g. 2x2x2)")
        shapes.append(tuple(int(p) for p in parts))
    return shapes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--meshes", default=DEFAULT_MESHES, help="comma-separated DxFxT")
    parser.add_argument("--steps", type=int, default=3, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps after compiling")
    parser.add_argument("--rows", type=int, default=16, help="global batch rows (N)")
    parser.add_argument("--prompt-len", type=int, default=32, help="P (SFT rows hold P + T)")
    parser.add_argument("--new-tokens", type=int, default=96, help="T")
    parser.add_argument("--grad-accum", type=int, default=1, help="micro-batches per step")
    parser.add_argument("--dtype", default="float32", choices=("float32", "bfloat16"))
    parser.add_argument("--remat", default="none", choices=("none", "full", "dots"))
    parser.add_argument("--kinds", default="grpo,sft", help="which steps to measure")
    parser.add_argument("--host-devices", type=int, default=8, help="XLA host CPU devices")
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}")
    shapes = _parse_meshes(args.meshes)
    # Must be set before JAX starts; accelerators ignore it.
    flag = f"--xla_force_host_platform_device_count={args.host_devices}"
    os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    import jax

    for shape in shapes:
        need = shape[0] * shape[1] * shape[2]
        if need > jax.device_count() or args.rows % (shape[0] * shape[1]):
            raise SystemExit(
                f"--meshes: {shape} needs {need} devices ({jax.device_count()} here) and rows "
                f"divisible by data x fsdp = {shape[0] * shape[1]} (--rows {args.rows})"
            )
    print(f"{jax.device_count()} {jax.devices()[0].platform} devices; {vars(args)}")
    results = []
    for kind in args.kinds.split(","):
        for shape in shapes:
            results.append(measure(kind, shape, args))
            print(json.dumps(results[-1]), flush=True)
    print_table(results)
    cfg = dataclasses.asdict(_model_cfg(args))
    print(json.dumps({"model": cfg, "results": results}))


if __name__ == "__main__":
    main()
