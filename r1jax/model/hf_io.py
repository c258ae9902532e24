"""Hugging Face checkpoints (config.json + safetensors) <-> (ModelConfig, params).

L layers, D model, H heads, K kv heads, Dh head dim, F mlp, V vocab.

Torch `nn.Linear` stores [out, in]; our kernels are [in, ...out] with heads split out, and
layer params are stacked on a leading L axis (the `nn.scan` layout).
"""

import dataclasses
import json
import math
import os
import pathlib

import jax
import ml_dtypes
import numpy as np
import safetensors
import safetensors.numpy

from r1jax import files
from r1jax.model import config as config_lib

ModelConfig = config_lib.ModelConfig


class HFError(ValueError):
    """A Hugging Face folder that cannot be loaded as it is: the message names the file and
    what is wrong with it (the `r1jax` command prints it as one line)."""


# Mistral without a sliding window is Llama's computation (same tensors, no biases).
_ARCHITECTURES = {
    "Qwen2ForCausalLM": "qwen2",
    "LlamaForCausalLM": "llama",
    "MistralForCausalLM": "llama",
    "Qwen3ForCausalLM": "qwen3",
}
# What transformers' Auto classes load for a config.json without "architectures".
_MODEL_TYPES = {
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_EXPORT_ARCHITECTURES = {
    "qwen2": "Qwen2ForCausalLM",
    "llama": "LlamaForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
_INDEX_FILE = "model.safetensors.index.json"
_SINGLE_FILE = "model.safetensors"
_DTYPE_NAMES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}


# transformers' defaults, where a config.json leaves max_position_embeddings out.
_DEFAULT_MAX_POSITIONS = {
    "Qwen2ForCausalLM": 32768,
    "LlamaForCausalLM": 2048,
    "MistralForCausalLM": 4096 * 32,
    "Qwen3ForCausalLM": 32768,
}
# transformers' defaults where a config.json leaves num_key_value_heads out (a null, and
# Llama's default, give one kv head per head).
_DEFAULT_KV_HEADS = {"Qwen2ForCausalLM": 32, "MistralForCausalLM": 8, "Qwen3ForCausalLM": 32}


def _number(hf: dict, key: str, path, kind, default=None, *, nullable=False):
    """hf[key] as int or float, `default` when absent (or null where transformers allows it)."""
    value = hf.get(key)
    if value is None and (key not in hf or nullable):
        if default is None:
            raise HFError(f"{path}: config.json is missing required key {key!r}")
        return kind(default)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise HFError(f"{path}: config key {key!r} must be a number, got {value!r}")
    if kind is int and value != int(value):
        raise HFError(f"{path}: config key {key!r} must be an integer, got {value!r}")
    return kind(value)


def _read_json(file: pathlib.Path, what: str) -> dict:
    """The JSON object in `file`; a corrupt or non-object file is a ValueError naming it."""
    try:
        obj = json.loads(file.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise HFError(f"{file}: {what} is not valid JSON ({e})") from e
    if not isinstance(obj, dict):
        raise HFError(f"{file}: {what} must hold a JSON object, got {type(obj).__name__}")
    return obj


def _safe_open(file: pathlib.Path):
    try:
        return safetensors.safe_open(file, framework="numpy")
    except safetensors.SafetensorError as e:
        raise HFError(f"{file}: not a readable safetensors file ({e})") from e


def _rope_from_hf(hf: dict, path) -> tuple[float, config_lib.RopeScaling | None]:
    """Reads rope settings from `rope_parameters` (transformers 5) or the legacy keys.

    A config holding both, saying different things (a transformers 5 folder with a YaRN
    `rope_scaling` added by hand, as model cards tell), is refused: transformers reads
    `rope_scaling` there, and dropping either would silently give other logits."""
    _check_one_rope(hf, path)
    key = "rope_parameters" if hf.get("rope_parameters") else "rope_scaling"
    rope = hf.get(key) or {}
    if not isinstance(rope, dict):
        raise HFError(f"{path}: {key} must be a JSON object, got {rope!r}")
    if rope and all(isinstance(v, dict) for v in rope.values()):
        raise HFError(f"{path}: per-layer-type rope_parameters are not supported: {rope}")
    theta = _number(rope, "rope_theta", path, float, _number(hf, "rope_theta", path, float, 1e4))
    rope_type = rope.get("rope_type", rope.get("type", "default")) or "default"
    if rope.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
        raise HFError(f"{path}: partial_rotary_factor != 1 is not supported")
    if rope_type == "default":
        return theta, None
    if rope_type not in config_lib.ROPE_TYPES:
        raise HFError(
            f"{path}: unsupported rope type {rope_type!r} in {key} "
            f"(supported: default, {', '.join(config_lib.ROPE_TYPES)})"
        )
    try:
        if rope_type == "linear":
            factor = _number(rope, "factor", path, float)
            return theta, config_lib.RopeScaling(factor=factor, rope_type="linear")
        original = _original_context(hf, rope, path)
        if rope_type == "yarn":
            return theta, _yarn_from_hf(hf, rope, original, path)
        return theta, config_lib.RopeScaling(
            factor=_number(rope, "factor", path, float),
            low_freq_factor=_number(rope, "low_freq_factor", path, float),
            high_freq_factor=_number(rope, "high_freq_factor", path, float),
            original_max_position=original,
        )
    except ValueError as e:
        if str(e).startswith(str(path)):
            raise
        raise HFError(f"{path}: {key}: {e}") from e


def _rope_settings(rope) -> dict:
    """A rope dict without its theta, type spelt one way: what two spellings must agree on."""
    rope = dict(rope)
    rope.pop("rope_theta", None)
    rope["rope_type"] = rope.pop("type", None) or rope.get("rope_type") or "default"
    return rope


def _check_one_rope(hf: dict, path) -> None:
    new, old = hf.get("rope_parameters"), hf.get("rope_scaling")
    if not (isinstance(new, dict) and isinstance(old, dict) and new and old):
        return
    if _rope_settings(new) != _rope_settings(old):
        raise HFError(
            f"{path}: rope_parameters {new} and rope_scaling {old} disagree (transformers "
            "reads rope_scaling when both are set); keep one of them"
        )
    # transformers takes the theta of rope_scaling, else the top-level rope_theta, else 1e4:
    # never rope_parameters' own (a transformers 5 folder keeps it only there).
    top = _number(hf, "rope_theta", path, float, 1e4)
    theirs = _number(old, "rope_theta", path, float, top)
    ours = _number(new, "rope_theta", path, float, top)
    if ours != theirs:
        raise HFError(
            f"{path}: rope_parameters says rope_theta {ours:g} but transformers, reading "
            f"rope_scaling when both are set, runs with {theirs:g} (rope_scaling's, else the "
            "top-level rope_theta, else 1e4); keep one of them or make the thetas agree"
        )


def _original_context(hf: dict, rope: dict, path) -> int:
    """The pretraining context a llama3 / yarn scaling refers to, where transformers takes it:
    a top-level original_max_position_embeddings (as Phi-3 writes it), else the rope dict's,
    else max_position_embeddings."""
    key = "original_max_position_embeddings"
    for source in (hf, rope):
        if source.get(key) is not None:
            return _number(source, key, path, int)
    return _number(hf, "max_position_embeddings", path, int)


def _yarn_mscale(scale: float, mscale: float = 1.0) -> float:
    # YaRN's attention temperature (its Eq. 21), as transformers' `yarn_get_mscale`.
    return 1.0 if scale <= 1 else 0.1 * mscale * math.log(scale) + 1.0


def _yarn_from_hf(hf: dict, rope: dict, original: int, path) -> config_lib.RopeScaling:
    """YaRN's settings with transformers' defaults: factor (null: the ratio of the context to the
    original one), attention_factor (absent: from factor, and mscale / mscale_all_dim when both
    are set), beta_fast 32, beta_slow 1, truncate true."""
    if rope.get("factor") is None:
        max_positions = _number(hf, "max_position_embeddings", path, int)
        factor = max_positions / original
    else:
        factor = _number(rope, "factor", path, float)
    attention_factor = rope.get("attention_factor")
    if attention_factor is None:
        mscale, mscale_all_dim = rope.get("mscale"), rope.get("mscale_all_dim")
        if mscale and mscale_all_dim:
            m, m_all = (_number(rope, k, path, float) for k in ("mscale", "mscale_all_dim"))
            attention_factor = _yarn_mscale(factor, m) / _yarn_mscale(factor, m_all)
        else:
            attention_factor = _yarn_mscale(factor)
    else:
        attention_factor = _number(rope, "attention_factor", path, float)
    truncate = rope.get("truncate", True)
    if truncate is not None and not isinstance(truncate, bool):
        raise HFError(f"{path}: rope key 'truncate' must be true or false, got {truncate!r}")
    return config_lib.RopeScaling(
        factor=factor,
        original_max_position=original,
        rope_type="yarn",
        # `or`: transformers reads a null or 0 as the default too.
        beta_fast=_number(rope, "beta_fast", path, float, 32.0, nullable=True) or 32.0,
        beta_slow=_number(rope, "beta_slow", path, float, 1.0, nullable=True) or 1.0,
        attention_factor=float(attention_factor),
        truncate=bool(truncate),  # null: falsy to transformers too
    )


def _sliding_layers(hf: dict, arch: str) -> list[int]:
    """The layers transformers runs with sliding-window attention."""
    n_layers = hf.get("num_hidden_layers")
    if arch == "MistralForCausalLM":  # every layer slides when a window is set (absent: 4096)
        return list(range(n_layers or 1)) if hf.get("sliding_window", 4096) is not None else []
    if isinstance(hf.get("layer_types"), list):
        return [i for i, t in enumerate(hf["layer_types"]) if t != "full_attention"]
    if arch in ("Qwen2ForCausalLM", "Qwen3ForCausalLM") and hf.get("use_sliding_window", False):
        if hf.get("sliding_window", 4096) is None:  # no window: transformers slides no layer
            return []
        first = hf.get("max_window_layers", 28)  # transformers' default
        return list(range(first, n_layers)) if isinstance(first, int) else [0]
    return []


def _check_supported(hf: dict, family: str, arch: str, path) -> None:
    if hf.get("hidden_act", "silu") not in ("silu", "swish"):  # one function in transformers
        raise HFError(f"{path}: unsupported hidden_act {hf['hidden_act']!r} (only silu)")
    if sliding := _sliding_layers(hf, arch):
        raise HFError(
            f"{path}: sliding-window attention (sliding_window {hf.get('sliding_window', 4096)}, "
            f"layers {sliding}) is not supported"
        )
    if family in ("llama", "qwen3") and hf.get("attention_bias", False):
        raise HFError(f"{path}: {arch} attention_bias=true (o_proj bias) is not supported")
    if family == "llama" and hf.get("mlp_bias", False):
        raise HFError(f"{path}: Llama mlp_bias=true is not supported")


def _kv_heads(hf: dict, arch: str, n_heads: int, path) -> int:
    default = n_heads if "num_key_value_heads" in hf else _DEFAULT_KV_HEADS.get(arch, n_heads)
    return _number(hf, "num_key_value_heads", path, int, default, nullable=True)


def _head_dim(hf: dict, arch: str, d_model: int, n_heads: int, path) -> int:
    if arch == "Qwen3ForCausalLM":  # Qwen3Config's default is 128 whatever the width
        return _number(hf, "head_dim", path, int, 128)
    return _number(hf, "head_dim", path, int, d_model // max(n_heads, 1), nullable=True)


def config_from_hf(hf: dict, *, path="config.json", dtype: str = "float32") -> ModelConfig:
    """Maps a Hugging Face Qwen2 / Llama / Mistral / Qwen3 (no sliding window) config dict to a
    ModelConfig."""
    archs = hf.get("architectures") or []
    arch = next((a for a in archs if a in _ARCHITECTURES), None)
    if not archs:  # AutoModelForCausalLM goes by model_type then
        arch = _MODEL_TYPES.get(str(hf.get("model_type")))
    if arch is None:
        raise HFError(
            f"{path}: unsupported architectures {archs} (model_type {hf.get('model_type')!r}); "
            f"supported: {sorted(_ARCHITECTURES)}"
        )
    family = _ARCHITECTURES[arch]
    _check_supported(hf, family, arch, path)
    theta, scaling = _rope_from_hf(hf, path)
    d_model = _number(hf, "hidden_size", path, int)
    n_heads = _number(hf, "num_attention_heads", path, int)
    fields = dict(
        vocab_size=_number(hf, "vocab_size", path, int),
        d_model=d_model,
        n_layers=_number(hf, "num_hidden_layers", path, int),
        n_heads=n_heads,
        n_kv_heads=_kv_heads(hf, arch, n_heads, path),
        head_dim=_head_dim(hf, arch, d_model, n_heads, path),
        d_ff=_number(hf, "intermediate_size", path, int),
        rope_theta=theta,
        rope_scaling=scaling,
        rms_norm_eps=_number(hf, "rms_norm_eps", path, float, 1e-6),
        qkv_bias=family == "qwen2",
        qk_norm=family == "qwen3",
        tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
        max_seq_len=_number(hf, "max_position_embeddings", path, int, _DEFAULT_MAX_POSITIONS[arch]),
        dtype=dtype,
        param_dtype=dtype,
        family=family,
    )
    try:
        return ModelConfig(**fields)
    except ValueError as e:  # ModelConfig's own checks (e.g. heads not a multiple of kv heads)
        raise HFError(f"{path}: {e}") from e


def _layer_specs(cfg: ModelConfig) -> dict:
    """Our layer param path -> (HF tensor suffix, HF->ours, ours->HF) for one layer."""
    d, h, k, dh = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
    specs = {
        ("attn_norm", "scale"): ("input_layernorm.weight", lambda w: w, lambda w: w),
        ("mlp_norm", "scale"): ("post_attention_layernorm.weight", lambda w: w, lambda w: w),
        ("mlp", "gate_kernel"): ("mlp.gate_proj.weight", np.transpose, np.transpose),
        ("mlp", "up_kernel"): ("mlp.up_proj.weight", np.transpose, np.transpose),
        ("mlp", "down_kernel"): ("mlp.down_proj.weight", np.transpose, np.transpose),
        ("attn", "o_kernel"): (
            "self_attn.o_proj.weight",
            lambda w: w.T.reshape(h, dh, d),
            lambda w: w.reshape(h * dh, d).T,
        ),
    }
    for name, n in (("q", h), ("k", k), ("v", k)):
        specs[("attn", f"{name}_kernel")] = (
            f"self_attn.{name}_proj.weight",
            lambda w, n=n: w.T.reshape(d, n, dh),
            lambda w, n=n: w.reshape(d, n * dh).T,
        )
        if cfg.qkv_bias:
            specs[("attn", f"{name}_bias")] = (
                f"self_attn.{name}_proj.bias",
                lambda w, n=n: w.reshape(n, dh),
                lambda w, n=n: w.reshape(n * dh),
            )
    if cfg.qk_norm:
        for name in ("q", "k"):
            specs[("attn", f"{name}_norm")] = (
                f"self_attn.{name}_norm.weight",
                lambda w: w,
                lambda w: w,
            )
    return specs


def _tensor_files(path: pathlib.Path) -> dict[str, pathlib.Path]:
    """HF tensor name -> the safetensors file holding it.

    As transformers: model.safetensors, when present, is the model, even beside a shard index
    (HF's `save_pretrained` unsharded over a sharded save removes the shards, not the index)."""
    if (path / _SINGLE_FILE).exists():
        files = [path / _SINGLE_FILE]
    elif (path / _INDEX_FILE).exists():
        weight_map = _read_json(path / _INDEX_FILE, "the shard index").get("weight_map")
        if not isinstance(weight_map, dict):
            raise HFError(f"{path / _INDEX_FILE}: no 'weight_map' object")
        missing = sorted({f for f in weight_map.values() if not (path / str(f)).is_file()})
        if missing:
            raise HFError(
                f"{path / _INDEX_FILE} names {len(missing)} shard file(s) the folder lacks: "
                f"{', '.join(map(str, missing[:4]))}{' ...' if len(missing) > 4 else ''}"
            )
        return {name: path / file for name, file in weight_map.items()}
    else:
        files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"{path}: no *.safetensors file and no {_INDEX_FILE}")
    out = {}
    for file in files:
        with _safe_open(file) as f:
            out.update({name: file for name in f.keys()})
    return out


class _Reader:
    """Reads named tensors lazily from a set of safetensors files, checking shapes."""

    def __init__(self, path: pathlib.Path, dtype):
        self.path, self.dtype = path, dtype
        self.files = _tensor_files(path)
        self.used: set[str] = set()
        self._handles: dict = {}

    def get(self, name: str, shape: tuple[int, ...]) -> np.ndarray:
        if name not in self.files:
            raise HFError(f"{self.path}: checkpoint has no tensor {name!r}")
        file = self.files[name]
        if file not in self._handles:
            self._handles[file] = _safe_open(file)
        try:  # an index can name a shard that lacks the tensor (a hand-edited or re-sharded save)
            stored = self._handles[file].get_slice(name).get_dtype()
            w = self._handles[file].get_tensor(name)
        except safetensors.SafetensorError as e:
            raise HFError(f"{file}: cannot read tensor {name!r} ({e})") from e
        if stored not in _FLOAT_TENSOR_DTYPES:  # cast, an int or bool tensor gives another model
            raise HFError(
                f"{self.path}: tensor {name!r} is stored as {stored}, not as a floating-point "
                f"weight ({', '.join(sorted(_FLOAT_TENSOR_DTYPES))}): a quantized or damaged "
                "checkpoint"
            )
        if tuple(w.shape) != tuple(shape):
            raise HFError(f"{self.path}: tensor {name!r} has shape {w.shape}, expected {shape}")
        self.used.add(name)
        return w.astype(self.dtype) if self.dtype is not None else w

    def check_all_used(self, tied: bool) -> None:
        # rotary inv_freq buffers appear in old checkpoints; they are recomputed from the config.
        # Some tied checkpoints still store a copy of the embedding as lm_head.weight.
        ignored = lambda n: "rotary_emb" in n or (tied and n == "lm_head.weight")
        extra = {n for n in self.files if n not in self.used and not ignored(n)}
        if extra:
            raise HFError(f"{self.path}: unexpected tensors not mapped: {sorted(extra)[:8]}")


def _hf_shapes(cfg: ModelConfig) -> dict:
    d, h, k, dh, f = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.d_ff
    return {
        "input_layernorm.weight": (d,),
        "post_attention_layernorm.weight": (d,),
        "mlp.gate_proj.weight": (f, d),
        "mlp.up_proj.weight": (f, d),
        "mlp.down_proj.weight": (d, f),
        "self_attn.o_proj.weight": (d, h * dh),
        "self_attn.q_proj.weight": (h * dh, d),
        "self_attn.k_proj.weight": (k * dh, d),
        "self_attn.v_proj.weight": (k * dh, d),
        "self_attn.q_proj.bias": (h * dh,),
        "self_attn.k_proj.bias": (k * dh,),
        "self_attn.v_proj.bias": (k * dh,),
        "self_attn.q_norm.weight": (dh,),
        "self_attn.k_norm.weight": (dh,),
    }


_SAFETENSORS_DTYPES = {"BF16": "bfloat16", "F32": "float32", "F16": "float16"}
_FLOAT_TENSOR_DTYPES = {*_SAFETENSORS_DTYPES, "F64"}  # what a weight may be stored as


def _config_dtype(hf: dict, path) -> str | None:
    """The dtype config.json names, as transformers' `dtype="auto"` (its default) reads it:
    `dtype`, else the older `torch_dtype`; None when it names none."""
    key = "dtype" if hf.get("dtype") is not None else "torch_dtype"
    name = hf.get(key)
    if name is None:
        return None
    if name not in _DTYPE_NAMES:
        raise HFError(
            f"{path}: config key {key!r} is {name!r}; supported: {sorted(_DTYPE_NAMES)} (or "
            "load with an explicit dtype)"
        )
    return name


def _checkpoint_dtype(path: pathlib.Path, files: dict) -> str:
    name = "model.embed_tokens.weight"
    if name not in files:
        raise HFError(f"{path}: checkpoint has no tensor {name!r}")
    with _safe_open(files[name]) as f:
        stored = f.get_slice(name).get_dtype()
    if stored not in _SAFETENSORS_DTYPES:
        raise HFError(f"{path}: unsupported tensor dtype {stored} for {name!r}")
    return _SAFETENSORS_DTYPES[stored]


def load_hf(path, *, dtype: str | None = None) -> tuple[ModelConfig, dict]:
    """Loads a Qwen2 / Llama / Mistral / Qwen3 (no sliding window) Hugging Face folder; dtype=None
    takes the one config.json names (`dtype` or `torch_dtype`, as transformers' default
    dtype="auto"), else the stored embedding's.

    A tied config (tie_word_embeddings) whose checkpoint also stores an lm_head.weight that
    differs from the embedding loads untied, as transformers does.
    """
    path = pathlib.Path(path)
    if not (path / "config.json").exists():
        raise FileNotFoundError(f"{path}: no config.json (expected a Hugging Face model folder)")
    hf = _read_json(path / "config.json", "config.json")
    cfg = config_from_hf(hf, path=path / "config.json")  # validate before touching tensors
    dtype = (
        dtype
        or _config_dtype(hf, path / "config.json")
        or _checkpoint_dtype(path, _tensor_files(path))
    )
    if dtype not in _DTYPE_NAMES:
        raise ValueError(f"unsupported dtype {dtype!r}; supported: {sorted(_DTYPE_NAMES)}")
    cfg = dataclasses.replace(cfg, dtype=dtype, param_dtype=dtype)
    reader = _Reader(path, _DTYPE_NAMES[dtype])
    shapes = _hf_shapes(cfg)
    layers: dict = {}
    for (group, leaf), (suffix, to_ours, _) in _layer_specs(cfg).items():
        per_layer = [
            to_ours(reader.get(f"model.layers.{i}.{suffix}", shapes[suffix]))
            for i in range(cfg.n_layers)
        ]
        layers.setdefault(group, {})[leaf] = np.stack(per_layer)
    vxd = (cfg.vocab_size, cfg.d_model)
    params = {
        "embedding": reader.get("model.embed_tokens.weight", vxd),
        "final_norm": {"scale": reader.get("model.norm.weight", (cfg.d_model,))},
        "layers": layers,
    }
    if cfg.tie_embeddings and "lm_head.weight" in reader.files:
        # As transformers: a stored lm_head equal to the embedding is a copy of the tied
        # weight; a different one means the checkpoint is untied whatever the config says.
        if not np.array_equal(reader.get("lm_head.weight", vxd), params["embedding"]):
            cfg = dataclasses.replace(cfg, tie_embeddings=False)
    if not cfg.tie_embeddings:
        params["lm_head"] = reader.get("lm_head.weight", vxd).T
    reader.check_all_used(cfg.tie_embeddings)
    return cfg, jax.tree.map(lambda x: jax.numpy.asarray(np.ascontiguousarray(x)), params)


def config_to_hf(cfg: ModelConfig, dtype_name: str) -> dict:
    """The Hugging Face config.json dict for `cfg` (transformers 5 keys plus legacy rope keys)."""
    rope = {"rope_type": "default", "rope_theta": cfg.rope_theta}
    sc = cfg.rope_scaling
    if sc is not None:
        rope.update(rope_type=sc.rope_type, factor=sc.factor)
    if sc is not None and sc.rope_type == "llama3":
        rope.update(
            low_freq_factor=sc.low_freq_factor,
            high_freq_factor=sc.high_freq_factor,
            original_max_position_embeddings=sc.original_max_position,
        )
    if sc is not None and sc.rope_type == "yarn":
        rope.update(
            original_max_position_embeddings=sc.original_max_position,
            beta_fast=sc.beta_fast,
            beta_slow=sc.beta_slow,
            attention_factor=sc.attention_factor,
            truncate=sc.truncate,
        )
    hf = {
        "architectures": [_EXPORT_ARCHITECTURES[cfg.family]],
        "model_type": cfg.family,
        "vocab_size": cfg.vocab_size,
        "hidden_size": cfg.d_model,
        "intermediate_size": cfg.d_ff,
        "num_hidden_layers": cfg.n_layers,
        "num_attention_heads": cfg.n_heads,
        "num_key_value_heads": cfg.n_kv_heads,
        "head_dim": cfg.head_dim,
        "hidden_act": "silu",
        "max_position_embeddings": cfg.max_seq_len,
        "rms_norm_eps": cfg.rms_norm_eps,
        "tie_word_embeddings": cfg.tie_embeddings,
        "rope_parameters": rope,
        "rope_theta": cfg.rope_theta,  # legacy key, for readers older than transformers 5
        "dtype": dtype_name,
        "torch_dtype": dtype_name,
    }
    if cfg.rope_scaling is not None:
        hf["rope_scaling"] = {k: v for k, v in rope.items() if k != "rope_theta"}  # legacy key
    if cfg.family in ("qwen2", "qwen3"):
        hf.update(use_sliding_window=False, sliding_window=None)
    if cfg.family == "qwen3":
        hf.update(attention_bias=False)
    if cfg.family == "llama":
        hf.update(attention_bias=False, mlp_bias=False)
    return hf


def _hf_tensors(cfg: ModelConfig, params) -> dict[str, np.ndarray]:
    """Our params -> HF tensor name -> numpy array (layers unstacked)."""
    if cfg.family in ("llama", "qwen3") and cfg.qkv_bias:
        raise ValueError(
            f"family={cfg.family!r} cannot export qkv_bias=True (its Hugging Face attention "
            "has q/k/v biases only with an o_proj bias, or none)"
        )
    params = jax.tree.map(np.asarray, params)
    out = {"model.embed_tokens.weight": params["embedding"]}
    specs = _layer_specs(cfg)
    for i in range(cfg.n_layers):
        for (group, leaf), (suffix, _, to_hf) in specs.items():
            out[f"model.layers.{i}.{suffix}"] = to_hf(params["layers"][group][leaf][i])
        if cfg.family == "qwen2" and not cfg.qkv_bias:
            # HF Qwen2 always has q/k/v biases; zeros reproduce a bias-free model exactly.
            dt = params["embedding"].dtype
            for name, n in (("q", cfg.n_heads), ("k", cfg.n_kv_heads), ("v", cfg.n_kv_heads)):
                out[f"model.layers.{i}.self_attn.{name}_proj.bias"] = np.zeros(n * cfg.head_dim, dt)
    out["model.norm.weight"] = params["final_norm"]["scale"]
    if not cfg.tie_embeddings:
        out["lm_head.weight"] = params["lm_head"].T
    return {k: np.ascontiguousarray(v) for k, v in out.items()}


def save_hf(path, cfg: ModelConfig, params, *, max_shard_bytes: int = 5 * 1024**3) -> None:
    """Writes config.json and safetensors (sharded with an index beyond max_shard_bytes).

    config.json is removed first and written last, every file through a temporary name: a save
    cut short (killed) leaves a folder without config.json, which no reader takes for a model
    (`load_hf` and transformers both refuse it), and saving again completes it.
    """
    path = pathlib.Path(path)
    path.mkdir(parents=True, exist_ok=True)
    tensors = _hf_tensors(cfg, params)
    dtype_name = tensors["model.embed_tokens.weight"].dtype.name
    (path / "config.json").unlink(missing_ok=True)
    shards: list[dict] = [{}]
    size = 0
    for name, w in tensors.items():
        if shards[-1] and size + w.nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = w
        size += w.nbytes
    # Weight files of an earlier save would be read instead of (transformers prefers a single
    # model.safetensors to an index) or beside (our glob without an index) the new ones; a
    # killed save may have left temporary files.
    (path / _INDEX_FILE).unlink(missing_ok=True)
    old_files = [_SINGLE_FILE, "model-?????-of-?????.safetensors", "*.safetensors.tmp*"]
    for stale in [p for pattern in old_files for p in path.glob(pattern)]:
        stale.unlink(missing_ok=True)
    if len(shards) == 1:
        _save_shard(shards[0], path / _SINGLE_FILE)
    else:
        weight_map = {}
        for i, shard in enumerate(shards):
            file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
            _save_shard(shard, path / file)
            weight_map.update({name: file for name in shard})
        total = sum(w.nbytes for w in tensors.values())
        index = {"metadata": {"total_size": total}, "weight_map": weight_map}
        files.write_atomic(path / _INDEX_FILE, json.dumps(index, indent=2))
    files.write_atomic(path / "config.json", json.dumps(config_to_hf(cfg, dtype_name), indent=2))


def _save_shard(tensors: dict[str, np.ndarray], file: pathlib.Path) -> None:
    tmp = file.with_name(f"{file.name}.tmp{os.getpid()}")
    try:
        safetensors.numpy.save_file(tensors, tmp, metadata={"format": "pt"})
        files.give_default_mode(tmp)  # safetensors writes 0600: other users could not load it
        os.replace(tmp, file)
    finally:
        tmp.unlink(missing_ok=True)
