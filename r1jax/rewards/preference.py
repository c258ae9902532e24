"""Preference reward models (Bradley-Terry): the scalar score, the pairwise loss, a scorer.

B pairs, R scored rows, T time (a length bucket), D model.

A reward model is the decoder trunk with a scalar head read at each row's last real token:
params {"trunk": decoder params, "head": value-head params}. A (prompt, response) row is
tokenized exactly as SFT trains it (BOS + template(prompt) + response + EOS) and, when too long,
keeps its end (BOS, then the last tokens: the response and EOS), where the score is read.
"""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np

from r1jax import configlib, distributed, sampler, sharding, text
from r1jax.model import heads, transformer
from r1jax.train import checkpoint

SCOPES = ("response", "summary")


def init_params(model_cfg, trunk_params, key: jax.Array) -> dict:
    """Reward-model params around a decoder's params, with a fresh (seeded) scalar head."""
    return {"trunk": trunk_params, "head": heads.init_value_head(model_cfg, key)}


def logical_axes(model_cfg) -> dict:
    """Logical axis names of the reward-model params (placing them like the trainer does)."""
    return {
        "trunk": transformer.logical_axes(model_cfg),
        "head": heads.value_head_logical_axes(model_cfg),
    }


def scores(model_cfg, params, tokens_RxT: jax.Array, mask_RxT: jax.Array) -> jax.Array:
    """Scores [R] in float32: the head's value at each right-padded row's last real token."""
    if tokens_RxT.ndim != 2 or mask_RxT.shape != tokens_RxT.shape:
        raise ValueError(f"tokens {tokens_RxT.shape} and mask {mask_RxT.shape}: need equal [R, T]")
    h_RxTxD = transformer.hidden_states(
        model_cfg, params["trunk"], tokens_RxT, segment_ids_BxT=mask_RxT.astype(jnp.int32)
    )
    return heads.last_token_scores(model_cfg, params["head"], h_RxTxD, mask_RxT)


def bradley_terry_terms(chosen_B: jax.Array, rejected_B: jax.Array) -> dict:
    """Sums over pairs (exact under accumulation): nll of -log σ(r_c - r_r), correct, margin."""
    if chosen_B.shape != rejected_B.shape or chosen_B.ndim != 1:
        raise ValueError(f"chosen {chosen_B.shape} and rejected {rejected_B.shape}: need [B]")
    margin_B = chosen_B.astype(jnp.float32) - rejected_B.astype(jnp.float32)
    return {
        "nll": -jnp.sum(jax.nn.log_sigmoid(margin_B)),
        "correct": jnp.sum((margin_B > 0).astype(jnp.float32)),
        "margin": jnp.sum(margin_B),
        "pairs": jnp.asarray(margin_B.shape[0], jnp.float32),
    }


def bradley_terry_loss(chosen_B: jax.Array, rejected_B: jax.Array) -> tuple[jax.Array, dict]:
    """(mean -log σ(r_c - r_r), {"accuracy": share with r_c > r_r, "margin": mean r_c - r_r})."""
    terms = bradley_terry_terms(chosen_B, rejected_B)
    return terms_to_metrics(terms)


def terms_to_metrics(terms: dict) -> tuple[jax.Array, dict]:
    """(loss, {accuracy, margin}) from summed terms."""
    n = jnp.maximum(terms["pairs"], 1.0)
    return terms["nll"] / n, {"accuracy": terms["correct"] / n, "margin": terms["margin"] / n}


# ---- tokenization ---------------------------------------------------------------------------


def tokenize(tokenizer, prompt: str, response: str, *, template: str, max_len: int) -> list[int]:
    """BOS + template(prompt) + response + EOS as SFT tokenizes it; over max_len, keeps the end
    (BOS stays, the start of the prompt goes first)."""
    head = text.bos_ids(tokenizer)
    body = text.prompt_ids(tokenizer, template, prompt)
    response_ids = text.encode_continuation(tokenizer, text.response_text(template, response))
    body += text.with_eos(tokenizer, response_ids)
    if max_len and len(head) + len(body) > max_len:
        body = body[len(body) - (max_len - len(head)) :]
    return head + body


def bucket_length(length: int, max_len: int) -> int:
    """Padded length of a batch whose longest row has `length` tokens (few distinct values)."""
    return min(sampler.prompt_bucket(length), max_len) if max_len else sampler.prompt_bucket(length)


def pad_rows(rows, length: int, pad_id: int, *, num_rows: int | None = None):
    """(tokens [R, T], mask [R, T]) numpy, right-padded; num_rows adds empty rows at the end."""
    num_rows = len(rows) if num_rows is None else num_rows
    tokens_RxT = np.full((num_rows, length), pad_id, np.int32)
    mask_RxT = np.zeros((num_rows, length), np.bool_)
    for i, ids in enumerate(rows):
        if len(ids) > length:
            raise ValueError(f"row {i} has {len(ids)} tokens, more than the padded length {length}")
        tokens_RxT[i, : len(ids)] = ids
        mask_RxT[i, : len(ids)] = True
    return tokens_RxT, mask_RxT


