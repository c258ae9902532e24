"""Config helpers: load a `path.py:variant` spec, validate at start-up, build the ModelConfig."""

import dataclasses
import importlib.util
import json
import pathlib
import sys

import jax
import ml_collections

from r1jax.model import config as model_config

STAGES = ("pretrain", "sft")
DATA_FORMATS = ("jsonl", "gsm8k", "math")
TEMPLATES = ("chat", "r1_zero", "none")


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
    module_spec = importlib.util.spec_from_file_location(pathlib.Path(path).stem, path)
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    cfg = module.get_config(arg) if arg else module.get_config()
    cfg.lock()
    for key, value in overrides.items():
        node = cfg
        *parents, leaf = key.split("__")
        for name in parents:
            node = node[name]
        node[leaf] = value
    return cfg


def _require(condition: bool, field: str, message: str) -> None:
    if not condition:
        raise ConfigError(f"config.{field}: {message}")


def _check_path(cfg, field: str) -> None:
    node = cfg
    for name in field.split("."):
        node = node[name]
    if node and not pathlib.Path(node).exists():
        raise ConfigError(f"config.{field}: no such file or directory: {node}")


def validate(cfg: ml_collections.ConfigDict, *, num_devices: int | None = None) -> None:
    """Fails at start-up with a message naming the field of the first problem found."""
    from r1jax import sharding  # a cycle otherwise: sharding is light, imported late for clarity

    _require(cfg.stage in STAGES, "stage", f"unknown stage {cfg.stage!r}; expected one of {STAGES}")
    _require(
        cfg.model.preset in model_config.PRESETS,
        "model.preset",
        f"unknown preset {cfg.model.preset!r}; known: {sorted(model_config.PRESETS)}",
    )
    _require(cfg.data.format in DATA_FORMATS, "data.format", f"expected one of {DATA_FORMATS}")
    _require(cfg.data.template in TEMPLATES, "data.template", f"expected one of {TEMPLATES}")
    _require(cfg.data.on_error in ("raise", "skip"), "data.on_error", "expected 'raise' or 'skip'")
    _require(bool(cfg.data.train), "data.train", "a training file is required")
    for field in ("data.train", "data.eval", "model.init_from", "tokenizer.path"):
        _check_path(cfg, field)
    _require(cfg.data.seq_len > 0, "data.seq_len", "must be positive")
    _require(cfg.train.steps > 0, "train.steps", "must be positive")
    _require(cfg.train.grad_accum >= 1, "train.grad_accum", "must be at least 1")
    _require(cfg.model.dtype in ("float32", "bfloat16"), "model.dtype", "float32 or bfloat16")
    _require(cfg.optim.lr >= 0, "optim.lr", "must not be negative")
    for name in ("log_every", "checkpoint_every"):
        _require(cfg.train[name] > 0, f"train.{name}", "must be positive")
    num_devices = jax.device_count() if num_devices is None else num_devices
    try:
        shape = sharding.mesh_shape(cfg.mesh.to_dict(), num_devices)
    except ValueError as e:
        raise ConfigError(str(e)) from None
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


def model_config_from(cfg: ml_collections.ConfigDict, *, vocab_size: int | None = None):
    """The frozen ModelConfig: the preset with the non-zero shape fields of config.model applied."""
    mcfg = model_config.get_preset(cfg.model.preset)
    changes = {}
    for name in ("d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim", "d_ff", "max_seq_len"):
        if cfg.model[name]:
            changes[name] = int(cfg.model[name])
    if cfg.model.vocab_size:
        changes["vocab_size"] = int(cfg.model.vocab_size)
    elif vocab_size:
        changes["vocab_size"] = int(vocab_size)
    changes.update(dtype=cfg.model.dtype, param_dtype=cfg.model.param_dtype, remat=cfg.model.remat)
    return dataclasses.replace(mcfg, **changes)


def save_resolved(cfg: ml_collections.ConfigDict, workdir, model_cfg=None) -> None:
    """Writes the resolved config (and the model shape) to WORKDIR/config.json."""
    out = {"config": cfg.to_dict()}
    if model_cfg is not None:
        out["model"] = dataclasses.asdict(model_cfg)
    path = pathlib.Path(workdir) / "config.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(out, indent=2, sort_keys=True, default=str) + "\n")
