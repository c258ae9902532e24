"""Sampling speed and memory: r1jax `generate` against transformers `generate`, same weights.

N prompts, G samples per prompt, P prompt length, T new tokens, V vocab.

Two random Qwen2 models (f32): "tiny" (V 1024, D 256, 4 layers, 4 heads, 2 kv heads, F 768) and
"small" (V 8192, D 512, 8 layers, 8 heads, 2 kv heads, F 1536). Workloads: N=32 prompts x G=1
and N=8 prompts x G=8 of P=16 random tokens (the issue's cases), and N=4 x G=8 of P=256 (group
sampling with RL-length prompts); exactly T=128 new tokens (no EOS), temperature 1, no top-p /
top-k, KV cache on both sides, torch on the same number of threads. A call's time includes its
prefill (transformers prefills each prompt G times, r1jax once).
Each side runs in its own subprocess per model, so its peak RSS (ru_maxrss) is its own.
r1jax runs twice: on one XLA device ("r1jax"), and with the rows split over --host-devices XLA
host devices ("r1jax-2dev": a 'data' mesh, params replicated; each device decodes its own rows
with its own loops, so the cores work at once), the way a multi-core CPU host can run the
sampler's data-parallel path. Each of --rounds runs every side once, in alternating order; the
speed-ups are printed per round and as the median over rounds (the time of one call drifts by
up to 2x over minutes on a shared VM).

Decoding reads every weight and the caches each step: on an accelerator, at these batches,
those reads and not its FLOPs bound it (on a 2-core CPU the arithmetic does). Each case also
prints the fraction of that memory roofline reached: the fewest bytes a step must read
(`config.decode_bytes_per_step`: weights once, each prompt's K/V once, each row's new K/V) at
the mean context over the read bandwidth of one device, measured in the same run (a jitted
sum over a large array). On a GPU (JAX's default backend; found in a
subprocess, so this process holds no device memory) r1jax runs on it, transformers on CUDA
when torch has it (else r1jax alone), there is no host-devices side, and peak device memory
(JAX's and torch's allocators) is printed with the RSS.

Run (about 4 minutes a round on 2 cores):
  python benchmarks/sampler.py [--rounds 2] [--repeats 3] [--threads 2] [--host-devices 2]
                               [--models tiny,small]
"""

import argparse
import json
import os
import pathlib
import resource
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

MODELS = {
    "tiny": dict(vocab=1024, d=256, layers=4, heads=4, kv_heads=2, ff=768),
    "small": dict(vocab=8192, d=512, layers=8, heads=8, kv_heads=2, ff=1536),
}
# name -> (N prompts, G samples per prompt, P prompt length). The goals are set on the
# first two; "4x8p256" is group sampling with RL-length prompts, where sharing the prompt's
# cache between the samples (r1jax) matters most.
CASES = {"32x1": (32, 1, 16), "8x8": (8, 8, 16), "4x8p256": (4, 8, 256)}
NEW_TOKENS, SEED = 128, 0


def _rss_mib() -> float:
    # ru_maxrss is the process's resident-set high-water mark, in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def prompt_ids(n: int, p: int) -> list[list[int]]:
    """N prompts of P random token ids (>= 2), the same on both sides."""
    import numpy as np

    return np.random.default_rng(SEED).integers(2, 1000, size=(n, p)).tolist()


def make_model_dir(name: str, path: pathlib.Path) -> None:
    """Writes a random Qwen2 of the named size as a Hugging Face folder."""
    import torch
    import transformers

    m = MODELS[name]
    torch.manual_seed(SEED)
    config = transformers.Qwen2Config(
        vocab_size=m["vocab"],
        hidden_size=m["d"],
        num_hidden_layers=m["layers"],
        num_attention_heads=m["heads"],
        num_key_value_heads=m["kv_heads"],
        intermediate_size=m["ff"],
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=0,
        eos_token_id=1,
        bos_token_id=None,
    )
    transformers.Qwen2ForCausalLM(config).to(torch.float32).save_pretrained(path)