def response_in_scope(response: str, scope: str, *, prompt_opens_think: bool = False) -> str:
    """The part of a response a reward model judges: all of it, or (summary) what follows the
    last </think> (R1 judges helpfulness on the summary); an unclosed think (also one the
    prompt opened) has no summary."""
    if scope == "response":
        return response
    if scope != "summary":
        raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
    if text.THINK_CLOSE in response:
        return response.rsplit(text.THINK_CLOSE, 1)[1].strip()
    unclosed = prompt_opens_think or response.lstrip().startswith(text.THINK_OPEN)
    return "" if unclosed else response


def has_summary(response: str, *, prompt_opens_think: bool = False) -> bool:
    """Whether a response has a non-empty summary for a 'summary'-scope reward model to judge
    (one cut inside its thought, or ending at </think>, has none)."""
    return bool(response_in_scope(response, "summary", prompt_opens_think=prompt_opens_think))


# ---- scorer ---------------------------------------------------------------------------------


def read_run(run_dir, *, normalize: bool = False):
    """(model config, run config, score statistics or None, rm_eval.json's fields) of a
    reward_model run folder, without its params; a ConfigError when it is not one (or, with
    normalize, has no score statistics of its newest checkpoint). A stage that scores late
    checks its reward model with it at start."""
    run_dir = pathlib.Path(run_dir)
    # What the folder is comes first: an SFT run or a Hugging Face folder given with
    # normalize was told to train "again" for its missing score statistics. ConfigError:
    # the command prints it in one line (a ValueError was a traceback).
    try:
        model_cfg, run_cfg = configlib.load_resolved(run_dir)
    except ValueError as e:  # a config.json that r1jax did not write (a Hugging Face one)
        raise configlib.ConfigError(f"{run_dir} is not a reward_model run: {e}") from None
    if run_cfg.get("stage") != "reward_model":
        raise configlib.ConfigError(
            f"{run_dir} is a {run_cfg.get('stage')!r} run, not a reward_model run (a "
            "trunk and a scalar head, trained by the reward_model stage)"
        )
    stats = None
    report = run_dir / "rm_eval.json"
    found = json.loads(report.read_text()) if report.is_file() else {}
    if normalize:
        if not (found.get("score_std") or 0) > 0:
            raise configlib.ConfigError(
                f"{run_dir}: normalize needs the score statistics a reward_model run writes "
                f"to rm_eval.json at its end (score_mean, score_std); {report} has none "
                "(a run from before they were recorded: train it again, or do not normalize)"
            )
        stats = (float(found["score_mean"]), float(found["score_std"]))
        saved = run_dir / "checkpoints"
        newest = checkpoint.manager(saved).latest_step() if saved.is_dir() else None
        if newest is not None and newest != found.get("step"):
            raise configlib.ConfigError(
                f"{run_dir}: normalize's score statistics (rm_eval.json) are of step "
                f"{found.get('step')}, its newest checkpoint of step {newest}: a run trained "
                "on and not finished (finish it first, or do not normalize)"
            )
    return model_cfg, run_cfg, stats, found


