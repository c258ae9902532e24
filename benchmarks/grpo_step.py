"""One GRPO step, r1jax against TRL's GRPOTrainer, on the same tiny Qwen2 weights (CPU, no vLLM).

B prompts, G samples per prompt, N = B*G sequences, P prompt tokens, T new tokens, L = P+T.

Workload, identical on both sides: a random Qwen2 (V 1024, D 256, 4 layers, 4 heads, 2 kv heads,
F 768, f32), B=4 prompts of P=32 random tokens, G=8 samples of exactly T=64 tokens (no EOS can end
them), temperature 1, a rule reward on the token ids, group-normalised advantages, token-mean
PPO-clip loss, KL to a reference model (beta 0.04, k3), one on-policy AdamW update per step.
Each side runs in its own subprocess so its peak RSS is its own; the parent prints the table.

Run (about 2 minutes on 2 cores; each of --rounds runs TRL then r1jax, the median ratio is the
result, as this VM's speed drifts by 10-20% within minutes):
  python benchmarks/grpo_step.py [--steps 5] [--warmup 2] [--threads 2] [--rounds 2]
One side alone (prints its JSON):
  python benchmarks/grpo_step.py --side r1jax --model-dir DIR --peak-flops F
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

VOCAB, D_MODEL, N_LAYERS, N_HEADS, N_KV_HEADS, D_FF = 1024, 256, 4, 4, 2, 768
PROMPTS, SAMPLES, PROMPT_LEN, NEW_TOKENS = 4, 8, 32, 64
PAD_ID, EOS_ID, TARGET_ID = 0, 1, 7  # TARGET_ID: the token the rule reward counts
BETA, CLIP_EPS, LR, SEED = 0.04, 0.2, 1e-5, 0


def target_fraction(completion_ids) -> float:
    """The rule reward both sides use: the share of completion tokens equal to TARGET_ID."""
    ids = list(completion_ids)
    return sum(1 for t in ids if t == TARGET_ID) / max(len(ids), 1)


def prompt_ids(step: int) -> list[list[int]]:
    """The B prompts of a step: P random non-special token ids, the same on both sides."""
    import numpy as np

    rng = np.random.default_rng(SEED + step)
    return rng.integers(2, VOCAB, size=(PROMPTS, PROMPT_LEN)).tolist()


def step_flops() -> dict:
    """Model FLOPs of one step, one count for both sides.

    Every pass uses `forward_flops_per_token(cfg, L)` (2 x matmul params incl. the LM head, plus
    attention over the full L context, no causal halving), as r1jax's RL driver does:
    generation = N*T tokens, reference forward and training (3 forwards) over all N*L tokens,
    prompt included. The old-policy pass is not counted: on-policy, neither side runs one.
    """
    from r1jax.model import config as config_lib

    cfg = config_lib.ModelConfig(
        vocab_size=VOCAB,
        d_model=D_MODEL,
        n_layers=N_LAYERS,
        n_heads=N_HEADS,
        n_kv_heads=N_KV_HEADS,
        head_dim=D_MODEL // N_HEADS,
        d_ff=D_FF,
        qkv_bias=True,
    )
    fwd = config_lib.forward_flops_per_token(cfg, PROMPT_LEN + NEW_TOKENS)
    n = PROMPTS * SAMPLES
    parts = {
        "generate": fwd * n * NEW_TOKENS,
        "ref_logprobs": fwd * n * (PROMPT_LEN + NEW_TOKENS),
        "update": 3 * fwd * n * (PROMPT_LEN + NEW_TOKENS),
    }
    return {**parts, "total": sum(parts.values())}


# ---------------------------------------------------------------------------------------------
# The shared model and tokenizer.


def make_model_dir(path: pathlib.Path) -> None:
    """Writes a random tiny Qwen2 and a word-level tokenizer ("t<id>") as a Hugging Face folder."""
    import tokenizers
    import torch
    import transformers

    torch.manual_seed(SEED)
    config = transformers.Qwen2Config(
        vocab_size=VOCAB,
        hidden_size=D_MODEL,
        num_hidden_layers=N_LAYERS,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV_HEADS,
        intermediate_size=D_FF,
        max_position_embeddings=512,
        tie_word_embeddings=False,
        pad_token_id=PAD_ID,
        eos_token_id=EOS_ID,
        bos_token_id=None,
    )
    model = transformers.Qwen2ForCausalLM(config).to(torch.float32)
    model.save_pretrained(path)
    vocab = {"<pad>": PAD_ID, "<eos>": EOS_ID, **{f"t{i}": i for i in range(2, VOCAB)}}
    tok = tokenizers.Tokenizer(tokenizers.models.WordLevel(vocab, unk_token="<pad>"))
    tok.pre_tokenizer = tokenizers.pre_tokenizers.WhitespaceSplit()
    tok.decoder = None
    fast = transformers.PreTrainedTokenizerFast(
        tokenizer_object=tok, pad_token="<pad>", eos_token="<eos>", unk_token="<pad>"
    )
    fast.save_pretrained(path)


def _rss_peak_mib() -> float:
    # ru_maxrss is the process's resident-set high-water mark, in KiB on Linux.
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _summary(step_times: list[float], phases: list[dict], warmup: int) -> dict:
    timed = step_times[warmup:]
    phase_median = {
        k: statistics.median(p[k] for p in phases[warmup:]) for k in (phases[0] if phases else {})
    }
    return {
        "step_s": statistics.median(timed),
        "step_s_all": step_times,
        "phases_s": phase_median,
        "peak_rss_mib": _rss_peak_mib(),
    }


# ---------------------------------------------------------------------------------------------
# TRL side.


def _trl_dataset(total_steps: int):
    import datasets

    prompts = [" ".join(f"t{t}" for t in ids) for s in range(total_steps) for ids in prompt_ids(s)]
    return datasets.Dataset.from_dict({"prompt": prompts})


def _trl_reward(prompts, completions, completion_ids, **_):
    return [target_fraction(ids) for ids in completion_ids]


def _trl_trainer_class(timings: list[dict]):
    """GRPOTrainer with its phases timed: generation, rewards, the scoring pass, the whole step."""
    import trl

    class Timed(trl.GRPOTrainer):
        def _timed(self, name, fn, *args, **kwargs):
            t0 = time.perf_counter()
            out = fn(*args, **kwargs)
            timings[-1][name] = timings[-1].get(name, 0.0) + time.perf_counter() - t0
            return out

        def _generate(self, prompts):
            return self._timed("generate", super()._generate, prompts)

        def _calculate_rewards(self, *args, **kwargs):
            return self._timed("reward", super()._calculate_rewards, *args, **kwargs)

        def _generate_and_score_completions(self, batch):
            return self._timed("prepare", super()._generate_and_score_completions, batch)

    return Timed


def _trl_args(total_steps: int):
    """GRPOConfig (TRL 1.16 field names) for the shared workload."""
    import trl

    return trl.GRPOConfig(
        output_dir=tempfile.mkdtemp(prefix="grpo_trl_"),
        per_device_train_batch_size=PROMPTS * SAMPLES,  # TRL counts completions, not prompts
        num_generations=SAMPLES,
        max_completion_length=NEW_TOKENS,
        generation_kwargs={"min_new_tokens": NEW_TOKENS},  # EOS suppressed: exactly T tokens
        temperature=1.0,
        beta=BETA,
        epsilon=CLIP_EPS,
        loss_type="dapo",  # token mean over the batch, as r1jax's "token-mean"
        scale_rewards="group",
        num_iterations=1,
        gradient_accumulation_steps=1,
        learning_rate=LR,
        lr_scheduler_type="constant",
        max_grad_norm=1.0,
        weight_decay=0.0,
        max_steps=total_steps,
        use_vllm=False,
        bf16=False,
        fp16=False,
        use_cpu=True,
        model_init_kwargs={"dtype": "float32"},
        logging_strategy="no",
        save_strategy="no",
        report_to=[],
        disable_tqdm=True,
        dataloader_num_workers=0,
        seed=SEED,
    )


def run_trl(model_dir: str, steps: int, warmup: int, threads: int) -> dict:
    """Trains warmup + steps GRPO steps with TRL and times each (on_step_end to on_step_end)."""
    import torch
    import transformers

    torch.set_num_threads(threads)
    total = warmup + steps
    timings: list[dict] = []
    ends: list[float] = []

    class StepClock(transformers.TrainerCallback):
        def on_step_begin(self, args, state, control, **kwargs):
            timings.append({})

        def on_step_end(self, args, state, control, **kwargs):
            ends.append(time.perf_counter())

    args = _trl_args(total)
    tokenizer = transformers.PreTrainedTokenizerFast.from_pretrained(model_dir)
    trainer = _trl_trainer_class(timings)(
        model=model_dir,
        reward_funcs=_trl_reward,
        args=args,
        train_dataset=_trl_dataset(total),
        processing_class=tokenizer,
        callbacks=[StepClock()],
    )
    start = time.perf_counter()
    trainer.train()
    step_times = [b - a for a, b in zip([start] + ends[:-1], ends)]
    for t, s in zip(timings, step_times):
        t["ref_logprobs+scoring"] = t.pop("prepare") - t["generate"] - t["reward"]
        t["update"] = s - t["generate"] - t["reward"] - t["ref_logprobs+scoring"]
    return _summary(step_times, timings, warmup)


def _r1jax_config(total_steps: int):
    """configs/grpo.py:tiny with this workload's loss and optimizer (what the RL driver reads)."""
    from r1jax import configlib

    return configlib.load_config(
        str(ROOT / "configs" / "grpo.py") + ":tiny",
        rl__prompts_per_step=PROMPTS,
        rl__num_samples=SAMPLES,
        rl__max_prompt_len=PROMPT_LEN,
        rl__max_new_tokens=NEW_TOKENS,
        rl__temperature=1.0,
        rl__top_p=1.0,
        rl__top_k=0,
        rl__kl_coef=BETA,
        rl__kl_estimator="k3",
        rl__clip_low=CLIP_EPS,
        rl__clip_high=CLIP_EPS,
        rl__aggregation="token-mean",  # TRL's default loss_type "dapo"
        rl__std_normalize="group",
        rl__epochs=1,
        rl__num_minibatches=1,
        train__grad_accum=1,
        optim__lr=LR,
        optim__schedule="constant",
        optim__warmup_steps=0,
        optim__weight_decay=0.0,
        optim__grad_clip=1.0,
        optim__b1=0.9,
        optim__b2=0.999,
        optim__eps=1e-8,
        train__steps=total_steps,
    )


