"""Config helpers: load a `path.py:variant` spec, validate at start-up, build the ModelConfig."""

import contextlib
import dataclasses
import importlib.machinery
import importlib.util
import json
import math
import os
import pathlib
import re
import sys

import jax
import ml_collections
from absl import logging

from r1jax import distributed, files, text
from r1jax.model import config as model_config
from r1jax.rl import advantages

STAGES = ("pretrain", "sft", "rl", "eval", "collect", "reward_model", "pipeline")
# Read by supervised.load_records (and the RL / eval / collect record readers).
DATA_FORMATS = ("jsonl", "gsm8k", "math", "humaneval", "humaneval_completion", "world")
TEMPLATES = text.TEMPLATES  # one list: text.apply_template's


class ConfigError(ValueError):
    """A config value that cannot work; the message names the field."""


def add_config_root_to_path(config_file: str) -> None:
    """Lets `configs/<stage>.py` import `configs.base` wherever r1jax is started from."""
    root = str(pathlib.Path(config_file).resolve().parent.parent)
    if root not in sys.path:
        sys.path.insert(0, root)


def load_config(spec: str, **overrides) -> ml_collections.ConfigDict:
    """Loads 'configs/sft.py:tiny' like --config does; overrides use dotted keys with '__'."""
    path, _, arg = spec.partition(":")
    add_config_root_to_path(path)
    name = pathlib.Path(path).stem
    # As ml_collections loads --config: any file as Python source, whatever its suffix.
    loader = importlib.machinery.SourceFileLoader(name, path)
    module_spec = importlib.util.spec_from_file_location(name, path, loader=loader)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    cfg = module.get_config(arg) if arg else module.get_config()
    cfg.lock()
    _override(cfg, overrides)
    return cfg


def _override(cfg: ml_collections.ConfigDict, overrides: dict) -> None:
    """Sets dotted keys written with '__' (a locked config rejects unknown ones: KeyError)."""
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split("__")
        for name in parents:
            node = node[name]
        node[leaf] = value


def updated(cfg: ml_collections.ConfigDict, **overrides) -> ml_collections.ConfigDict:
    """An unlocked copy of `cfg` with `overrides` (load_config's '__' keys; only existing
    fields) applied, e.g. updated(cfg, model__init_from=path)."""
    out = cfg.copy_and_resolve_references()
    out.lock()
    _override(out, overrides)
    out.unlock()
    return out


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config.{field}: {message}")


# Folders that earlier stages of a pipeline will write: a path under one is not checked yet.
_PENDING: list[pathlib.Path] = []


@contextlib.contextmanager
def pending_outputs(folders):
    """Within it, validate() does not require paths under `folders` to exist (a pipeline checks
    every stage's config before the stages that write them have run)."""
    _PENDING.extend(pathlib.Path(f).absolute() for f in folders)
    try:
        yield
    finally:
        del _PENDING[-len(folders) :]


def _check_path(cfg, field: str) -> None:
    node = cfg
    for name in field.split("."):
        node = node[name]
    if not node or pathlib.Path(node).exists():
        return
    path = pathlib.Path(node).absolute()
    if any(path == f or f in path.parents for f in _PENDING):
        return
    raise ConfigError(f"config.{field}: no such file or directory: {node}")