class RewardModelScorer:
    """Scores (prompt, response) texts with a reward model: jitted once per length bucket,
    params as arguments, rows sorted by length so a bucket holds rows of similar length.

    With a mesh, params are placed by their logical axes and rows split over the batch axes; in
    a multi-process run every process must call score() with the same number of rows.
    """

    def __init__(
        self,
        model_cfg,
        params,
        tokenizer,
        *,
        template: str,
        max_len: int = 0,
        mesh=None,
        rules=sharding.DEFAULT_RULES,
        scope: str = "response",
        batch_size: int = 64,
        normalize: tuple[float, float] | None = None,
    ):
        if scope not in SCOPES:
            raise ValueError(f"scope must be one of {SCOPES}, got {scope!r}")
        if normalize is not None and not normalize[1] > 0:
            raise ValueError(f"normalize needs (mean, std) with std > 0, got {normalize}")
        self.normalize = normalize  # score() returns (score - mean) / std
        self.raw_std: float | None = None  # its scores' std on its evaluation responses
        self.model_cfg, self.tokenizer, self.template = model_cfg, tokenizer, template
        self.max_len = min(max_len or model_cfg.max_seq_len, model_cfg.max_seq_len)
        self.mesh, self.rules, self.scope = mesh, rules, scope
        divisor = 1 if mesh is None else sharding.batch_divisor(mesh)
        self.batch_size = -(-max(batch_size, 1) // divisor) * divisor
        self.params = params if mesh is None else self.place(params)
        fn = lambda p, tokens, mask: scores(model_cfg, p, tokens, mask)
        self._score = jax.jit(fn if mesh is None else sharding.laid_out(fn, mesh, rules))

    def place(self, params):
        """Params on this scorer's mesh by their logical axes."""
        logical = logical_axes(self.model_cfg)
        shardings = sharding.param_shardings(logical, self.mesh, self.rules, shapes=params)
        return jax.device_put(params, shardings)

    @classmethod
    def load(
        cls,
        run_dir,
        *,
        mesh=None,
        scope: str = "response",
        batch_size: int = 64,
        rules=None,
        normalize: bool = False,
    ) -> "RewardModelScorer":
        """A scorer from a reward_model run folder: its config.json, tokenizer and the params
        of its newest checkpoint (restored straight onto the mesh when one is given).

        normalize: z-score its scores by the mean and std of its scores over the responses of
        its evaluation pairs (rm_eval.json's score_mean / score_std), so that models trained
        apart add up on one scale and next to the rule rewards (Bradley-Terry fixes only score
        differences: a model's offset and scale are arbitrary)."""
        run_dir = pathlib.Path(run_dir)
        model_cfg, run_cfg, stats, found = read_run(run_dir, normalize=normalize)
        model_cfg = dataclasses.replace(model_cfg, remat="none")
        if rules is None:
            rules = sharding.rules_from_config(run_cfg.get("mesh", {}).get("rules", []))
        abstract = jax.eval_shape(
            lambda k: init_params(model_cfg, transformer.init_params(model_cfg, k), k),
            jax.random.key(0),
        )
        if mesh is None:
            where = jax.tree.map(
                lambda _: jax.sharding.SingleDeviceSharding(jax.devices()[0]), abstract
            )
        else:
            try:
                where = sharding.param_shardings(
                    logical_axes(model_cfg), mesh, rules, shapes=abstract
                )
            except sharding.ShardingError as e:  # the policy may divide the mesh; this may not
                raise sharding.ShardingError(f"reward model {run_dir}: {e}") from None
        abstract = jax.tree.map(
            lambda x, sh: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sh), abstract, where
        )
        params = checkpoint.restore_params(run_dir, abstract)
        scorer = cls(
            model_cfg,
            params,
            text.load_tokenizer(run_dir),
            template=run_cfg["data"]["template"],
            max_len=run_cfg.get("rm", {}).get("max_len", 0),
            mesh=mesh,
            rules=rules,
            scope=scope,
            batch_size=batch_size,
            normalize=stats,
        )
        scorer.raw_std = found.get("score_std") or None
        return scorer

    def score_spread(self) -> float | None:
        """The std of this scorer's scores on its evaluation responses, on the scale score()
        returns (1 when normalized); None when its run recorded none."""
        return 1.0 if self.normalize is not None else self.raw_std

    def tokenize(self, prompt: str, response: str, *, prompt_opens_think: bool = False):
        """One row's token ids as this reward model reads it (scope applied)."""
        response = response_in_scope(response, self.scope, prompt_opens_think=prompt_opens_think)
        return tokenize(
            self.tokenizer, prompt, response, template=self.template, max_len=self.max_len
        )

    def score(self, prompts, responses, *, opens_think=None) -> np.ndarray:
        """Scores float32 [N] of raw question texts and their responses (opens_think: per row,
        whether its prompt's template opened <think>), z-scored when `normalize` was given."""
        if len(prompts) != len(responses):
            raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
        opens = [False] * len(prompts) if opens_think is None else list(opens_think)
        rows = [
            self.tokenize(p, r, prompt_opens_think=o)
            for p, r, o in zip(prompts, responses, opens, strict=True)
        ]
        out = self.score_tokens(rows)
        if self.normalize is not None:
            mean, std = self.normalize
            out = ((out - mean) / std).astype(np.float32)
        return out

    def score_tokens(self, rows) -> np.ndarray:
        """Scores float32 [N] of already tokenized rows (each at most max_len tokens)."""
        out = np.zeros(len(rows), np.float32)
        order = sorted(range(len(rows)), key=lambda i: len(rows[i]))
        chunks = [order[s : s + self.batch_size] for s in range(0, len(order), self.batch_size)]
        # Across processes every call is collective: the same number of calls, one length.
        multi = self.mesh is not None and jax.process_count() > 1
        if multi:
            chunks += [[]] * (distributed.global_max(len(chunks)) - len(chunks))
        for idx in chunks:
            chunk = [rows[i] for i in idx]
            length = (
                self.max_len if multi else bucket_length(max(len(r) for r in chunk), self.max_len)
            )
            tokens, mask = pad_rows(chunk, length, self.tokenizer.pad_id, num_rows=self.batch_size)
            if self.mesh is None:
                scores_R = np.asarray(self._score(self.params, tokens, mask))
            else:
                batch = sharding.put_batch({"tokens": tokens, "mask": mask}, self.mesh)
                scores_R = sharding.local_rows(self._score(self.params, **batch))
            out[idx] = scores_R[: len(idx)]
        return out