class R1jaxSide:
    """The pieces of r1jax's RL driver (`train/rl.py`) around the benchmark's own loop."""

    def __init__(self, model_dir: str, total_steps: int, old_logprobs: str):
        import jax

        from r1jax import sharding
        from r1jax.model import hf_io
        from r1jax.rl import steps
        from r1jax.train import rl, trainer
        from r1jax.train import state as state_lib

        self.cfg = _r1jax_config(total_steps)
        self.model_cfg, policy = hf_io.load_hf(model_dir)
        self.mesh = sharding.make_mesh(self.cfg.mesh.to_dict())
        rules = sharding.rules_from_config(self.cfg.mesh.rules)
        optimizer = state_lib.make_optimizer(self.cfg.optim, total_steps)
        init_key, state_key, self.sample_key = jax.random.split(jax.random.PRNGKey(SEED), 3)
        params = steps.init_rl_params(self.model_cfg, policy, init_key, algorithm="grpo")
        logical = rl.rl_logical_axes(self.model_cfg, "grpo", "shared")
        abstract = jax.eval_shape(lambda: params)
        shardings = trainer.state_shardings(logical, abstract, optimizer, self.mesh, rules)
        # The reference is a copy: the state's params are donated to the update.
        self.ref = jax.device_put(params["policy"], shardings.params["policy"])
        self.ref = jax.tree.map(lambda x: x.copy(), self.ref)
        self.state = trainer.state_from_params(params, shardings, optimizer, state_key)
        self.jitted = rl.build_jitted(self.cfg, self.model_cfg, optimizer, shardings, self.mesh)
        self.old_logprobs = old_logprobs

    def _sample(self, step: int, prompt_BxP, lens_B):
        import jax
        import numpy as np

        from r1jax import sampler, sharding

        # Prompts split over the data axis, so each host device samples its own rows.
        prompt_BxP, lens_B = sharding.put_batch((prompt_BxP, lens_B), self.mesh)
        out = sampler.generate_padded(
            self.model_cfg,
            self.state.params["policy"],
            prompt_BxP,
            lens_B,
            jax.random.fold_in(self.sample_key, step),
            max_new_tokens=NEW_TOKENS,
            temperature=1.0,
            top_p=1.0,
            top_k=0,
            num_samples=SAMPLES,
            eos_ids=(),  # no stop token: exactly T tokens, as TRL's min_new_tokens=T
        )
        out = jax.device_get(out)
        return np.asarray(out.tokens), np.asarray(out.lengths), np.asarray(out.logprobs)

    def step(self, step: int) -> dict:
        """One GRPO step; returns its phase times (each phase waits for its device work)."""
        import jax
        import numpy as np

        from r1jax import sharding
        from r1jax.rl import advantages, rollout

        t, clock = {}, time.perf_counter
        t0 = clock()
        prompt_BxP = np.asarray(prompt_ids(step), np.int32)
        lens_B = np.full((PROMPTS,), PROMPT_LEN, np.int32)
        tokens_NxT, lengths_N, sampler_logp_NxT = self._sample(step, prompt_BxP, lens_B)
        t["generate"], t0 = clock() - t0, clock()
        rewards_N = np.array([target_fraction(r[:n]) for r, n in zip(tokens_NxT, lengths_N)])
        adv_BxG = advantages.group_relative(rewards_N.reshape(PROMPTS, SAMPLES))
        host = rollout.training_arrays(prompt_BxP, lens_B, tokens_NxT, lengths_N, SAMPLES, PAD_ID)
        host["advantages_N"] = np.asarray(adv_BxG, np.float32).reshape(-1)
        host["sampler_logp_NxT"] = sampler_logp_NxT.astype(np.float32)
        batch = sharding.put_batch(host, self.mesh)
        t["reward+batch"], t0 = clock() - t0, clock()
        batch["ref_logp_NxT"] = jax.block_until_ready(self.jitted.logprobs(self.ref, batch))
        t["ref_logprobs"], t0 = clock() - t0, clock()
        if self.old_logprobs == "forward":  # what train/rl.py does today
            policy = self.state.params["policy"]
            batch["old_logp_NxT"] = jax.block_until_ready(self.jitted.logprobs(policy, batch))
        else:  # on-policy, one update: the sampler's log-probs are the old policy's
            batch["old_logp_NxT"] = batch["sampler_logp_NxT"]
        t["old_logprobs"], t0 = clock() - t0, clock()
        self.state, metrics = self.jitted.update(self.state, batch)
        jax.device_get(metrics)
        t["update"] = clock() - t0
        return t


