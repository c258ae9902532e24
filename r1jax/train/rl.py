"""The RL stage (GRPO family and PPO): rollout, reference/old log-probs, update, checkpoints.

Shapes: B prompts, G samples per prompt, N = B*G sequences, T completion tokens.
"""

import contextlib
import dataclasses
import json
import pathlib
import time

import grain
import jax
import jax.numpy as jnp
import numpy as np
from absl import logging

from r1jax import configlib, distributed, memory, sampler, sharding, text
from r1jax.data import sources
from r1jax.model import heads, transformer
from r1jax.rewards import registry
from r1jax.rl import losses, rollout, steps
from r1jax.train import checkpoint, report, supervised, trainer
from r1jax.train import metrics as metrics_lib
from r1jax.train import state as state_lib


def loss_config(cfg) -> "steps.LossConfig":
    """The frozen loss settings the jitted update sees."""
    rl = cfg.rl
    return steps.LossConfig(
        clip_low=rl.clip_low,
        clip_high=rl.clip_high,
        dual_clip=rl.dual_clip or None,
        aggregation=rl.aggregation,
        ratio_level=rl.ratio_level,
        kl_coef=rl.kl_coef if rl.algorithm == "grpo" else 0.0,
        kl_estimator=rl.kl_estimator,
        entropy_coef=rl.entropy_coef,
        tis_cap=rl.tis_cap or None,
        temperature=rl.temperature,
        max_len=rl.max_new_tokens,
        value_clip=rl.value_clip,
        vf_coef=rl.vf_coef,
        whiten_advantages=rl.whiten_advantages,
        ppo_form=rl.ppo_form,
    )


# The preference reward models of all-domain RL (R1 §2.3.4): general prompts get the weighted
# sum of their scores (e.g. helpfulness on the summary, harmlessness on the whole response).
REWARD_MODELS = ("reward_model", "harmlessness_model")


def rollout_config(cfg) -> rollout.RolloutConfig:
    """The experience maker's settings (this process's share of the prompts)."""
    rl = cfg.rl
    return rollout.RolloutConfig(
        prompts_per_step=rl.prompts_per_step // jax.process_count(),
        num_samples=rl.num_samples,
        max_prompt_len=rl.max_prompt_len,
        max_new_tokens=rl.max_new_tokens,
        template=rl.template,
        advantage=rl.advantage,
        std_normalize=rl.std_normalize,
        group_advantages=rl.algorithm != "ppo",
        dynamic_sampling=rl.dynamic_sampling,
        max_sampling_rounds=rl.max_sampling_rounds,
        mask_truncated=rl.mask_truncated,
        overlong_buffer=rl.overlong_buffer,
        overlong_penalty=rl.overlong_penalty,
        general_rule_rewards=tuple(rl.general_rule_rewards),
        missing_eos_penalty=rl.missing_eos_penalty,
    )


def _check_rollout_fits(cfg, model_cfg, mesh) -> None:
    """memory.OutOfMemory when one rollout sampler call cannot fit even with the shortest
    prompts (checked at the start: the base model's evaluation, hours at scale, comes first)."""
    rl = cfg.rl
    prompts = min(rl.sample_prompts_per_call or rl.prompts_per_step, rl.prompts_per_step)
    shortest = sampler.PROMPT_BUCKETS[0]
    nbytes = sampler.sampling_bytes(
        model_cfg, prompts, shortest, rl.num_samples, rl.max_new_tokens, greedy=not rl.temperature
    )
    memory.check_fits(
        nbytes,
        mesh.devices.flat,
        f"a rollout sampler call of {prompts} prompts x {rl.num_samples} samples x "
        f"{rl.max_new_tokens} new tokens (the KV cache and token buffers, even were every "
        f"prompt {shortest} tokens or fewer)",
        "fewer prompts per call (rl.sample_prompts_per_call), fewer samples or fewer new tokens",
    )


def mixed_prompts(
    records, general, *, seed: int, per_round: int, general_per_round: int, general_from_round: int
):
    """One endless order of prompts: rounds of `per_round`, whose last `general_per_round`
    slots are general prompts from round `general_from_round` on (each list reshuffled per
    epoch; an index maps to its record in closed form, so the stream is checkpointable)."""
    reasoning = grain.MapDataset.source(records).shuffle(seed=seed).repeat(None)
    if not general or general_per_round <= 0:
        return reasoning
    # (wrapped: grain takes seeds below 2**32, and validate allows seed 2**32 - 1)
    chat = grain.MapDataset.source(general).shuffle(seed=(seed + 1) % 2**32).repeat(None)
    b, g, start = per_round, general_per_round, general_from_round

    def pick(j):
        rnd, slot = divmod(j, b)
        general_before = max(0, rnd - start) * g  # general prompts taken by earlier rounds
        if rnd >= start and slot >= b - g:
            return chat[general_before + slot - (b - g)]
        return reasoning[rnd * b - general_before + slot]

    return grain.MapDataset.range(len(reasoning)).map(pick)


