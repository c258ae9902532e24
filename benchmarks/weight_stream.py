"""Is decoding bound by the weights' memory traffic? The decode step's weight products alone.

For one of `sampler.py`'s models, runs the chain of weight products a decode step makes (per
layer: q|k|v, o, gate|up, down as W @ x, the sampler's orientation; then the unembedding) for
R rows, 128 steps in a `fori_loop`, once with every layer's own weights and once with the
weights of only the first k layers reused (the same FLOPs over fewer bytes). When the time
falls as k shrinks, the weights stop fitting the caches somewhere between, and every step
streams them from memory. Also prints how fast this machine streams a large array (a
reduction over 16 MiB to 256 MiB), in GB/s of 10^9 bytes as sampler.py's read bandwidth.

  python benchmarks/weight_stream.py [--model small] [--rows 32] [--repeats 5]
"""

import argparse
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from sampler import MODELS  # noqa: E402

STEPS = 128


def _best(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - start)
    return min(times)


def chain_ms(m: dict, rows: int, distinct: int, repeats: int) -> tuple[float, float]:
    """(ms a step, MiB of distinct weights) of the weight chain with `distinct` layers' weights."""
    d, f, v, layers = m["d"], m["ff"], m["vocab"], m["layers"]
    dh = d // m["heads"]
    qkv = (m["heads"] + 2 * m["kv_heads"]) * dh
    rng = np.random.default_rng(0)
    draw = lambda *shape: jnp.asarray(rng.standard_normal(shape, np.float32) * 0.02)  # noqa: E731
    weights = [
        dict(qkv=draw(qkv, d), o=draw(d, m["heads"] * dh), gate_up=draw(2 * f, d), down=draw(d, f))
        for _ in range(distinct)
    ]
    unembed = draw(v, d)

    @jax.jit
    def run(weights, unembed, x):
        def step(_, carry):
            x, acc = carry
            for i in range(layers):
                w = weights[i % distinct]
                q = (w["qkv"] @ x)[: m["heads"] * dh]
                x = x + w["o"] @ q
                gate, up = jnp.split(w["gate_up"] @ x, 2, axis=0)
                x = x + w["down"] @ (jax.nn.silu(gate) * up)
            return x * 0.5, acc + (unembed @ x)[0, 0]

        return jax.lax.fori_loop(0, STEPS, step, (x, jnp.float32(0)))

    seconds = _best(run, weights, unembed, draw(d, rows), repeats=repeats)
    mb = sum(a.nbytes for a in jax.tree.leaves((weights, unembed))) / 2**20
    return seconds / STEPS * 1e3, mb


def stream_gbs(mib: int, repeats: int) -> float:
    """GB/s (10^9 bytes) of a jitted reduction over `mib` MiB of float32."""
    a = jnp.asarray(np.random.default_rng(0).standard_normal(mib * 2**18, np.float32))
    total = jax.jit(lambda a: jnp.sum(a.reshape(-1, 4096), axis=0))
    return a.nbytes / 1e9 / _best(total, a, repeats=repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="small", choices=sorted(MODELS))
    parser.add_argument("--rows", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    m = MODELS[args.model]
    print(f"{args.model}: {m}, {args.rows} rows, {jax.devices()[0].device_kind}")
    for distinct in sorted({1, 2, 4, m["layers"] // 2 + 1, m["layers"] - 1, m["layers"]}):
        if 1 <= distinct <= m["layers"]:
            ms, mb = chain_ms(m, args.rows, distinct, args.repeats)
            print(f"  weights of {distinct} layer(s) reused ({mb:6.1f} MiB): {ms:6.2f} ms a step")
    for mb in (16, 64, 128, 256):
        print(f"  streaming {mb:3d} MiB: {stream_gbs(mb, args.repeats):5.1f} GB/s")


if __name__ == "__main__":
    main()