def run_r1jax(model_dir: str, steps: int, warmup: int, old_logprobs: str) -> dict:
    """Runs warmup + steps GRPO steps with r1jax's pieces and times each."""
    side = R1jaxSide(model_dir, warmup + steps, old_logprobs)
    step_times, phases = [], []
    for step in range(warmup + steps):
        t0 = time.perf_counter()
        phases.append(side.step(step))
        step_times.append(time.perf_counter() - t0)
    return _summary(step_times, phases, warmup)


# ---------------------------------------------------------------------------------------------
# Parent: builds the model, measures the peak, runs each side in its own process, prints.


def _run_side(side: str, model_dir: str, args) -> dict:
    out = pathlib.Path(model_dir) / f"{side}.json"
    cmd = [sys.executable, __file__, "--side", side, "--model-dir", model_dir, "--out", str(out)]
    cmd += ["--steps", str(args.steps), "--warmup", str(args.warmup)]
    cmd += ["--threads", str(args.threads), "--old-logprobs", args.old_logprobs]
    cmd += ["--host-devices", str(args.host_devices)]
    malloc = args.host_malloc if side == "r1jax" else args.trl_host_malloc
    cmd += ["--host-malloc", malloc]
    from r1jax import hostmem  # huge pages are a glibc tunable: set when the side starts

    env = hostmem.environ_for(malloc, {**os.environ, "PYTHONWARNINGS": "ignore"})
    subprocess.run(cmd, check=True, env=env)
    return json.loads(out.read_text())