def prompt_stream(
    records,
    *,
    seed: int,
    block: int = 1,
    general=(),
    general_per_step: int = 0,
    general_from_step: int = 0,
):
    """An endless, reshuffled-per-epoch stream of this process's prompt records (checkpointable).

    One global order whatever the process count: it is dealt to the P processes in blocks of
    `block` records (process p's k-th block is global block k*P + p), so P processes taking
    `block` prompts each take together the prompts one process would take. With `general`
    records, each round of P*block prompts ends with `general_per_step` of them from sampling
    round `general_from_step` on (a round is a step unless dynamic sampling adds rounds).
    """
    ds = mixed_prompts(
        records,
        list(general),
        seed=seed,
        per_round=block * jax.process_count(),
        general_per_round=general_per_step,
        general_from_round=general_from_step,
    )
    p, count = jax.process_index(), jax.process_count()
    if count > 1:
        whole = ds
        ds = grain.MapDataset.range(len(whole) // count).map(
            lambda j: whole[((j // block) * count + p) * block + j % block]
        )
    return iter(ds.to_iter_dataset())


def _check_general_rows(cfg, records, where: str) -> None:
    """A prompt of domain "general" is scored by a reward model: refused at start without one,
    not at the step that draws it (hours in; under several processes on that process alone,
    the others waiting in the step's collectives)."""
    if any(cfg.rl[name].path for name in REWARD_MODELS):
        return
    for i, record in enumerate(records, start=1):
        if record.get("domain") == "general":
            raise sources.DataError(
                f"{where}: record {i} is of domain 'general', which a reward model scores: set "
                "config.rl.reward_model.path, or drop the general rows"
            )


def load_general_prompts(cfg) -> list[dict]:
    """rl.general_prompts as records of domain "general" (routed to the reward model)."""
    path = cfg.rl.general_prompts
    # A row without a (non-blank) text prompt names its line, or is skipped (data.on_error).
    records = supervised.load_records(cfg, path, generic=True, required=(("prompt",),))
    if cfg.rl.general_rule_rewards:  # a rule reward graded there (an unknown language field)
        records = registry.check_records(
            list(cfg.rl.general_rule_rewards),
            records,
            f"config.rl.general_prompts ({path})",
            on_error=cfg.data.on_error,
        )
    return [{**r, "domain": "general"} for r in records]


def general_per_step(cfg) -> int:
    """General prompts in each step's batch (all processes together): rl.general_fraction of it."""
    if not cfg.rl.general_prompts:
        return 0
    return round(cfg.rl.general_fraction * cfg.rl.prompts_per_step)


def rl_logical_axes(model_cfg, algorithm: str, critic: str) -> dict:
    """Logical axes of the RL params layout {'policy', ['value_head'], ['critic']}."""
    out = {"policy": transformer.logical_axes(model_cfg)}
    if algorithm == "ppo":
        out["value_head"] = heads.value_head_logical_axes(model_cfg)
        if critic == "separate":
            out["critic"] = transformer.logical_axes(model_cfg)
    return out


@dataclasses.dataclass
class Jitted:
    """The compiled pieces of one RL run (each jitted once, params as arguments)."""

    update: object
    logprobs: object
    values: object | None


def in_micro_batches(fn, k: int):
    """`fn(params, batch) -> [N, ...]` over k micro-batches of the batch's rows, one after the
    other (`lax.map`), as the update takes them (`trainer.micro_batches`: each device keeps
    its rows): the reference, old-policy and value passes then hold one update micro-batch's
    activations, not the whole rollout's (512 rows x 4608 tokens: ~800 GB of attention
    scores). Leaves without the batch's rows (scalars) go to every call whole."""
    if k == 1:
        return fn

    def chunked(params, batch):
        n = batch["input_ids_NxL"].shape[0]
        rows = {key: x for key, x in batch.items() if jnp.ndim(x) and x.shape[0] == n}
        rest = {key: x for key, x in batch.items() if key not in rows}
        out = jax.lax.map(
            lambda micro: fn(params, {**rest, **micro}), trainer.micro_batches(rows, k)
        )
        return jax.tree.map(lambda x: jnp.swapaxes(x, 0, 1).reshape(n, *x.shape[2:]), out)

    return chunked


def build_jitted(cfg, model_cfg, optimizer, shardings, mesh) -> Jitted:
    """Jits the update step (state donated) and the log-prob / value functions (over the
    update's micro-batches, `in_micro_batches`)."""
    lcfg = loss_config(cfg)
    chunks = cfg.rl.num_minibatches * cfg.train.grad_accum
    batch_sh = sharding.batch_sharding(mesh)
    rules = sharding.rules_from_config(cfg.mesh.rules)
    common = dict(
        rules=rules,
        model_cfg=model_cfg,
        optimizer=optimizer,
        loss_cfg=lcfg,
        num_minibatches=cfg.rl.num_minibatches,
        epochs=cfg.rl.epochs,
        grad_accum=cfg.train.grad_accum,
    )
    if cfg.rl.algorithm == "ppo":
        update = trainer.jit_step(
            steps.ppo_update, shardings, mesh, batch_sharded=False, critic=cfg.rl.critic, **common
        )
        values = jax.jit(
            sharding.laid_out(
                in_micro_batches(
                    lambda p, b: steps.compute_values(model_cfg, p, b, critic=cfg.rl.critic),
                    chunks,
                ),
                mesh,
                rules,
            ),
            in_shardings=(shardings.params, batch_sh),
            out_shardings=batch_sh,
        )
    else:
        update = trainer.jit_step(steps.grpo_update, shardings, mesh, **common)
        values = None
    logprobs_fn = lambda p, b: steps.completion_logprobs(
        model_cfg, p, b, temperature=cfg.rl.temperature
    )[0]
    logprobs = jax.jit(
        sharding.laid_out(in_micro_batches(logprobs_fn, chunks), mesh, rules),
        in_shardings=(shardings.params["policy"], batch_sh),
        out_shardings=batch_sh,
    )
    return Jitted(update=update, logprobs=logprobs, values=values)


def _warn_long_prompts(cfg, tokenizer, records, where) -> None:
    """Warns when prompts do not fit rl.max_prompt_len: the sampler sees only their ends (the
    question's start, or the template's, is cut away without a trace in the metrics)."""
    if not records:
        return
    cut, checked, longest = rollout.long_prompts(
        records, tokenizer, cfg.rl.template, cfg.rl.max_prompt_len
    )
    if cut:
        logging.warning(
            "%d of %d prompts checked in %s (%.1f%%) are longer than rl.max_prompt_len=%d "
            "tokens (the longest %d) and are cut from the left (the policy sees only their "
            "ends); raise rl.max_prompt_len or drop long prompts",
            cut,
            checked,
            where,
            100 * cut / checked,
            cfg.rl.max_prompt_len,
            longest,
        )


class RLRun:
    """Everything one RL run holds between steps."""

    def __init__(self, cfg, workdir):
        self.cfg, self.workdir = cfg, pathlib.Path(workdir)
        with distributed.shared_errors():  # a data file one process cannot read stops them all
            configlib.validate(cfg)
            records = registry.check_records(
                dict(cfg.rl.rewards),
                supervised.load_records(cfg, cfg.data.train),
                f"config.data.train ({cfg.data.train})",
                on_error=cfg.data.on_error,
            )
            _check_general_rows(cfg, records, f"config.data.train ({cfg.data.train})")
            self.eval_records = []
            if cfg.data.eval:  # graded by task accuracy (report.Evaluator)
                self.eval_records = registry.check_records(
                    ["accuracy"],
                    supervised.load_records(cfg, cfg.data.eval),
                    f"config.data.eval ({cfg.data.eval})",
                    on_error=cfg.data.on_error,
                )
        self.tokenizer = supervised.resolve_tokenizer(cfg, workdir, records)
        model_cfg = configlib.model_config_from(cfg, vocab_size=self.tokenizer.vocab_size)
        self.model_cfg, policy = supervised.initial_params(cfg, model_cfg)
        supervised.warn_past_context(
            self.model_cfg,
            cfg.rl.max_prompt_len + cfg.rl.max_new_tokens,
            "rl.max_prompt_len + rl.max_new_tokens",
        )
        text.check_fits(self.tokenizer, self.model_cfg.vocab_size)
        configlib.save_resolved(cfg, workdir, self.model_cfg)
        self.mesh = sharding.make_mesh(cfg.mesh.to_dict())
        _check_rollout_fits(cfg, self.model_cfg, self.mesh)
        rules = sharding.rules_from_config(cfg.mesh.rules)
        critic_lr = cfg.rl.critic_lr if cfg.rl.algorithm == "ppo" else 0.0
        self.optimizer = state_lib.make_optimizer(cfg.optim, cfg.train.steps, critic_lr)
        self.lr_schedule = state_lib.learning_rate_schedule(cfg.optim, cfg.train.steps)
        self.critic_lr_schedule = critic_lr and state_lib.learning_rate_schedule(
            cfg.optim, cfg.train.steps, critic_lr
        )
        keys = jax.random.split(jax.random.PRNGKey(cfg.seed), 3)  # init, state, sample
        self.sample_key = keys[2]
        self.rules = rules
        logical = rl_logical_axes(self.model_cfg, cfg.rl.algorithm, cfg.rl.critic)
        rl_params = lambda policy, key: steps.init_rl_params(
            self.model_cfg, policy, key, algorithm=cfg.rl.algorithm, critic=cfg.rl.critic
        )
        if policy is None:  # initialised directly sharded: no device holds the whole model
            init = lambda key: rl_params(transformer.init_params(self.model_cfg, key), key)
            self.state, self.shardings = trainer.init_sharded_state(
                init, logical, self.optimizer, self.mesh, rules, keys[0], keys[1]
            )
        else:
            params = rl_params(policy, keys[0])
            abstract = jax.eval_shape(lambda: params)
            self.shardings = trainer.state_shardings(
                logical, abstract, self.optimizer, self.mesh, rules
            )
            self.state = trainer.state_from_params(params, self.shardings, self.optimizer, keys[1])
        # Kept at float32 precision, as it is checkpointed, so a resumed run logs the same value.
        self.kl_coef = float(np.float32(cfg.rl.kl_coef))
        # The reference policy (a copy: the state's buffers are donated to every update), held
        # and checkpointed only where a KL term reads it: rl.kl_coef=0 presets (DAPO, GSPO) keep
        # no second float32 model on the devices or on disk.
        self.ref = self._policy_copy() if self.kl_coef > 0 else None
        with distributed.shared_errors():
            general = load_general_prompts(cfg) if cfg.rl.general_prompts else []
        _warn_long_prompts(cfg, self.tokenizer, records, "config.data.train")
        _warn_long_prompts(cfg, self.tokenizer, general, "config.rl.general_prompts")
        self.prompts = prompt_stream(
            records,
            seed=cfg.seed,
            block=rollout_config(cfg).prompts_per_step,
            general=general,
            general_per_step=general_per_step(cfg),
            general_from_step=cfg.rl.general_from_step,
        )
        self.ckpt = checkpoint.manager(
            self.workdir / "checkpoints", max_to_keep=cfg.train.keep_checkpoints, writer=True
        )
        # Only PPO's adaptive KLs (the kl_penalty form's; the clip form's with rl.kl_horizon)
        # change the coefficient as it trains; a resume restores it there, and takes the
        # config's (perhaps new) value everywhere else.
        rl = cfg.rl
        penalty = rl.ppo_form == "kl_penalty" and rl.kl_target > 0
        self.adaptive_kl = rl.algorithm == "ppo" and (penalty or rl.kl_horizon > 0)
        self.flops = np.zeros(2, np.float32)  # cumulative (training, rollout) FLOPs; checkpointed
        # One update per rollout: the step uses its own log-probs as the old ones (PPO needs
        # them before the update for the KL in the reward).
        self.on_policy = cfg.rl.epochs * cfg.rl.num_minibatches == 1 and cfg.rl.algorithm == "grpo"
        self._restore()
        self.jitted = build_jitted(cfg, self.model_cfg, self.optimizer, self.shardings, self.mesh)
        self.pool = registry.RewardPool(
            dict(cfg.rl.rewards),
            num_workers=cfg.rl.reward_workers,
            timeout_s=cfg.rl.reward_timeout_s,
        )
        self.maker = rollout.ExperienceMaker(
            rollout_config(cfg),
            self.tokenizer,
            self.pool,
            self._sample,
            self.prompts,
            reward_models=self._reward_models(),
        )

    def _reward_models(self) -> list:
        """(name, scorer, weight) of rl.reward_model and rl.harmlessness_model, where set."""
        from r1jax.rewards import preference  # more models, loaded only when asked for

        out = []
        for name in REWARD_MODELS:
            rm = self.cfg.rl[name]
            if not rm.path:
                continue
            scorer = preference.RewardModelScorer.load(
                rm.path, mesh=self.mesh, scope=rm.scope, normalize=rm.normalize
            )
            out.append((name, scorer, rm.weight))
            if not rm.normalize and self.cfg.rl.std_normalize != "group":
                logging.warning(
                    "config.rl.%s: raw scores with rl.std_normalize=%r: its arbitrary offset "
                    "and scale set every prompt's advantage; consider normalize=True",
                    name,
                    self.cfg.rl.std_normalize,
                )
        return out

    def _policy_copy(self):
        return jax.tree.map(jnp.copy, self.state.params["policy"])

    def _extra(self) -> dict:
        """The arrays checkpointed beside the state: the KL coefficient, the FLOP counters and,
        where held, the reference policy."""
        extra = {"kl_coef": jnp.asarray(self.kl_coef, jnp.float32)}
        extra["flops"] = jnp.asarray(self.flops)
        if self.ref is not None:
            extra["ref"] = self.ref
        return extra

    def _extra_target(self, step: int) -> dict:
        """What to restore of `step`'s extra arrays: its reference policy wherever it holds one
        (a run with rl.kl_coef > 0 wrote it), dropped after the restore when this run's
        coefficient is 0.

        A KL turned on at a resume (the checkpoints were saved with rl.kl_coef=0, so hold no
        reference) takes the initial policy, as the run would have held it, unless
        rl.ref_reset_every has replaced that by `step`: then the run stops (that policy is
        gone)."""
        keys = checkpoint.saved_keys(self.ckpt, step, "extra")
        has_ref = keys is None or "ref" in keys  # unreadable metadata: restore as saved before
        every = self.cfg.rl.ref_reset_every
        if self.ref is not None and not has_ref and every and step >= every:
            raise configlib.ConfigError(
                f"{self.ckpt.directory}: step {step} was saved by a run with rl.kl_coef=0, so "
                f"holds no reference policy, and rl.ref_reset_every={every} replaced the initial "
                f"one by then; resume with --config.rl.kl_coef=0, or start a new --workdir from "
                f"these weights (--config.model.init_from={self.workdir}: the reference is then "
                f"the policy of step {step})"
            )
        extra = self._extra()
        if has_ref:
            extra["ref"] = self.ref if self.ref is not None else self.state.params["policy"]
        else:
            extra.pop("ref", None)
        return extra

    def _restore(self):
        latest = self.ckpt.latest_step()
        if latest is not None:
            self._extra_target(latest)  # a missing reference stops here, before any restore
        restored = checkpoint.restore_latest(
            self.ckpt, self.state, self.prompts, extra=self._extra_target
        )
        if restored is not None:
            self.state, self.prompts, extra = restored
            if self.ref is not None and "ref" not in extra:
                logging.warning(
                    "step %d holds no reference policy (saved with rl.kl_coef=0): the KL of "
                    "rl.kl_coef=%g is taken to the initial policy",
                    int(self.state.step),
                    self.kl_coef,
                )
            elif self.ref is not None:
                self.ref = extra["ref"]
            if self.adaptive_kl:  # the controller's state; elsewhere the config's value holds
                self.kl_coef = float(extra["kl_coef"])
            self.flops = np.array(extra["flops"], np.float32)  # a writable copy
            logging.info("resumed from step %d", int(self.state.step))

    def _sample(self, prompt_BxP, prompt_lens_B, round_index):
        """Samples G completions per prompt with the current policy params.

        All processes sample one global batch on the mesh (this process's prompts are its
        rows of it) and each gets its own rows back. With rl.sample_prompts_per_call, the
        prompts go in calls of that many (all processes together; the last call padded with
        empty prompts, so one program serves every call), so the KV cache holds one call's
        rows, not the rollout's; every prompt keeps the draws it has in one call of all of them
        (`sampler.generate_local`'s draw_from): the samples do not depend on the split.
        """
        rl = self.cfg.rl
        step_key = jax.random.fold_in(self.sample_key, int(self.step))
        key = jax.random.fold_in(step_key, round_index)
        b = prompt_BxP.shape[0]
        per_call = -(-rl.sample_prompts_per_call // jax.process_count())  # this process's share
        if not per_call or per_call >= b:
            return self._sample_call(prompt_BxP, prompt_lens_B, key, None)
        parts = []
        for start in range(0, b, per_call):
            tokens_CxP = np.full((per_call, prompt_BxP.shape[1]), self.tokenizer.pad_id, np.int32)
            lens_C = np.zeros((per_call,), np.int32)
            n = min(per_call, b - start)
            tokens_CxP[:n], lens_C[:n] = (
                prompt_BxP[start : start + n],
                prompt_lens_B[start : start + n],
            )
            out = self._sample_call(tokens_CxP, lens_C, key, (start, b))
            parts.append({name: x[: n * rl.num_samples] for name, x in out.items()})
        return {name: np.concatenate([p[name] for p in parts]) for name in parts[0]}

    def _sample_call(self, prompt_BxP, prompt_lens_B, key, draw_from):
        rl = self.cfg.rl
        out = sampler.generate_local(
            self.model_cfg,
            self.state.params["policy"],
            prompt_BxP,
            prompt_lens_B,
            key,
            mesh=self.mesh,
            rules=self.rules,
            draw_from=draw_from,
            max_new_tokens=rl.max_new_tokens,
            temperature=rl.temperature,
            top_p=rl.top_p,
            top_k=rl.top_k,
            num_samples=rl.num_samples,
            eos_ids=text.stop_ids(self.tokenizer),
        )
        return {
            "tokens": out["tokens"],
            "lengths": out["lengths"],
            "logprobs": out["logprobs"],
            "truncated": ~out["stopped"],
        }

    def step_once(self) -> tuple[dict, rollout.Samples]:
        """One RL step: rollout, log-probs, (PPO: values and GAE), update. Returns its metrics
        and the rollout's samples."""
        rl, t = self.cfg.rl, {}
        self.step = int(self.state.step)
        host, metrics, samples = self.maker.make()
        self.last_host_batch = host
        batch = sharding.put_batch(host, self.mesh)
        inputs = dict(batch)  # the log-prob function's arguments (one compiled program)
        t0 = time.perf_counter()
        if not self.on_policy:  # several updates per rollout: freeze the sampling policy's numbers
            batch["old_logp_NxT"] = self.jitted.logprobs(self.state.params["policy"], batch)
        zeros = jnp.zeros_like(batch["sampler_logp_NxT"])
        batch["ref_logp_NxT"] = self.jitted.logprobs(self.ref, batch) if self.kl_coef > 0 else zeros
        if rl.algorithm == "ppo":
            self._ppo_targets(batch, samples)
        jax.block_until_ready(batch["ref_logp_NxT"])
        t["logprob_s"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        self.state, update_metrics = self.jitted.update(self.state, batch)
        update_metrics = jax.device_get(update_metrics)
        t["update_s"] = time.perf_counter() - t0
        metrics.update({k: float(np.asarray(v)) for k, v in update_metrics.items()})
        metrics["lr"] = float(self.lr_schedule(self.step))  # every update of the step's (its rate)
        if self.critic_lr_schedule:  # PPO's critic on an optimizer of its own
            metrics["value/lr"] = float(self.critic_lr_schedule(self.step))
        metrics.update(t)
        if rl.algorithm == "ppo":
            metrics.update(_critic_fit(batch, host["completion_mask_NxT"]))
            metrics["kl_ref_k3"], reward_kl = 0.0, rl.ppo_form == "clip" and self.adaptive_kl
            if self.kl_coef > 0:  # one host copy of the old and reference log-probs for both
                old, ref = (sharding.local_rows(batch[k]) for k in ("old_logp_NxT", "ref_logp_NxT"))
                # Mean k3 KL(policy || reference) over completion tokens (the kl_penalty form's
                # coefficient follows KL(old || new) instead, `adapt_kl`).
                metrics["kl_ref_k3"] = _mean_k3(ref - old, host["completion_mask_NxT"])
                if reward_kl:  # of the rollout, updated or not
                    metrics["kl_ref_per_sample"] = self.adapt_reward_kl(old, ref, host)
            # The kl_penalty form's, after an update (a skipped one changed nothing).
            if not reward_kl and not metrics.get("skipped_updates", 0.0):
                d = self.adapt_kl(inputs, batch["old_logp_NxT"], host)
                if d is not None:
                    metrics["kl_old_new"] = d
        reset = rl.ref_reset_every and int(self.state.step) % rl.ref_reset_every == 0
        if reset and self.ref is not None:
            self.ref = self._policy_copy()
        return metrics, samples

    def _ppo_targets(self, batch, samples):
        """PPO: per-token rewards (task score at the last token, KL penalty) and GAE."""
        rl = self.cfg.rl
        values_NxT = self.jitted.values(self.state.params, batch)
        # The task score with DAPO's overlong shaping (as the GRPO family's advantages get it),
        # for every process's rows: the batch's arrays are global.
        everyone = distributed.gather_rows
        score_N = everyone(samples.rewards_N) + rollout.overlong_shaping(
            everyone(samples.lengths_N), rl.max_new_tokens, rl.overlong_buffer, rl.overlong_penalty
        )
        score_N = jnp.asarray(score_N, jnp.float32)
        rewards_NxT = losses.kl_in_reward(
            score_N,
            batch["old_logp_NxT"],
            batch["ref_logp_NxT"],
            batch["completion_mask_NxT"],
            # The kl_penalty form puts the (adaptive) KL in the loss instead of the reward.
            kl_coef=self.kl_coef if rl.ppo_form == "clip" else 0.0,
            estimator=rl.kl_estimator,
        )
        adv_NxT, returns_NxT = steps.ppo_advantages(
            rewards_NxT,
            values_NxT,
            batch["completion_mask_NxT"],
            gamma=rl.gamma,
            lam=rl.lam,
            whiten=False,  # ppo_update whitens over the whole rollout (loss_cfg.whiten_advantages)
        )
        batch.update(old_values_NxT=values_NxT, returns_NxT=returns_NxT, advantages_NxT=adv_NxT)
        batch["kl_coef"] = jax.device_put(
            jnp.asarray(self.kl_coef, jnp.float32), sharding.replicated(self.mesh)
        )

    def adapt_kl(self, inputs, old_logp_NxT, host) -> float | None:
        """PPO's adaptive KL penalty (kl_penalty form, Schulman et al. 2017 §4): after the
        update, d = KL(pi_old || pi) over the rollout's completion tokens (k3 on the tokens the
        old policy sampled, all processes' rows), and the coefficient halves or doubles toward
        rl.kl_target. Returns d (None in other forms, where the coefficient is fixed)."""
        rl = self.cfg.rl
        if not self.adaptive_kl or rl.ppo_form != "kl_penalty":
            return None
        new = sharding.local_rows(self.jitted.logprobs(self.state.params["policy"], inputs))
        d = _mean_k3(new - sharding.local_rows(old_logp_NxT), host["completion_mask_NxT"])
        coef = losses.adaptive_kl_coef(self.kl_coef, d, target=rl.kl_target)
        self.kl_coef = float(np.float32(coef))  # checkpointed as float32
        return d

    def adapt_reward_kl(self, old, ref, host) -> float:
        """Ziegler et al.'s controller of the KL in the reward (clip form, rl.kl_horizon): the
        rollout's KL(pi_old || ref) per sample, rl.kl_estimator summed over each completion's
        tokens and averaged over every process's samples, moves the coefficient the next
        steps use toward rl.kl_target (`old`, `ref`: this process's rows). Returns that KL."""
        rl = self.cfg.rl
        mask = host["completion_mask_NxT"]
        kl = np.asarray(losses.kl(old, ref, rl.kl_estimator), np.float64)
        kl_sum = (np.where(mask > 0, kl, 0.0)).sum()
        rows = distributed.gather_rows(np.asarray([[kl_sum, mask.shape[0]]])).sum(axis=0)
        d = float(rows[0] / rows[1])
        coef = losses.proportional_kl_coef(
            self.kl_coef, d, target=rl.kl_target, n_samples=int(rows[1]), horizon=rl.kl_horizon
        )
        self.kl_coef = float(np.float32(coef))  # checkpointed as float32
        return d

    def save(self, force=False):
        checkpoint.save(self.ckpt, self.state, self.prompts, extra=self._extra(), force=force)

    def close(self):
        checkpoint.wait(self.ckpt)
        self.pool.close()


def _logged_prompts(records: list[dict]) -> list[int]:
    """The prompts samples.jsonl shows: the first 4, the last of them a general prompt's when
    the batch has one (they come last in a step's batch: none was ever shown)."""
    picks = list(range(min(4, len(records))))
    general = [b for b, r in enumerate(records) if r.get("domain") == "general"]
    if general and picks and general[0] not in picks:
        picks[-1] = general[0]
    return picks


def _log_sample(step: int, samples, every: int, workdir) -> None:
    """Logs a completion every `every` steps; appends one per prompt (up to 4, of process 0's
    prompts under several processes; `_logged_prompts`) to samples.jsonl."""
    if not every or step % every:
        return
    with distributed.shared_errors():  # process 0's write (a full disk) stops every process
        if samples.texts and jax.process_index() == 0:
            _append_samples(step, samples, workdir)
    if samples.texts and jax.process_index() == 0:
        logging.info(
            "step %d sample (reward %.2f): %s\n  -> %r",
            step,
            float(samples.rewards_N[0]),
            samples.records[0]["prompt"][:200],
            samples.texts[0][:400],
        )


def _append_samples(step: int, samples, workdir) -> None:
    """samples.jsonl's rows of this step: one completion of each `_logged_prompts` prompt."""
    group = len(samples.texts) // len(samples.records)
    with (pathlib.Path(workdir) / "samples.jsonl").open("a", encoding="utf-8") as f:
        for b in _logged_prompts(samples.records):
            row = {
                "step": step,
                "prompt": samples.records[b]["prompt"],
                "completion": samples.texts[b * group],
                "reward": float(samples.rewards_N[b * group]),
            }
            if "domain" in samples.records[b]:
                row["domain"] = samples.records[b]["domain"]
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


def run(cfg, workdir) -> dict:
    """Runs the RL stage to cfg.train.steps, resuming from WORKDIR when it can."""
    r = RLRun(cfg, workdir)
    start = int(r.state.step)
    peak = cfg.metrics.peak_flops or metrics_lib.measure_matmul_peak_flops()
    writer = metrics_lib.MetricsWriter(
        workdir, total_steps=cfg.train.steps, start_step=start, tensorboard=cfg.metrics.tensorboard
    )
    bad_in_row = alike_in_row = 0
    with distributed.shared_errors():
        if jax.process_index() == 0:  # a resumed run redoes the rows after its checkpoint
            metrics_lib.drop_rows_after(pathlib.Path(workdir) / "samples.jsonl", start)
    evaluator, before = _evaluator(r), None
    # SIGTERM: save after the step and exit (`trainer.Preemption`); the writer and the run are
    # closed however the loop ends.
    with contextlib.closing(writer), contextlib.closing(r), trainer.Preemption() as preemption:
        if evaluator is not None:  # the base model's numbers, once (a resumed run reads them)
            before = evaluator.load("eval_before")
            if before is None and start == 0:
                before = evaluator.evaluate(r.state.params["policy"], "eval_before")
        if start < cfg.train.steps:
            checkpoint.ensure_room(r.ckpt, (r.state, r._extra()), start)
        for step in range(start + 1, cfg.train.steps + 1):
            t0 = time.perf_counter()
            metrics, samples = r.step_once()
            metrics["step_time_s"] = time.perf_counter() - t0
            checkpoint.check(r.ckpt)  # a background save that failed stops the run now
            step_flops = _step_flops(cfg, r, samples, metrics["generated_tokens"])
            metrics.update(
                _throughput(step_flops, metrics["generated_tokens"], metrics["step_time_s"], peak)
            )
            r.flops += np.asarray(step_flops, np.float32)
            metrics["total_flops"] = float(r.flops.sum())
            if evaluator is not None and cfg.rl.eval_every and step % cfg.rl.eval_every == 0:
                quick = evaluator.evaluate(r.state.params["policy"], f"eval_{step}", quick=True)
                metrics.update({f"eval/{k}": v for k, v in quick.metrics.items() if "/" not in k})
            bad_in_row = _guard_bad_steps(r, metrics, step, bad_in_row)
            alike_in_row = _watch_learning_signal(cfg, metrics, step, alike_in_row)
            metrics["kl_coef"] = r.kl_coef
            if step % cfg.train.log_every == 0 or step == cfg.train.steps:
                writer.write(step, metrics)
            _log_sample(step, samples, cfg.rl.log_samples_every, workdir)
            saved = step % cfg.train.checkpoint_every == 0 or step == cfg.train.steps
            if saved:
                r.save(force=True)
            if step < cfg.train.steps and preemption.should_stop():
                if not saved:
                    r.save(force=True)
                checkpoint.wait(r.ckpt)
                preemption.exit(step, workdir)
        writer.close()
        if evaluator is not None:
            # A finished run started again reads its result, as it reads eval_before: it sampled
            # the same params' evaluation again (hours at the real sizes).
            after = evaluator.load("eval_after") if start >= cfg.train.steps else None
            if after is None:
                after = evaluator.evaluate(r.state.params["policy"], "eval_after")
            with distributed.shared_errors():  # (a pipeline's next stage waits for this one)
                if jax.process_index() == 0:
                    flops = {"train_flops": float(r.flops[0]), "rollout_flops": float(r.flops[1])}
                    done = report.write_report(workdir, before, after, flops, steps=cfg.train.steps)
                    gain = json.dumps(done.get("gain", {}), sort_keys=True)
                    logging.info("gain, after minus before (summary.json): %s", gain)
    return {"step": int(r.state.step), "model": r.model_cfg}


def _evaluator(r: "RLRun"):
    """Held-out evaluation when data.eval is set (before and after training, every eval_every)."""
    if not r.eval_records:
        return None
    return report.Evaluator(r.cfg, r.workdir, r.model_cfg, r.tokenizer, r.eval_records, r.mesh)


def _mean_k3(log_ratio_NxT, mask_NxT) -> float:
    """Mean k3 estimate exp(x) - x - 1 of log ratios x over every process's completion tokens
    (this process's rows given; padding ignored)."""
    x = np.where(mask_NxT > 0, log_ratio_NxT, 0.0)
    k3_sum = ((np.expm1(x) - x) * mask_NxT).sum()  # as losses.kl
    k3_sum, count = distributed.gather_rows(np.asarray([[k3_sum, mask_NxT.sum()]])).sum(axis=0)
    return float(k3_sum / max(count, 1.0))


def _critic_fit(batch, mask_NxT) -> dict:
    """PPO's critic on the rollout, before the update, over every process's completion tokens:
    value/explained_variance = 1 - Var(returns - values) / Var(returns) (1 a perfect fit, 0 no
    better than a constant, negative worse; left out when the returns do not vary) and
    value/return_mean."""
    v = sharding.local_rows(batch["old_values_NxT"]).astype(np.float64)
    g = sharding.local_rows(batch["returns_NxT"]).astype(np.float64)
    m = np.asarray(mask_NxT > 0, np.float64)
    v, g = np.where(m > 0, v, 0.0), np.where(m > 0, g, 0.0)  # padding holds anything
    sums = [
        m.sum(),
        (g * m).sum(),
        (g * g * m).sum(),
        ((g - v) * m).sum(),
        ((g - v) ** 2 * m).sum(),
    ]
    n, g1, g2, e1, e2 = distributed.gather_rows(np.asarray([sums])).sum(axis=0)
    n = max(n, 1.0)
    var_g, var_e = g2 / n - (g1 / n) ** 2, e2 / n - (e1 / n) ** 2
    fit = {"value/return_mean": float(g1 / n)}
    if var_g > 1e-12:
        fit["value/explained_variance"] = float(1.0 - var_e / var_g)
    return fit


def _scoring_passes(cfg, r: "RLRun") -> int:
    """Forward passes over the rollout besides the update: reference (when KL is on), old
    policy (when the update is not on-policy), values (PPO), updated policy (kl_penalty)."""
    kl_penalty = cfg.rl.algorithm == "ppo" and cfg.rl.ppo_form == "kl_penalty"
    return int((r.kl_coef > 0) + (not r.on_policy) + (cfg.rl.algorithm == "ppo") + kl_penalty)


def _step_flops(cfg, r: "RLRun", samples, generated_tokens: float) -> tuple[float, float]:
    """(training, rollout) FLOPs of one step, all processes together (see report.step_flops).

    generated_tokens: every sampling round's (dynamic sampling drops groups it sampled)."""
    n_seq = len(samples.texts) * jax.process_count()
    seq = samples.prompt_BxP.shape[1] + samples.completion_NxT.shape[1]
    separate_critic = cfg.rl.algorithm == "ppo" and cfg.rl.critic == "separate"
    flops = report.step_flops(
        r.model_cfg,
        trained_tokens=n_seq * seq,
        generated_tokens=generated_tokens,
        scored_tokens=_scoring_passes(cfg, r) * n_seq * seq,
        epochs=cfg.rl.epochs,
        seq_len=seq,
        trained_models=2 if separate_critic else 1,  # a separate critic trains a second model
    )
    return flops["train_flops"], flops["rollout_flops"]


def _guard_bad_steps(r: RLRun, metrics: dict, step: int, bad_in_row: int) -> int:
    """Counts steps whose update was skipped as non-finite; stops the run after too many."""
    if metrics.get("skipped_updates", 0.0) == 0:
        return 0
    bad_in_row += 1
    if bad_in_row >= r.cfg.train.max_bad_steps:
        path = trainer.bad_batch_path(r.workdir, step)  # this process's rows
        np.savez(path, **r.last_host_batch)
        raise trainer.BadStepsError(
            f"{bad_in_row} RL steps in a row with non-finite updates (last: step {step}); "
            f"its rollout batch is saved in {path}"
        )
    return bad_in_row


# Steps in a row whose groups all scored alike before a warning: a base model can fail every
# sample of a few early steps; ten in a row is more often a reward that cannot pay (a wrong
# answer field, a format the prompt never asks for) or a task far from the model's reach.
NO_SIGNAL_STEPS = 10


def _watch_learning_signal(cfg, metrics: dict, step: int, alike_in_row: int) -> int:
    """Counts GRPO-family steps in a row where every prompt's samples scored the same (all
    advantages 0: the rewards teach nothing); warns when the count reaches NO_SIGNAL_STEPS.
    PPO's critic gives advantages of equal rewards, so it is not watched."""
    if cfg.rl.algorithm == "ppo" or metrics.get("zero_std_groups", 0.0) < 1.0:
        return 0
    alike_in_row += 1
    if alike_in_row == NO_SIGNAL_STEPS:
        logging.warning(
            "steps %d-%d: all %d samples of every prompt scored alike (this step's mean reward "
            "%.3f), so every group-relative advantage is 0 and the rewards train nothing (only "
            "the KL term moves the policy). Check config.rl.rewards against the data (the "
            "answer field, the format asked for) and the samples in samples.jsonl; the metric "
            "zero_std_groups is the share of such prompts",
            step - NO_SIGNAL_STEPS + 1,
            step,
            cfg.rl.num_samples,
            metrics.get("reward", float("nan")),
        )
    return alike_in_row


def _throughput(step_flops, generated_tokens: float, step_time_s: float, peak: float) -> dict:
    """Generated tokens/s and model FLOPs utilisation of the whole step (`_step_flops`)."""
    return {
        "gen_tokens_per_s": generated_tokens / step_time_s,
        "mfu": sum(step_flops) / step_time_s / (peak * metrics_lib.peak_units()),
    }