def _time_runs(fn, repeats: int) -> tuple[float, list[float]]:
    """First call's time (includes compilation where there is one) and the later calls' times."""
    t0 = time.perf_counter()
    fn()
    first = time.perf_counter() - t0
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return first, times


def run_hf(model_dir: str, repeats: int, threads: int, device: str = "cpu") -> dict:
    """transformers generate: sampling, KV cache, exactly T new tokens (on `device`: "cpu" or
    "cuda")."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    base_rss = _rss_mib()
    model = transformers.Qwen2ForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    model = model.to(device)
    out = {"base_rss_mib": base_rss}
    for case, (n, g, p) in CASES.items():
        ids = torch.tensor(prompt_ids(n, p), device=device)

        def gen(ids=ids, g=g):
            with torch.no_grad():
                torch.manual_seed(SEED)
                res = model.generate(
                    ids,
                    attention_mask=torch.ones_like(ids),
                    do_sample=True,
                    temperature=1.0,
                    top_p=1.0,
                    top_k=0,
                    max_new_tokens=NEW_TOKENS,
                    min_new_tokens=NEW_TOKENS,
                    num_return_sequences=g,
                    pad_token_id=0,
                    use_cache=True,
                )
            if device != "cpu":
                torch.cuda.synchronize()  # (the shape check below waits too; made explicit)
            assert res.shape == (len(ids) * g, ids.shape[1] + NEW_TOKENS), res.shape

        first, times = _time_runs(gen, repeats)
        out[case] = {"first_s": first, "run_s": statistics.median(times), "runs_s": times}
    out["peak_rss_mib"] = _rss_mib()
    if device != "cpu":
        out["peak_device_mib"] = torch.cuda.max_memory_allocated() / 2**20
    return out


def run_r1jax(model_dir: str, repeats: int, threads: int) -> dict:
    """r1jax generate (jitted prefill + while_loop decode) on the same weights.

    With several host devices (`XLA_FLAGS`, set by `main` before JAX starts) the rows are split
    over a ('data',) mesh of them, params replicated: each device runs its share of the batch
    on its own thread, as on any data-parallel mesh (`sampler.generate(..., mesh=)`)."""
    import jax
    import numpy as np

    from r1jax import sampler
    from r1jax import sharding as sharding_lib
    from r1jax.model import hf_io

    base_rss = _rss_mib()
    cfg, params = hf_io.load_hf(model_dir)
    mesh = None
    if jax.device_count() > 1:
        mesh = sharding_lib.make_mesh({"data": -1})
        params = jax.device_put(params, sharding_lib.replicated(mesh))
    else:
        params = jax.device_put(params)
    out = {"base_rss_mib": base_rss, "devices": jax.device_count()}
    for case, (n, g, p) in CASES.items():
        prompts = prompt_ids(n, p)

        def gen(prompts=prompts, g=g):
            res = sampler.generate(
                cfg,
                params,
                prompts,
                max_new_tokens=NEW_TOKENS,
                num_samples=g,
                seed=SEED,
                mesh=mesh,
            )
            assert res.tokens.shape == (len(prompts) * g, NEW_TOKENS) and np.all(
                res.lengths == NEW_TOKENS
            )

        first, times = _time_runs(gen, repeats)
        run = statistics.median(times)
        out[case] = {"first_s": first, "run_s": run, "runs_s": times, "compile_s": first - run}
    out["peak_rss_mib"] = _rss_mib()
    stats = jax.devices()[0].memory_stats()  # None on CPU
    if stats and "peak_bytes_in_use" in stats:
        out["peak_device_mib"] = stats["peak_bytes_in_use"] / 2**20
    return out


def _model_config(name: str):
    """The r1jax ModelConfig of a benchmark model (as hf_io reads the saved Qwen2)."""
    from r1jax.model import config as config_lib

    m = MODELS[name]
    return config_lib.ModelConfig(
        vocab_size=m["vocab"],
        d_model=m["d"],
        n_layers=m["layers"],
        n_heads=m["heads"],
        n_kv_heads=m["kv_heads"],
        head_dim=m["d"] // m["heads"],
        d_ff=m["ff"],
        qkv_bias=True,
    )


def decode_bytes(name: str, case: str) -> float:
    """The fewest bytes a decode step of `case` reads (f32 weights and caches) at the mean
    number of new tokens in the cache, T / 2: its memory roofline's numerator."""
    from r1jax.model import config as config_lib

    n, g, p = CASES[case]
    return config_lib.decode_bytes_per_step(
        _model_config(name), rows=n * g, prompts=n, prompt_len=p, new_len=NEW_TOKENS / 2
    )