def _measure_peak() -> float:
    """The f32 matmul peak of this host (all cores), measured in a fresh process."""
    code = (
        "from r1jax.train import metrics; "
        "print(max(metrics.measure_matmul_peak_flops(n, repeats=10) for n in (1024, 2048)))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], check=True, capture_output=True, text=True, cwd=ROOT
    )
    return float(out.stdout.strip().splitlines()[-1])


def _print_report(results: dict, peak: float) -> None:
    flops = step_flops()
    print(f"\nworkload: B={PROMPTS} G={SAMPLES} P={PROMPT_LEN} T={NEW_TOKENS}, KL beta={BETA}")
    print(f"model FLOPs/step: {flops['total'] / 1e9:.1f} G; f32 matmul peak {peak / 1e9:.1f} G/s")
    for side, r in results.items():
        mfu = flops["total"] / r["step_s"] / peak
        steps = ", ".join(f"{s:.3f}" for s in r["step_s_all"])
        print(
            f"{side:6s} {r['step_s']:.3f} s/step (median after warm-up; all: {steps})  "
            f"MFU {100 * mfu:.1f}%  peak RSS {r['peak_rss_mib']:.0f} MiB  "
            f"host malloc {r.get('host_malloc', '?')}"
        )
        for name, sec in r["phases_s"].items():
            phase_flops = flops.get(name.split("+")[0], 0.0)
            util = f"  ({100 * phase_flops / sec / peak:.0f}% of peak)" if phase_flops else ""
            print(f"         {name:22s} {sec:.3f} s{util}")
    if {"trl", "r1jax"} <= results.keys():
        ratio = results["trl"]["step_s"] / results["r1jax"]["step_s"]
        print(f"speed-up r1jax over TRL: {ratio:.2f}x")
    print(json.dumps({"peak_flops": peak, "flops": flops, "results": results}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--side", choices=("both", "trl", "r1jax"), default="both")
    parser.add_argument("--model-dir")
    parser.add_argument("--out")
    parser.add_argument("--steps", type=int, default=5, help="timed steps (median reported)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed first steps")
    parser.add_argument("--threads", type=int, default=2, help="torch threads (TRL side)")
    parser.add_argument(
        "--old-logprobs",
        choices=("sampler", "forward"),
        default="sampler",
        help="r1jax: reuse the sampler's log-probs as the old policy's, or run a forward (driver)",
    )
    parser.add_argument(
        "--host-devices", type=int, default=1, help="r1jax: XLA host CPU devices (mesh data axis)"
    )
    parser.add_argument(
        "--host-malloc",
        choices=("auto", "hugepages", "reuse", "system"),
        default="auto",
        help="r1jax's host allocator (r1jax/hostmem.py; auto, as the CLI: transparent huge "
        "pages where glibc and the kernel allow, else reuse)",
    )
    parser.add_argument(
        "--trl-host-malloc",
        choices=("hugepages", "reuse", "system"),
        default="system",
        help="TRL: the same choice (default: glibc's defaults, as TRL runs)",
    )
    parser.add_argument("--sides", default="trl,r1jax", help="which sides the parent runs")
    parser.add_argument(
        "--rounds", type=int, default=2, help="rounds of both sides, alternating (median ratio)"
    )
    args = parser.parse_args()
    if args.steps < 1 or args.warmup < 0:
        parser.error(f"--steps must be >= 1 and --warmup >= 0, got {args.steps}, {args.warmup}")
    if args.side != "both":
        from r1jax import hostmem

        hostmem.configure(args.host_malloc)  # before jax or torch start their threads
        if args.side == "trl":
            result = run_trl(args.model_dir, args.steps, args.warmup, args.threads)
        else:
            # XLA's CPU client sees one device by default; several let the data axis of the mesh
            # run its shards on separate threads (must be set before jax is imported).
            flag = f"--xla_force_host_platform_device_count={args.host_devices}"
            os.environ["XLA_FLAGS"] = f"{os.environ.get('XLA_FLAGS', '')} {flag}"
            result = run_r1jax(args.model_dir, args.steps, args.warmup, args.old_logprobs)
        result["host_malloc"] = hostmem.resolve(args.host_malloc)
        pathlib.Path(args.out).write_text(json.dumps(result))
        return
    with tempfile.TemporaryDirectory(prefix="grpo_bench_") as tmp:
        make_model_dir(pathlib.Path(tmp))
        peak = _measure_peak()
        rounds = []
        for r in range(args.rounds):  # sides alternate, so a drifting machine hits both
            if args.rounds > 1:
                print(f"\n=== round {r + 1} of {args.rounds}")
            rounds.append({side: _run_side(side, tmp, args) for side in args.sides.split(",")})
            _print_report(rounds[-1], peak)
    if len(rounds) > 1 and {"trl", "r1jax"} <= rounds[0].keys():
        ratios = [r["trl"]["step_s"] / r["r1jax"]["step_s"] for r in rounds]
        shown = ", ".join(f"{x:.2f}x" for x in ratios)
        print(f"\nspeed-up per round: {shown}; median {statistics.median(ratios):.2f}x")


if __name__ == "__main__":
    main()