def validate(cfg: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
    """Fails at start-up with a message naming the field of the first problem found."""
    from r1jax import sharding  # a cycle otherwise: sharding is light, imported late for clarity

    _require(cfg.stage in STAGES, "stage", f"unknown stage {cfg.stage!r}; expected one of {STAGES}")
    _require_finite(cfg)
    _require(
        isinstance(cfg.seed, int) and 0 <= cfg.seed < 2**32,
        "seed",
        f"must be an integer in [0, 2**32), got {cfg.seed!r}",
    )
    _require(
        cfg.model.preset in model_config.PRESETS,
        "model.preset",
        f"unknown preset {cfg.model.preset!r}; known: {sorted(model_config.PRESETS)}",
    )
    _require(cfg.data.format in DATA_FORMATS, "data.format", f"expected one of {DATA_FORMATS}")
    _require(cfg.data.template in TEMPLATES, "data.template", f"expected one of {TEMPLATES}")
    _require(cfg.data.on_error in ("raise", "skip"), "data.on_error", "expected 'raise' or 'skip'")
    if cfg.stage == "eval":
        _require(bool(cfg.data.eval), "data.eval", "the eval stage needs a data file")
    else:
        _require(bool(cfg.data.train), "data.train", "a training file is required")
    data_files = ("data.train", "data.eval")
    if cfg.data.format == "world":  # a world.DATASETS name (generated in memory) or a file
        from r1jax.data import world

        for field in data_files:
            name = cfg.data[field.split(".")[1]]
            _require(
                not name or name in world.DATASETS or pathlib.Path(name).is_file(),
                field,
                f"with data.format='world', one of {sorted(world.DATASETS)} or a JSONL file "
                f"of world records; got {name!r}",
            )
        data_files = ()
    for field in (*data_files, "model.init_from", "tokenizer.path"):
        _check_path(cfg, field)
    for field in data_files:
        name = cfg.data[field.split(".")[1]]
        _require(not name or not pathlib.Path(name).is_dir(), field, f"{name} is a folder")
    _require(cfg.data.seq_len > 0, "data.seq_len", "must be positive")
    _require(
        cfg.data.batch_size > 0, "data.batch_size", f"must be positive, got {cfg.data.batch_size}"
    )
    _require(cfg.data.max_records >= 0, "data.max_records", "must be >= 0 (0 = all)")
    _require(cfg.train.steps > 0, "train.steps", "must be positive")
    _require(cfg.train.get("epochs", 0) >= 0, "train.epochs", "must be >= 0 (0 = train.steps)")
    _require(
        cfg.train.get("epochs", 0) == 0 or cfg.stage in ("pretrain", "sft", "collect"),
        "train.epochs",
        f"a {cfg.stage!r} stage runs train.steps (passes over the data are for the pretrain, sft "
        "and collect stages); set train.epochs=0",
    )
    _require(cfg.train.grad_accum >= 1, "train.grad_accum", "must be at least 1")
    _validate_model(cfg)
    _require(cfg.optim.lr >= 0, "optim.lr", f"must be a non-negative number, got {cfg.optim.lr}")
    schedules = ("constant", "cosine", "linear")
    o = cfg.optim
    _require(o.schedule in schedules, "optim.schedule", f"expected one of {schedules}")
    _require(o.warmup_steps >= 0, "optim.warmup_steps", "must be >= 0")
    ratio = o.get("warmup_ratio", 0.0)
    _require(0 <= ratio < 1, "optim.warmup_ratio", f"must be in [0, 1), got {ratio}")
    _require(
        not (ratio > 0 and o.warmup_steps > 0),
        "optim.warmup_ratio",
        f"set with optim.warmup_steps={o.warmup_steps}: set one of the two (the other 0)",
    )
    _require(
        0 <= o.min_lr_ratio <= 1, "optim.min_lr_ratio", f"must be in [0, 1], got {o.min_lr_ratio}"
    )
    for name in ("b1", "b2"):
        _require(0 <= o[name] < 1, f"optim.{name}", f"must be in [0, 1), got {o[name]}")
    _require(o.eps > 0, "optim.eps", f"must be positive, got {o.eps}")
    _require(o.weight_decay >= 0, "optim.weight_decay", f"must be >= 0, got {o.weight_decay}")
    _require(o.grad_clip >= 0, "optim.grad_clip", f"must be >= 0 (0 = off), got {o.grad_clip}")
    _require(
        cfg.train.keep_checkpoints >= 1,
        "train.keep_checkpoints",
        f"must be at least 1 (orbax deletes every checkpoint past it), got "
        f"{cfg.train.keep_checkpoints}",
    )
    for name in ("log_every", "checkpoint_every"):
        _require(cfg.train[name] > 0, f"train.{name}", "must be positive")
    _require(cfg.train.eval_every >= 0, "train.eval_every", "must be >= 0 (0 = only at the end)")
    _require(cfg.data.eval_batches >= 1, "data.eval_batches", "must be at least 1")
    max_bad = cfg.train.get("max_bad_steps", 1)
    _require(max_bad >= 1, "train.max_bad_steps", f"must be at least 1, got {max_bad}")
    num = cfg.mesh.get("num_devices", 0)
    _require(num >= 0, "mesh.num_devices", f"must be >= 0 (0 = all devices), got {num}")
    if cfg.train.get("epochs", 0) == 0:  # else train.steps is known once the data is read
        warn_long_warmup(cfg)
    num_devices = jax.device_count() if num_devices is None else num_devices
    if cfg.stage == "rl":
        _validate_rl(cfg, num_devices)
        if cfg.data.eval:  # the evaluations before, after (and during) the run sample with it
            validate_eval_sampling(cfg)
    try:
        shape = sharding.mesh_shape(cfg.mesh.to_dict(), num_devices)
        sharding.rules_from_config(cfg.mesh.rules)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    if cfg.stage == "eval":
        _validate_eval(cfg)
    if cfg.stage == "collect":
        _validate_collect(cfg)
    if cfg.stage == "reward_model":
        _validate_reward_model(cfg)
    if cfg.stage in ("rl", "eval") or (cfg.stage == "collect" and not cfg.collect.sft):
        return  # no SFT batch (a collection alone refused 32 devices over one it never used)
    splits = shape[0] * shape[1]
    micro = cfg.data.batch_size // cfg.train.grad_accum
    _require(
        cfg.data.batch_size % cfg.train.grad_accum == 0,
        "data.batch_size",
        f"{cfg.data.batch_size} is not divisible by train.grad_accum={cfg.train.grad_accum}",
    )
    _require(
        micro % splits == 0,
        "data.batch_size",
        f"{cfg.data.batch_size} rows ({micro} per micro-batch) are not divisible by the "
        f"{splits} data-parallel devices (mesh data x fsdp)",
    )
    _require(
        cfg.data.batch_size % jax.process_count() == 0,
        "data.batch_size",
        f"not divisible by the {jax.process_count()} processes",
    )


def warmup_steps(optim, total_steps: int) -> int:
    """The warm-up's length in steps: optim.warmup_ratio of total_steps (rounded) when it is
    set, else optim.warmup_steps."""
    ratio = float(optim.get("warmup_ratio", 0.0))
    return round(ratio * total_steps) if ratio > 0 else int(optim.warmup_steps)


def warn_long_warmup(cfg: ml_collections.ConfigDict) -> None:
    """A warning when the warm-up (optim.warmup_steps, or optim.warmup_ratio of train.steps)
    covers all of train.steps (the learning rate never reaches optim.lr and never decays);
    supervised runs call it again once train.epochs has set train.steps from the data."""
    warmup = warmup_steps(cfg.optim, cfg.train.steps)
    if 0 < warmup and warmup >= cfg.train.steps:
        ratio = cfg.optim.get("warmup_ratio", 0.0)
        field = f"warmup_ratio={ratio} ({warmup} steps)" if ratio > 0 else f"warmup_steps={warmup}"
        logging.warning(
            "config.optim.%s >= train.steps=%d: the whole run is warm-up (the learning rate "
            "never reaches optim.lr)",
            field,
            cfg.train.steps,
        )


MODEL_SHAPE_FIELDS = (
    "vocab_size",
    "d_model",
    "n_layers",
    "n_heads",
    "n_kv_heads",
    "head_dim",
    "d_ff",
)


def _validate_model(cfg) -> None:
    """config.model and config.tokenizer: names and sizes (0 = the preset's / the tokenizer's)."""
    m = cfg.model
    _require(m.dtype in ("float32", "bfloat16"), "model.dtype", "float32 or bfloat16")
    _require(m.param_dtype in ("float32", "bfloat16"), "model.param_dtype", "float32 or bfloat16")
    modes = model_config.REMAT_MODES
    _require(m.remat in modes, "model.remat", f"expected one of {modes}")
    families = ("",) + model_config.FAMILIES
    _require(m.get("family", "") in families, "model.family", f"expected one of {families}")
    for name in (*MODEL_SHAPE_FIELDS, "max_seq_len"):
        _require(m[name] >= 0, f"model.{name}", f"must be >= 0 (0 = the preset's), got {m[name]}")
    for name, zero in (("unroll_layers", "auto"), ("attention_chunk", "all queries at once")):
        _require(m[name] >= 0, f"model.{name}", f"must be >= 0 (0 = {zero}), got {m[name]}")
    vocab = cfg.tokenizer.train_vocab_size
    _require(vocab >= 0, "tokenizer.train_vocab_size", f"must be >= 0 (0 = none), got {vocab}")


def model_config_from(cfg: ml_collections.ConfigDict, *, vocab_size: int | None = None):
    """The frozen ModelConfig: the preset with the non-zero shape fields of config.model (and
    a non-empty model.family) applied."""
    mcfg = model_config.get_preset(cfg.model.preset)
    changes = {}
    for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len"):
        if cfg.model[name]:
            changes[name] = int(cfg.model[name])
    if cfg.model.vocab_size:
        changes["vocab_size"] = int(cfg.model.vocab_size)
    elif vocab_size:
        changes["vocab_size"] = int(vocab_size)
    if family := cfg.model.get("family", ""):  # the family's own attention details with it
        changes.update(family=family, qkv_bias=family == "qwen2", qk_norm=family == "qwen3")
    changes.update(dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat)
    changes["unroll_layers"] = int(cfg.model.get("unroll_layers", 0))
    changes["attention_chunk"] = int(cfg.model.get("attention_chunk", 0))
    try:
        return dataclasses.replace(mcfg, **changes)
    except ValueError as e:  # ModelConfig's own checks name ModelConfig.<field>
        raise ConfigError(f"config.model: {e}") from None


def check_workdir(workdir) -> None:
    """Fails when `workdir` cannot be a run folder: a URL, a file, under a file, or not
    writable."""
    if re.match(r"^[A-Za-z][A-Za-z0-9+.-]*://", str(workdir)):
        raise ConfigError(
            f"--workdir {workdir}: r1jax writes its runs with local file operations (gs://... "
            "became a local folder 'gs:'); mount the bucket (e.g. gcsfuse) and give the mount's "
            "path"
        )
    path = pathlib.Path(workdir)
    if path.exists() and not path.is_dir():
        raise ConfigError(f"--workdir {workdir}: exists and is not a folder")
    existing = next(p for p in (path, *path.absolute().parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"--workdir {workdir}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"--workdir {workdir}: {existing} is not writable")


# Model fields a resumed run may change: numerics and context, not the shape of its weights.
_RESUMABLE_MODEL_FIELDS = (
    "dtype",
    "param_dtype",
    "remat",
    "unroll_layers",
    "attention_chunk",
    "max_seq_len",
)


def json_form(value):
    """`value` as it reads back from JSON (tuples as lists, other objects as strings)."""
    return json.loads(json.dumps(value, default=str))


def _saved_model_form(saved: dict) -> dict:
    """A saved model shape in today's JSON form: a rope_scaling written before RopeScaling
    gained fields (rope_type, YaRN's) reads with their defaults, as `load_resolved` reads it."""
    form = dict(saved)
    if isinstance(form.get("rope_scaling"), dict):
        try:
            form["rope_scaling"] = dataclasses.asdict(
                model_config.RopeScaling(**form["rope_scaling"])
            )
        except (TypeError, ValueError):
            pass  # compared as written: it differs, and the refusal names it
    return json_form(form)


# A run's cache of its data files' row checks (sources.JsonlRecords' index): not a run output.
DATA_INDEX_DIR = "data_index"


def check_resumable(cfg: ml_collections.ConfigDict, workdir, model_cfg=None) -> None:
    """Refuses a workdir whose checkpoints another run wrote (another stage or model shape):
    resuming would fail inside orbax's restore, or continue someone else's run."""
    workdir = pathlib.Path(workdir)
    ckpt = workdir / "checkpoints"
    path = workdir / "config.json"
    has_checkpoints = ckpt.is_dir() and any(ckpt.iterdir())
    # Another stage's outputs without checkpoints (a pipeline's stage folders and table, a
    # collected dataset) are a run too: its config.json must not be overwritten.
    others = path.exists() and any(
        p.name not in ("config.json", DATA_INDEX_DIR, files.WORKDIR_LOCK) for p in workdir.iterdir()
    )
    if not (path.exists() and (has_checkpoints or others)):
        return
    advice = "use another --workdir"
    if has_checkpoints and cfg.stage != "pipeline":  # a folder without them holds no model
        advice += f", or start from that run: --config.model.init_from={workdir}"
    try:
        saved = json.loads(path.read_text())
        old_stage = saved["config"]["stage"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise ConfigError(
            f"--workdir {workdir}: has {'checkpoints' if has_checkpoints else 'outputs'} but "
            f"{path} is unreadable ({e!r:.80}), so they cannot be matched to this config; "
            f"{advice}"
        ) from None
    if old_stage != cfg.stage:
        held = "checkpoints" if has_checkpoints else "the outputs"
        raise ConfigError(
            f"--workdir {workdir}: holds {held} of a {old_stage!r} run, not of this "
            f"{cfg.stage!r} config; {advice}"
        )
    if not has_checkpoints or model_cfg is None or not isinstance(saved.get("model"), dict):
        return
    new = json_form(dataclasses.asdict(model_cfg))
    old = _saved_model_form(saved["model"])
    diff = [
        f"{name} {old.get(name)!r} -> {value!r}"
        for name, value in new.items()
        if name not in _RESUMABLE_MODEL_FIELDS and old.get(name) != value
    ]
    if diff:
        raise ConfigError(
            f"--workdir {workdir}: its checkpoints hold a model of another shape than this "
            f"config's ({', '.join(diff)}); {advice}"
        )
    old_cfg, new_cfg = flatten(saved.get("config") or {}), flatten(json_form(cfg.to_dict()))
    changed = lambda names: [  # noqa: E731
        f"{n} {old_cfg[n]!r} -> {new_cfg.get(n)!r}"
        for n in names
        if n in old_cfg and old_cfg[n] != new_cfg.get(n)
    ]
    if cfg.stage == "rl":  # the checkpoint's tree: PPO's value head or separate critic
        ppo = old_cfg.get("rl.algorithm") == new_cfg.get("rl.algorithm") == "ppo"
        diff = changed(("rl.algorithm", "rl.critic") if ppo else ("rl.algorithm",))
        if diff:
            raise ConfigError(
                f"--workdir {workdir}: its checkpoints are of another RL run ({', '.join(diff)}); "
                f"{advice}"
            )
    diff = changed(_DATA_FIELDS)
    if diff:
        logging.warning(
            "--workdir %s: resuming with other data settings than its checkpoints were trained "
            "with (%s): the data position carries over to another order or dataset",
            workdir,
            ", ".join(diff),
        )


# What a resumed run's data order and content depend on (changing one is warned about).
_DATA_FIELDS = (
    "seed",
    "data.train",
    "data.format",
    "data.max_records",
    "data.template",
    "data.pack",
    "rl.template",
    "rl.general_prompts",
)


def flatten(tree: dict, prefix: str = "") -> dict:
    """{'a': {'b': 1}} -> {'a.b': 1}: nested dicts as dotted names."""
    out = {}
    for k, v in tree.items():
        if isinstance(v, dict):
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def save_resolved(cfg: ml_collections.ConfigDict, workdir, model_cfg=None) -> None:
    """Writes the resolved config (and the model shape) to WORKDIR/config.json, after
    check_resumable: a workdir holding another run's checkpoints is refused, not overwritten."""
    # Every process checks; process 0 writes: either failing stops them all.
    with distributed.shared_errors():
        _save_resolved(cfg, workdir, model_cfg)


def _save_resolved(cfg, workdir, model_cfg) -> None:
    check_resumable(cfg, workdir, model_cfg)
    out = {"config": cfg.to_dict()}
    if model_cfg is not None:
        out["model"] = dataclasses.asdict(model_cfg)
    path = pathlib.Path(workdir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    if jax.process_index() != 0:  # one writer of the shared run directory
        return
    ckpt = path.parent / "checkpoints"
    steps = [int(d.name) for d in ckpt.iterdir() if d.name.isdigit()] if ckpt.is_dir() else []
    if steps and path.is_file():
        try:
            before = json.loads(path.read_text())
        except (OSError, ValueError):
            before = None
        if before is not None and json_form(before) != json_form(out):
            # A resume with changed settings: what trained the steps so far stays on record.
            keep = path.parent / "config_history" / f"config_to_step_{max(steps)}.json"
            files.write_json(keep, before, default=str)
            logging.info("config.json changed on resume; the previous one is kept as %s", keep)
    files.write_json(path, out, default=str)


def is_run_dir(folder) -> bool:
    """True for an r1jax run folder: its config.json (save_resolved) has 'config' and 'model'."""
    try:
        saved = json.loads((pathlib.Path(folder) / "config.json").read_text())
    except (OSError, json.JSONDecodeError):
        return False
    return isinstance(saved, dict) and "model" in saved and "config" in saved


def checkpoint_step(model_path) -> tuple[pathlib.Path, int | None]:
    """(folder, step) of a model path: one step of a run's checkpoints (RUN/checkpoints/STEP) is
    RUN/checkpoints at that step; any other path is itself at its newest step (None)."""
    path = pathlib.Path(model_path)
    if path.name.isdigit() and path.parent.name == "checkpoints" and is_run_dir(path.parents[1]):
        return path.parent, int(path.name)
    return path, None


def load_resolved(
    run_dir, *, language_model: bool = False
) -> tuple[model_config.ModelConfig, dict]:
    """(ModelConfig, resolved config dict) that a run wrote with save_resolved.

    language_model=True (export, init_from, evaluation) refuses a reward-model run: its params
    are a trunk and a scalar head, which no language-model layout restores."""
    path = pathlib.Path(run_dir) / "config.json"
    if not path.exists():
        raise FileNotFoundError(f"{path}: not an r1jax run folder (no config.json)")
    saved = json.loads(path.read_text())
    if "model" not in saved or "config" not in saved:
        raise ValueError(f"{path}: no 'model'/'config' sections (was it written by r1jax?)")
    if language_model and saved["config"].get("stage") == "reward_model":
        raise ConfigError(
            f"{run_dir} is a reward model's run (a trunk and a scalar head), not a language "
            "model to export, start from or sample: RL reads it as rl.reward_model.path"
        )
    shape = dict(saved["model"])
    if shape.get("rope_scaling"):
        shape["rope_scaling"] = model_config.RopeScaling(**shape["rope_scaling"])
    return model_config.ModelConfig(**shape), saved["config"]


def trained_template(run_cfg: dict) -> str | None:
    """The prompt template a run (its resolved config dict) trained with; None for stages
    without one (pretraining, reward models)."""
    if run_cfg.get("stage") == "rl":
        return run_cfg["rl"]["template"]
    if run_cfg.get("stage") == "sft":
        return run_cfg["data"]["template"]
    return None


def _require_finite(cfg, prefix: str = "") -> None:
    """Every float in the config is a number: inf passed `>= 0` checks (lr=inf trained NaN
    weights and saved them; optim.eps=inf made every update 0) and NaN failed them with a
    message about the range."""
    for name, value in cfg.items():
        if isinstance(value, ml_collections.ConfigDict):
            _require_finite(value, f"{prefix}{name}.")
        elif isinstance(value, float):
            _require(
                math.isfinite(value), f"{prefix}{name}", f"must be a finite number, got {value}"
            )


def _validate_rl(cfg, num_devices: int) -> None:
    """RL-specific checks: algorithm names, sampling, coefficients, rewards, how the rollout
    divides (each part its own function, in this order)."""
    _validate_rl_names(cfg.rl)
    _validate_rl_sampling(cfg.rl)
    _validate_rl_coefficients(cfg.rl)
    _validate_rl_kl_control(cfg.rl)
    _validate_rl_rewards(cfg)
    _validate_rl_general(cfg)
    _validate_rl_batch(cfg, num_devices)


def _validate_rl_names(rl) -> None:
    """Step counts, and the algorithm's and its options' names."""
    # Step counts read modulo: a negative one acted every step (ref_reset_every=-1 reset the
    # reference every step, so the KL penalty was gone).
    for name in ("ref_reset_every", "eval_every", "log_samples_every", "general_from_step"):
        _require(rl.get(name, 0) >= 0, f"rl.{name}", f"must be >= 0, got {rl.get(name, 0)}")
    _require(rl.eval_prompts >= 0, "rl.eval_prompts", f"must be >= 0, got {rl.eval_prompts}")
    _require(rl.algorithm in ("grpo", "ppo"), "rl.algorithm", "expected 'grpo' or 'ppo'")
    _require(
        rl.advantage in advantages.ESTIMATORS,
        "rl.advantage",
        f"expected one of {advantages.ESTIMATORS}",
    )
    _require(
        rl.std_normalize in advantages.STD_NORMALIZE_MODES,
        "rl.std_normalize",
        f"expected one of {advantages.STD_NORMALIZE_MODES}",
    )
    aggregations = ("seq-mean-token-mean", "token-mean", "seq-mean-token-sum-norm")
    _require(rl.aggregation in aggregations, "rl.aggregation", f"expected one of {aggregations}")
    _require(rl.ratio_level in ("token", "sequence"), "rl.ratio_level", "token | sequence")
    _require(rl.kl_estimator in ("k1", "k2", "k3"), "rl.kl_estimator", "k1 | k2 | k3")
    _require(rl.critic in ("shared", "separate"), "rl.critic", "shared | separate")
    _require(rl.ppo_form in ("clip", "kl_penalty"), "rl.ppo_form", "clip | kl_penalty")
    _require(
        rl.critic_lr == 0 or rl.algorithm == "ppo",
        "rl.critic_lr",
        f"is the rate of PPO's critic; rl.algorithm={rl.algorithm!r} has none (set it to 0)",
    )


def _validate_rl_sampling(rl) -> None:
    """The rollout's sampling and reward-worker settings."""
    _require(rl.template in TEMPLATES, "rl.template", f"expected one of {TEMPLATES}")
    _require(rl.temperature > 0, "rl.temperature", "RL samples need a positive temperature")
    _require(0 < rl.top_p <= 1, "rl.top_p", "must be in (0, 1]")
    _require(rl.top_k >= 0, "rl.top_k", "must be >= 0 (0 = off)")
    if rl.top_p < 1 or rl.top_k > 0:
        logging.warning(
            "rl.top_p=%s, rl.top_k=%s: RL then samples from the truncated distribution while the "
            "ratio, the KL and the TIS weight use the untruncated policy's log-probs (as TRL and "
            "verl): the update is off-policy by the truncation, which nothing corrects",
            rl.top_p,
            rl.top_k,
        )
    _require(rl.max_new_tokens > 0, "rl.max_new_tokens", "must be positive")
    per_call = rl.get("sample_prompts_per_call", 0)
    _require(per_call >= 0, "rl.sample_prompts_per_call", f"must be >= 0 (0 = all), got {per_call}")
    _require(rl.max_prompt_len > 0, "rl.max_prompt_len", "must be positive")
    for name in ("prompts_per_step", "epochs", "num_minibatches"):
        _require(rl[name] >= 1, f"rl.{name}", f"must be at least 1, got {rl[name]}")
    _require(rl.reward_workers >= 0, "rl.reward_workers", "must be >= 0 (0 = in-process)")
    _require(rl.reward_timeout_s > 0, "rl.reward_timeout_s", "must be positive")


def _validate_rl_coefficients(rl) -> None:
    """The loss's coefficients and their ranges."""
    for name in (
        "kl_coef",
        "clip_low",
        "clip_high",
        "entropy_coef",
        "vf_coef",
        "value_clip",
        "critic_lr",
    ):
        _require(rl[name] >= 0, f"rl.{name}", f"must be >= 0, got {rl[name]}")
    _require(
        rl.clip_low < 1,
        "rl.clip_low",
        f"must be below 1 (ratio 1 - clip_low > 0), got {rl.clip_low}",
    )
    _require(
        rl.dual_clip == 0 or rl.dual_clip > 1, "rl.dual_clip", f"0 (off) or > 1, got {rl.dual_clip}"
    )
    _require(rl.tis_cap == 0 or rl.tis_cap >= 1, "rl.tis_cap", f"0 (off) or >= 1, got {rl.tis_cap}")
    for name in ("gamma", "lam"):
        _require(0 <= rl[name] <= 1, f"rl.{name}", f"must be in [0, 1], got {rl[name]}")
    _require(
        0 <= rl.overlong_buffer <= rl.max_new_tokens,
        "rl.overlong_buffer",
        f"must be in [0, rl.max_new_tokens={rl.max_new_tokens}], got {rl.overlong_buffer}",
    )


def _validate_rl_kl_control(rl) -> None:
    """PPO's adaptive KL coefficients: Ziegler's controller (rl.kl_horizon) and the penalty
    form's (rl.ppo_form='kl_penalty')."""
    _require(rl.kl_horizon >= 0, "rl.kl_horizon", f"must be >= 0 (0 = off), got {rl.kl_horizon}")
    if rl.kl_horizon > 0:
        _require(
            rl.algorithm == "ppo" and rl.ppo_form == "clip",
            "rl.kl_horizon",
            "adapts PPO's KL in the reward (rl.algorithm='ppo', rl.ppo_form='clip'), got "
            f"algorithm {rl.algorithm!r}, ppo_form {rl.ppo_form!r}",
        )
        for name in ("kl_coef", "kl_target"):
            _require(
                rl[name] > 0,
                f"rl.{name}",
                f"rl.kl_horizon adapts a positive rl.kl_coef toward a positive rl.kl_target, "
                f"got {rl[name]}",
            )
        samples = rl.prompts_per_step * rl.num_samples
        _require(
            rl.kl_horizon > 0.2 * samples,
            "rl.kl_horizon",
            f"a step moves the coefficient by up to 0.2 x {samples} samples / horizon: a horizon "
            f"of {rl.kl_horizon} could turn it negative (use more than {0.2 * samples:g})",
        )
    if rl.algorithm == "ppo" and rl.ppo_form == "kl_penalty":
        for name in ("kl_coef", "kl_target"):
            _require(
                rl[name] > 0,
                f"rl.{name}",
                "ppo_form='kl_penalty' adapts a positive rl.kl_coef toward a positive "
                f"rl.kl_target, got {rl[name]}",
            )
        # The clip form's extras that the penalty form's loss (PPO §4) has no place for.
        for name, off in (("entropy_coef", 0.0), ("tis_cap", 0.0), ("ratio_level", "token")):
            _require(
                rl[name] == off,
                f"rl.{name}",
                f"ppo_form='kl_penalty' does not apply it: set it to {off!r} or use "
                f"ppo_form='clip' (got {rl[name]!r})",
            )


def _validate_rl_rewards(cfg) -> None:
    """Reward functions and reward models."""
    from r1jax.rewards import registry

    rl = cfg.rl
    _require(
        any(w != 0 for w in rl.rewards.values()) or bool(rl.reward_model.path),
        "rl.rewards",
        "every reward weight is 0 and no reward model is set: nothing to learn from",
    )
    _require(
        rl.num_samples >= 2 or rl.algorithm == "ppo",
        "rl.num_samples",
        "group-relative advantages need at least 2 samples per prompt",
    )
    for name in rl.rewards.keys():
        try:
            registry.get(name)
        except (KeyError, ValueError) as e:
            raise ConfigError(f"config.rl.rewards.{name}: {e}") from None
    for name in ("reward_model", "harmlessness_model"):
        _require(
            rl[name].scope in ("response", "summary"), f"rl.{name}.scope", "response | summary"
        )
        _check_path(cfg, f"rl.{name}.path")
    if rl.harmlessness_model.path:
        _require(
            bool(rl.reward_model.path),
            "rl.harmlessness_model.path",
            "a second reward model needs the first, rl.reward_model.path (or set this one there)",
        )
        for name in ("reward_model", "harmlessness_model"):
            _require(
                rl[name].normalize,
                f"rl.{name}.normalize",
                "two reward models' scores add up only on one scale: set normalize=True on both "
                "rl.reward_model and rl.harmlessness_model",
            )


def _validate_rl_general(cfg) -> None:
    """All-domain RL: general prompts, their share, and the rewards they get."""
    rl = cfg.rl
    _require(0 <= rl.general_fraction < 1, "rl.general_fraction", "must be in [0, 1)")
    if rl.general_fraction > 0:
        _require(
            bool(rl.general_prompts), "rl.general_prompts", "general_fraction > 0 needs prompts"
        )
        _require(
            round(rl.general_fraction * rl.prompts_per_step) >= 1,
            "rl.general_fraction",
            f"{rl.general_fraction} of {rl.prompts_per_step} prompts rounds to none",
        )
    if rl.general_prompts:
        _require(
            bool(rl.reward_model.path),
            "rl.reward_model.path",
            "general prompts are scored by a reward model; give its run folder",
        )
        if cfg.data.format != "world" or pathlib.Path(rl.general_prompts).suffix:
            _check_path(cfg, "rl.general_prompts")
    rules = rl.general_rule_rewards
    _require(
        isinstance(rules, (tuple, list)) and all(isinstance(n, str) for n in rules),
        "rl.general_rule_rewards",
        f"must be a tuple of reward names, got {rules!r}",
    )
    for name in rules:
        _require(
            name in rl.rewards.keys(),
            "rl.general_rule_rewards",
            f"{name!r} is not one of rl.rewards ({sorted(rl.rewards.keys())}): general prompts get "
            "the rule rewards at their weights there",
        )
    _require(
        not rules or bool(rl.general_prompts),
        "rl.general_rule_rewards",
        "rule rewards for general prompts need general prompts (rl.general_prompts)",
    )
    _require(rl.missing_eos_penalty >= 0, "rl.missing_eos_penalty", "must be >= 0")
    _require(
        not rl.missing_eos_penalty or bool(rl.general_prompts),
        "rl.missing_eos_penalty",
        "it applies to general prompts' responses: set rl.general_prompts (a rule reward "
        "judges a cut reasoning response by its missing tags; or use rl.overlong_buffer)",
    )


def _validate_rl_batch(cfg, num_devices: int) -> None:
    """A step's sequences split into minibatches, micro-batches, devices and processes."""
    from r1jax import sharding

    rl = cfg.rl
    try:
        shape = sharding.mesh_shape(cfg.mesh.to_dict(), num_devices)
    except ValueError as e:
        raise ConfigError(str(e)) from None
    n = rl.prompts_per_step * rl.num_samples
    per_update = rl.num_minibatches * cfg.train.grad_accum
    _require(
        n % per_update == 0,
        "rl.prompts_per_step",
        f"{rl.prompts_per_step} prompts x {rl.num_samples} samples = {n} sequences do not split "
        f"into rl.num_minibatches={rl.num_minibatches} x train.grad_accum={cfg.train.grad_accum}",
    )
    _require(
        (n // per_update) % (shape[0] * shape[1]) == 0,
        "rl.prompts_per_step",
        f"micro-batches of {n // per_update} sequences are not divisible by the "
        f"{shape[0] * shape[1]} data-parallel devices",
    )
    _require(
        rl.prompts_per_step % jax.process_count() == 0,
        "rl.prompts_per_step",
        f"not divisible by the {jax.process_count()} processes",
    )


def _validate_eval(cfg) -> None:
    """The eval stage: a model to load, sampling settings that make sense."""
    _require(bool(cfg.model.init_from), "model.init_from", "the eval stage needs a model to load")
    validate_eval_sampling(cfg)


def validate_eval_sampling(cfg) -> None:
    """config.eval's sampling settings (the eval stage's, and a pipeline's table's)."""
    e = cfg.eval
    _require(e.num_samples >= 1, "eval.num_samples", "must be at least 1")
    _require(e.temperature > 0, "eval.temperature", "must be positive (eval.greedy adds greedy)")
    _require(0 < e.top_p <= 1, "eval.top_p", "must be in (0, 1]")
    _require(e.max_new_tokens > 0, "eval.max_new_tokens", "must be positive")
    _require(e.get("top_k", 0) >= 0, "eval.top_k", "must be >= 0 (0 = off)")
    _require(e.prompts_per_batch > 0, "eval.prompts_per_batch", "must be positive")
    _require(e.max_problems >= 0, "eval.max_problems", "must be >= 0 (0 = all)")
    _require(e.grade_workers >= 0, "eval.grade_workers", "must be >= 0 (0 = in this process)")
    _require(e.grade_timeout_s > 0, "eval.grade_timeout_s", "must be positive")
    # ks above num_samples are dropped with a warning (so eval.num_samples alone can shrink a run)
    ks = tuple(e.ks)
    _require(
        bool(ks) and all(isinstance(k, int) and k >= 1 for k in ks),
        "eval.ks",
        f"must be one or more integers >= 1, got {ks}",
    )
    _require(e.template in TEMPLATES + ("",), "eval.template", f"'' or one of {TEMPLATES}")
    stops = e.get("stop_strings", ())
    _require(
        isinstance(stops, (tuple, list)) and all(isinstance(x, str) and x for x in stops),
        "eval.stop_strings",
        f"must be a tuple of non-empty strings, got {stops!r}",
    )


def _validate_reward_model(cfg) -> None:
    """The reward-model stage's own settings (checked with the others: a pipeline validates every
    stage at start-up, and a missing HH-RLHF file stopped it at stage 2, after R1-Zero)."""
    rm = cfg.rm
    for name in ("max_len", "hh_max_pairs"):
        _require(rm[name] >= 0, f"rm.{name}", f"must be >= 0, got {rm[name]}")
    _check_path(cfg, "rm.hh_eval")  # (a path a pipeline's earlier stage writes may not exist yet)
    _require(
        not (rm.hh_eval and pathlib.Path(rm.hh_eval).is_dir()),
        "rm.hh_eval",
        f"{rm.hh_eval} is not a file (a folder)",
    )


def _validate_collect(cfg) -> None:
    """The collect stage: a model to sample, checks and mixing settings that make sense."""
    c = cfg.collect
    _require(bool(c.model), "collect.model", "the collect stage needs a model to sample from")
    _check_path(cfg, "collect.model")
    _require(c.num_samples >= 1, "collect.num_samples", "must be at least 1")
    for name in ("num_prompts", "num_general_prompts", "min_tokens", "max_paragraph_chars"):
        _require(c.get(name, 0) >= 0, f"collect.{name}", f"must be >= 0, got {c.get(name, 0)}")
    _require(
        c.max_tokens == 0 or c.max_tokens >= c.min_tokens,
        "collect.max_tokens",
        f"0 (no bound) or at least collect.min_tokens={c.min_tokens}, got {c.max_tokens}: no "
        "sample could pass",
    )
    _require(c.temperature > 0, "collect.temperature", "must be positive")
    _require(0 < c.top_p <= 1, "collect.top_p", "must be in (0, 1]")
    _require(c.max_new_tokens > 0, "collect.max_new_tokens", "must be positive")
    _require(c.prompts_per_batch > 0, "collect.prompts_per_batch", "must be positive")
    _require(c.max_per_prompt >= 1, "collect.max_per_prompt", "must be at least 1")
    _require(c.max_ngram_repeats >= 0, "collect.max_ngram_repeats", "must be >= 0 (0 = off)")
    _require(c.ngram_size >= 1, "collect.ngram_size", "must be at least 1")
    _require(0 <= c.min_language_consistency <= 1, "collect.min_language_consistency", "in [0, 1]")
    _require(c.general_ratio >= 0, "collect.general_ratio", "must be >= 0")
    _require(
        not c.general_ratio or bool(c.general_data),
        "collect.general_data",
        "collect.general_ratio > 0 needs general SFT rows to mix in",
    )
    _require(c.template in TEMPLATES + ("",), "collect.template", f"'' or one of {TEMPLATES}")
    for field in ("collect.reward_model", "collect.tokenizer"):
        _check_path(cfg, field)
    if c.general_data and cfg.data.format != "world":
        _check_path(cfg, "collect.general_data")
    if c.general_prompts and cfg.data.format != "world":
        _check_path(cfg, "collect.general_prompts")
    _require(
        not c.general_prompts or bool(c.reward_model),
        "collect.reward_model",
        "collect.general_prompts' samples are judged by a reward model; set it",
    )
    if c.sft:
        _require(bool(cfg.model.init_from), "model.init_from", "collect.sft trains this model")