def decode_flops(name: str, p: int) -> float:
    """Model FLOPs of one generated token: `forward_flops_per_token` at the mean context P + T/2
    (the prefill's FLOPs are not counted, its time is)."""
    from r1jax.model import config as config_lib

    return config_lib.forward_flops_per_token(_model_config(name), p + NEW_TOKENS // 2)


# Measured in a fresh process on JAX's default device: the f32 matmul peak (on a CPU host all
# cores; larger products on an accelerator), the read bandwidth (best of 10 jitted sums over
# 256 MiB on a CPU, 2 GiB on an accelerator: far past any cache), and what the device is.
_PROBE = """
import json, time, jax, jax.numpy as jnp
from r1jax.train import metrics
dev = jax.devices()[0]
cpu = dev.platform == "cpu"
sizes = (1024, 2048) if cpu else (4096, 8192)
peak = max(metrics.measure_matmul_peak_flops(n, repeats=10) for n in sizes)
x = jnp.ones(((256 if cpu else 2048) << 18,), jnp.float32)
total = jax.jit(jnp.sum)
total(x).block_until_ready()
best = float("inf")
for _ in range(10):
    t0 = time.perf_counter()
    total(x).block_until_ready()
    best = min(best, time.perf_counter() - t0)
print(json.dumps({"platform": dev.platform, "device_kind": dev.device_kind, "peak_flops": peak,
                  "read_bytes_per_s": x.nbytes / best}))
"""


def _probe_device() -> dict:
    """The default device's platform and kind, f32 matmul peak and read bandwidth."""
    out = subprocess.run(
        [sys.executable, "-c", _PROBE], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def _torch_has_cuda() -> bool:
    code = "import torch; print(torch.cuda.is_available())"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    return out.returncode == 0 and out.stdout.strip().endswith("True")


def host_info() -> dict:
    """What the numbers were measured on: CPU model, cores, the vector extensions that matter to
    f32 matmuls, and the package versions of both sides. The ratios depend on the host as much as
    on the code: benchmarks/README.md has the same commit on an AMD EPYC VM and on an Intel Xeon
    VM, where transformers ran 1.6x faster and r1jax about as fast."""
    from importlib import metadata

    model, flags = "unknown", set()
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name":
                model = value.strip()
            elif key.strip() == "flags":
                flags = set(value.split())
    except OSError:
        pass
    versions = {}
    for package in ("jax", "jaxlib", "torch", "transformers"):
        try:
            versions[package] = metadata.version(package)
        except metadata.PackageNotFoundError:
            versions[package] = None
    affinity = getattr(os, "sched_getaffinity", None)
    return {
        "cpu": model,
        "cores": len(affinity(0)) if affinity else os.cpu_count(),
        "isa": sorted(flags & {"avx2", "fma", "avx512f", "avx512_bf16", "amx_tile", "amx_bf16"}),
        **versions,
    }


def _side_names(args) -> list[str]:
    """The sides to run: "transformers", "r1jax" (one XLA device) and, on a CPU host with
    --host-devices N > 1, "r1jax-Ndev" (rows split over N host devices)."""
    names = []
    for side in args.sides.split(","):
        names.append(side)
        if side == "r1jax" and args.host_devices > 1 and args.platform == "cpu":
            names.append(f"r1jax-{args.host_devices}dev")
    return names


def _busy_cpu_s() -> float | None:
    """CPU seconds every process of this host has been busy since boot (/proc/stat; None where
    there is none)."""
    try:
        with open("/proc/stat") as f:
            ticks = [int(x) for x in f.readline().split()[1:9]]
    except (OSError, ValueError):
        return None
    return (sum(ticks) - ticks[3] - ticks[4]) / os.sysconf("SC_CLK_TCK")  # less idle, iowait


def _children_cpu_s() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# Cores other processes kept busy while a side ran, above which its timing is suspect (torch's
# OpenMP threads slow down several-fold on a shared core; XLA's pool much less).
BUSY_WARNING_CORES = 0.25


def _run_side(name: str, model_dir: str, args) -> dict:
    side, _, devices = name.partition("-")
    out = pathlib.Path(model_dir) / f"{name}.json"
    cmd = [sys.executable, __file__, "--side", side, "--model-dir", model_dir, "--out", str(out)]
    cmd += ["--repeats", str(args.repeats), "--threads", str(args.threads)]
    malloc = args.host_malloc if side == "r1jax" else "system"
    cmd += ["--host-malloc", malloc, "--host-devices", devices.removesuffix("dev") or "1"]
    cmd += ["--torch-device", "cpu" if args.platform == "cpu" else "cuda"]
    from r1jax import hostmem  # huge pages are a glibc tunable: set when the side starts

    env = hostmem.environ_for(malloc, {**os.environ, "PYTHONWARNINGS": "ignore"})
    busy, own, start = _busy_cpu_s(), _children_cpu_s(), time.perf_counter()
    subprocess.run(cmd, check=True, env=env)
    result = json.loads(out.read_text())
    if busy is not None:  # the host's busy CPU time less the side's own, per second
        others = (_busy_cpu_s() - busy) - (_children_cpu_s() - own)
        result["others_cores"] = max(0.0, others) / (time.perf_counter() - start)
    return result


def _print_model(name: str, res: dict, device: dict) -> None:
    peak, bandwidth = device["peak_flops"], device["read_bytes_per_s"]
    print(
        f"\n{name}: matmul peak {peak / 1e9:.1f} GFLOP/s, read bandwidth "
        f"{bandwidth / 1e9:.1f} GB/s of one {device['device_kind']} device"
    )
    for case, (n, g, p) in CASES.items():
        flops, step_bytes = decode_flops(name, p), decode_bytes(name, case)
        roofline = n * g * bandwidth / step_bytes  # tokens/s if a step only read its bytes
        print(
            f"  {case}: {flops / 1e6:.1f} MFLOP per generated token; a step reads at least "
            f"{step_bytes / 1e6:.1f} MB: memory roofline {roofline:.0f} tokens/s"
        )
        tokens = n * g * NEW_TOKENS
        tps = {side: tokens / r[case]["run_s"] for side, r in res.items()}
        for side, r in res.items():
            frac = tps[side] * flops / peak
            extra = f"  compile {r[case]['compile_s']:.1f} s" if "compile_s" in r[case] else ""
            print(
                f"  {case:7s} {side:12s} {tps[side]:8.0f} tokens/s  {100 * frac:5.1f}% of peak"
                f"  {100 * tps[side] / roofline:5.1f}% of roofline"
                f"  (median {r[case]['run_s']:.3f} s; first call {r[case]['first_s']:.2f} s)"
                + extra
            )
        for side in tps:
            if side.startswith("r1jax") and "transformers" in tps:
                print(f"  {case:7s} {side} / transformers: {tps[side] / tps['transformers']:.2f}x")
    for side, r in res.items():
        on_device = (
            f"; peak device memory {r['peak_device_mib']:.0f} MiB" if "peak_device_mib" in r else ""
        )
        print(
            f"  peak RSS {side:12s} {r['peak_rss_mib']:6.0f} MiB "
            f"(after imports {r['base_rss_mib']:.0f} MiB){on_device}"
        )
    for side, r in res.items():
        others = r.get("others_cores")
        if others is not None:
            warn = (
                "  WARNING: a busy host; its timings are suspect"
                if others > BUSY_WARNING_CORES
                else ""
            )
            print(f"  other processes {side:12s} {others:.2f} cores busy meanwhile{warn}")


def _print_median_ratios(name: str, rounds: list[dict]) -> None:
    """Per case and r1jax side: the speed-up over transformers in each round, and its median."""
    print(f"\n{name}: r1jax / transformers, each round and the median")
    for case in CASES:
        for side in rounds[0]:
            if side.startswith("r1jax") and "transformers" in rounds[0]:
                ratios = [r["transformers"][case]["run_s"] / r[side][case]["run_s"] for r in rounds]
                each = " ".join(f"{x:.2f}x" for x in ratios)
                print(f"  {case:7s} {side:12s} {each}  median {statistics.median(ratios):.2f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("both", "transformers", "r1jax"), default="both")
    parser.add_argument("--model-dir")
    parser.add_argument("--out")
    parser.add_argument("--repeats", type=int, default=3, help="timed calls after the first")
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--models", default="tiny,small")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of all sides, alternating (median ratio)"
    )
    parser.add_argument("--sides", default="transformers,r1jax")
    parser.add_argument(
        "--host-devices",
        type=int,
        default=2,
        help="r1jax also runs with the rows split over this many XLA host devices, one thread "
        "each (a 'data' mesh; 1: one device only). Default 2, the torch thread count's default",
    )
    parser.add_argument(
        "--host-malloc",
        choices=("auto", "hugepages", "reuse", "system"),
        default="auto",
        help="r1jax's host allocator (r1jax/hostmem.py; auto, as the CLI: transparent huge "
        "pages where glibc and the kernel allow, else reuse); transformers always runs with "
        "glibc's defaults",
    )
    parser.add_argument("--torch-device", default="cpu", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.repeats < 1:
        parser.error(f"--repeats must be >= 1 (the timed calls), got {args.repeats}")
    if args.side != "both":
        from r1jax import hostmem

        hostmem.configure(args.host_malloc)  # before jax starts its threads
        if args.side == "r1jax" and args.host_devices > 1:
            # XLA's CPU client makes one device unless told before JAX starts.
            flag = f"--xla_force_host_platform_device_count={args.host_devices}"
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
        if args.side == "transformers":
            result = run_hf(args.model_dir, args.repeats, args.threads, args.torch_device)
        else:
            result = run_r1jax(args.model_dir, args.repeats, args.threads)
        pathlib.Path(args.out).write_text(json.dumps(result))
        return
    host = host_info()
    print("host: " + ", ".join(f"{k} {v}" for k, v in host.items()), flush=True)
    device = _probe_device()
    args.platform = device["platform"]
    if args.platform != "cpu" and "transformers" in args.sides.split(","):
        if not _torch_has_cuda():
            print(f"torch has no CUDA here: r1jax runs alone on the {args.platform}", flush=True)
            args.sides = ",".join(s for s in args.sides.split(",") if s != "transformers")
    report = {"host": host, "device": device, "peak_flops": device["peak_flops"]}
    for name in args.models.split(","):
        rounds = []
        with tempfile.TemporaryDirectory() as tmp:
            make_model_dir(name, pathlib.Path(tmp))
            for r in range(args.rounds):
                # Every round runs every side, in the opposite order to the round before, so a
                # machine whose speed drifts over minutes (a shared VM) hits all sides alike.
                order = _side_names(args)[:: -1 if r % 2 else 1]
                res = {side: _run_side(side, tmp, args) for side in order}
                rounds.append({side: res[side] for side in _side_names(args)})
                if args.rounds > 1:
                    print(f"\n=== {name}: round {r + 1} of {args.rounds}")
                _print_model(name, rounds[-1], device)
        if len(rounds) > 1:
            _print_median_ratios(name, rounds)
        report[name] = rounds
    print(json.dumps(report))


if __name__ == "__main__":
    main()
