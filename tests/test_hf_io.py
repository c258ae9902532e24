"""Logit parity with Hugging Face transformers (tiny random models made here) and HF round trips."""

import dataclasses
import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors.numpy as safetensors_numpy

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from r1jax.model import config as config_lib  # noqa: E402
from r1jax.model import hf_io  # noqa: E402
from r1jax.model import transformer as tf  # noqa: E402

V, T = 256, 24
LLAMA3_ROPE = {
    "rope_type": "llama3",
    "factor": 8.0,
    "low_freq_factor": 1.0,
    "high_freq_factor": 4.0,
    "original_max_position_embeddings": 8,
    "rope_theta": 500000.0,
}  # a short original context, so most frequencies are rescaled
YARN_ROPE = {
    "rope_type": "yarn",
    "factor": 4.0,
    "original_max_position_embeddings": 8,
    "rope_theta": 1e4,
}


def _hf_model(arch, **kwargs):
    """A tiny random transformers model in float32 with every weight (norms, biases) perturbed."""
    torch.manual_seed(0)
    config_cls, model_cls = {
        "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM),
        "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM),
        "mistral": (transformers.MistralConfig, transformers.MistralForCausalLM),
        "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM),
    }[arch]
    base = dict(vocab_size=V, hidden_size=64, intermediate_size=96, num_hidden_layers=2)
    hf_config = config_cls(**base, **kwargs, attn_implementation="eager")
    model = model_cls(hf_config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * 0.2 + (1.0 if "norm" in name else 0.0))
    return model


def _hf_logits(model, tokens):
    with torch.no_grad():
        return model(torch.tensor(np.array(tokens), dtype=torch.long)).logits.numpy()


@functools.partial(jax.jit, static_argnums=0)
def _forward(cfg, params, tokens):
    return tf.forward(cfg, params, tokens)


def _tokens():
    return jnp.asarray(np.random.RandomState(0).randint(0, V, (2, T)), jnp.int32)


PARITY_CASES = {
    "qwen2-tied-4q2kv": (
        "qwen2",
        dict(
            num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True, rope_theta=1e6
        ),
        None,
    ),
    "qwen2-untied-4q1kv-sharded": (
        "qwen2",
        dict(num_attention_heads=4, num_key_value_heads=1, tie_word_embeddings=False),
        "40KB",
    ),
    "llama-2q2kv": ("llama", dict(num_attention_heads=2, num_key_value_heads=2), None),
    "llama-linear-rope": (
        "llama",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            rope_parameters={"rope_type": "linear", "factor": 2.5, "rope_theta": 1e4},
        ),
        None,
    ),
    # YaRN with a short original context, so the ramp and the attention factor both matter.
    "qwen2-yarn-rope": (
        "qwen2",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            max_position_embeddings=32,
            rope_parameters=YARN_ROPE,
        ),
        None,
    ),
    "llama-yarn-mscale-untruncated-head_dim32": (
        "llama",
        dict(
            num_attention_heads=2,
            num_key_value_heads=1,
            head_dim=32,
            rope_parameters={
                **YARN_ROPE,
                "factor": 8.0,
                "original_max_position_embeddings": 4,
                "mscale": 0.707,
                "mscale_all_dim": 1.0,
                "beta_fast": 8,
                "beta_slow": 2,
                "truncate": False,
            },
        ),
        None,
    ),
    # Mistral v0.2+ (no sliding window) computes as Llama; loads as family llama.
    "mistral-no-window-head_dim24": (
        "mistral",
        dict(num_attention_heads=4, num_key_value_heads=2, head_dim=24, sliding_window=None),
        None,
    ),
    # use_sliding_window with max_window_layers past the last layer: no layer slides.
    "qwen2-window-on-no-sliding-layer": (
        "qwen2",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            use_sliding_window=True,
            sliding_window=4,
            max_window_layers=2,
        ),
        None,
    ),
    # Qwen3: q/k norms over each head; head_dim apart from hidden / heads.
    "qwen3-tied-head_dim32": (
        "qwen3",
        dict(
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=32,
            tie_word_embeddings=True,
            rope_theta=1e6,
        ),
        None,
    ),
    # No head_dim given: Qwen3Config's 128, whatever hidden / heads is.
    "qwen3-untied-default-head_dim-sharded": (
        "qwen3",
        dict(num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=False),
        "40KB",
    ),
    "llama3-scaling-tied-head_dim32": (
        "llama",
        dict(
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=32,
            tie_word_embeddings=True,
            rope_parameters=LLAMA3_ROPE,
        ),
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(PARITY_CASES))
def test_load_hf_matches_transformers_logits(case, tmp_path):
    arch, kwargs, shard_size = PARITY_CASES[case]
    model = _hf_model(arch, **kwargs)
    save_kwargs = {} if shard_size is None else {"max_shard_size": shard_size}
    model.save_pretrained(tmp_path, **save_kwargs)
    assert (tmp_path / "model.safetensors.index.json").exists() == (shard_size is not None)
    cfg, params = hf_io.load_hf(tmp_path)
    assert cfg.family == {"mistral": "llama"}.get(arch, arch)
    assert cfg.tie_embeddings == kwargs.get("tie_word_embeddings", False)
    default_head_dim = 128 if arch == "qwen3" else 64 // kwargs["num_attention_heads"]
    assert cfg.head_dim == kwargs.get("head_dim", default_head_dim)
    assert cfg.qk_norm == (arch == "qwen3")
    assert (cfg.rope_scaling is not None) == ("rope_parameters" in kwargs)
    tokens = _tokens()
    diff = np.abs(np.asarray(_forward(cfg, params, tokens)) - _hf_logits(model, tokens)).max()
    assert diff <= 1e-4, f"{case}: max |logit diff| {diff}"


TRAINING_CASES = {
    "qwen2-tied": ("qwen2", dict(num_attention_heads=4, num_key_value_heads=2)),
    "qwen3-gqa-wide-heads-yarn": (
        "qwen3",
        dict(
            num_attention_heads=4,
            num_key_value_heads=1,
            head_dim=32,
            tie_word_embeddings=False,
            rope_parameters=YARN_ROPE,
        ),
    ),
}


@pytest.mark.parametrize("case", sorted(TRAINING_CASES))
def test_packed_training_loss_and_gradients_match_transformers(case, tmp_path):
    """The training loss of documents packed two to a row (segment ids, restarted positions,
    padding, attention in blocks of 5 queries that do not divide T, remat) and its gradient
    are transformers' on each document alone: masking leaks nothing across documents."""
    from r1jax.model import logprobs

    arch, kwargs = TRAINING_CASES[case]
    model = _hf_model(arch, **kwargs)
    docs = [np.random.RandomState(i).randint(0, V, n) for i, n in enumerate((9, 7, 11, 6))]
    nll = sum(
        model(torch.tensor(d[None]), labels=torch.tensor(d[None])).loss * (len(d) - 1) for d in docs
    )
    (nll / sum(len(d) - 1 for d in docs)).backward()
    model.save_pretrained(tmp_path)
    cfg, params = hf_io.load_hf(tmp_path)
    cfg = dataclasses.replace(cfg, attention_chunk=5, remat="full", unroll_layers=1)
    rows = [
        np.concatenate([docs[0], docs[1], [0] * 4]),
        np.concatenate([docs[2], docs[3], [0] * 3]),
    ]
    segment_ids = np.asarray([[1] * 9 + [2] * 7 + [0] * 4, [1] * 11 + [2] * 6 + [0] * 3])
    positions = np.asarray([[*range(9), *range(7), 0, 0, 0, 0], [*range(11), *range(6), 0, 0, 0]])
    weights = (segment_ids[:, 1:] != 0) & (segment_ids[:, 1:] == segment_ids[:, :-1])

    def loss(p):
        logp, _ = logprobs.sequence_logprobs(
            cfg, p, jnp.asarray(rows), positions_BxT=positions, segment_ids_BxT=segment_ids
        )
        return -jnp.sum(logp * weights) / weights.sum()

    value, grads = jax.jit(jax.value_and_grad(loss))(params)
    np.testing.assert_allclose(value, (nll / sum(len(d) - 1 for d in docs)).item(), rtol=1e-5)
    hf_io.save_hf(tmp_path / "grads", cfg, grads)
    ours = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path / "grads", dtype=torch.float32
    )
    theirs = dict(model.named_parameters())
    for name, g in ours.named_parameters():
        want = theirs[name].grad.numpy()
        err = np.abs(g.detach().numpy() - want).max() / np.abs(want).max()
        assert err < 1e-4, f"{case}: {name} relative gradient error {err}"


ROPE_VARIANTS = {
    "default": {"rope_type": "default"},
    "linear": {"rope_type": "linear", "factor": 3.0},
    "llama3": LLAMA3_ROPE,
    "llama3-odd-context": {**LLAMA3_ROPE, "original_max_position_embeddings": 3000},
    "yarn": YARN_ROPE,
    "yarn-untruncated": {**YARN_ROPE, "truncate": False, "original_max_position_embeddings": 300},
    "yarn-mscale": {**YARN_ROPE, "mscale": 0.707, "mscale_all_dim": 1.0, "beta_fast": 16},
    "yarn-attention-factor": {**YARN_ROPE, "attention_factor": 1.5, "beta_slow": 2},
    "yarn-no-factor": {**YARN_ROPE, "factor": None},
}


@pytest.mark.parametrize("variant", sorted(ROPE_VARIANTS))
@pytest.mark.parametrize("head_dim, theta", [(32, 1e4), (128, 1e6)])
def test_rope_frequencies_and_scaling_match_transformers(variant, head_dim, theta, tmp_path):
    from transformers.models.llama.modeling_llama import LlamaRotaryEmbedding

    hf_config = transformers.LlamaConfig(
        vocab_size=V,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=1,
        num_attention_heads=2,
        head_dim=head_dim,
        max_position_embeddings=4096,
        rope_parameters={**ROPE_VARIANTS[variant], "rope_theta": theta},
        architectures=["LlamaForCausalLM"],
    )
    hf_config.save_pretrained(tmp_path)
    cfg = hf_io.config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    rotary = LlamaRotaryEmbedding(hf_config)
    # Equal but where numpy's float64 pow rounds theta ** (2i / Dh) differently from torch's
    # float32 pow (about 1% of entries, by 1 ulp).
    np.testing.assert_allclose(tf.rope_inv_freq(cfg), rotary.inv_freq.numpy(), rtol=3e-7, atol=0)
    assert tf.rope_attention_scaling(cfg) == rotary.attention_scaling
    assert hf_io.config_from_hf(hf_io.config_to_hf(cfg, "float32")) == cfg


def _our_model(cfg, seed=0):
    """Random params from numpy (no compile): norms near 1, everything else N(0, 0.2^2)."""
    shapes = jax.eval_shape(functools.partial(tf.init_params, cfg), jax.random.key(0))
    rng = np.random.RandomState(seed)

    def draw(path, s):
        offset = 1.0 if "norm" in jax.tree_util.keystr(path) else 0.0
        return jnp.asarray(rng.normal(offset, 0.2, s.shape).astype(np.float32))

    return jax.tree_util.tree_map_with_path(draw, shapes)


def _small(**shape):
    """A 2-layer, D 32 ModelConfig for the save cases (the rest of its shape given)."""
    return config_lib.ModelConfig(vocab_size=V, d_model=32, n_layers=2, d_ff=64, **shape)


SAVE_CASES = {
    "qwen2-tied": (
        _small(n_heads=4, n_kv_heads=2, head_dim=8, qkv_bias=True, tie_embeddings=True),
        None,
    ),
    "qwen2-no-bias-sharded": (_small(n_heads=4, n_kv_heads=2, head_dim=8, qkv_bias=False), 20_000),
    "llama3-untied-head_dim16": (
        _small(
            n_heads=2,
            n_kv_heads=1,
            head_dim=16,
            rope_theta=500000.0,
            rope_scaling=config_lib.RopeScaling(8.0, 1.0, 4.0, 8),
            rms_norm_eps=1e-5,
            family="llama",
        ),
        None,
    ),
    "qwen2-yarn": (
        _small(
            n_heads=4,
            n_kv_heads=2,
            head_dim=8,
            qkv_bias=True,
            rope_scaling=config_lib.RopeScaling(
                4.0, original_max_position=8, rope_type="yarn", beta_fast=16.0, attention_factor=1.2
            ),
        ),
        None,
    ),
    "qwen3-tied-head_dim16": (
        _small(n_heads=4, n_kv_heads=2, head_dim=16, qk_norm=True, family="qwen3"),
        None,
    ),
    "llama-linear": (
        _small(
            n_heads=2,
            n_kv_heads=2,
            head_dim=16,
            rope_scaling=config_lib.RopeScaling(3.0, rope_type="linear"),
            family="llama",
        ),
        None,
    ),
}


@pytest.mark.parametrize("case", sorted(SAVE_CASES))
def test_save_hf_loads_in_transformers_with_same_logits(case, tmp_path):
    cfg, shard_bytes = SAVE_CASES[case]
    params = _our_model(cfg)
    kwargs = {} if shard_bytes is None else {"max_shard_bytes": shard_bytes}
    hf_io.save_hf(tmp_path, cfg, params, **kwargs)
    assert (tmp_path / "model.safetensors.index.json").exists() == (shard_bytes is not None)
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", dtype=torch.float32
    ).eval()
    tokens = _tokens()
    diff = np.abs(np.asarray(_forward(cfg, params, tokens)) - _hf_logits(model, tokens)).max()
    assert diff <= 1e-4, f"{case}: max |logit diff| {diff}"
    cfg2, params2 = hf_io.load_hf(tmp_path)
    assert cfg2 == dataclasses.replace(cfg, qkv_bias=cfg2.qkv_bias)
    if cfg.qkv_bias == cfg2.qkv_bias:
        jax.tree.map(np.testing.assert_array_equal, params, params2)


def test_bfloat16_round_trip_keeps_dtype_and_bits(tmp_path):
    cfg = SAVE_CASES["qwen2-tied"][0]
    params = jax.tree.map(lambda x: x.astype(jnp.bfloat16), _our_model(cfg))
    hf_io.save_hf(tmp_path, cfg, params)
    cfg2, params2 = hf_io.load_hf(tmp_path)
    assert cfg2.param_dtype == "bfloat16" and cfg2.dtype == "bfloat16"
    assert all(x.dtype == jnp.bfloat16 for x in jax.tree.leaves(params2))
    jax.tree.map(np.testing.assert_array_equal, params, params2)
    _, params32 = hf_io.load_hf(tmp_path, dtype="float32")
    assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(params32))


def _write_config(path, **overrides):
    hf = hf_io.config_to_hf(SAVE_CASES["llama3-untied-head_dim16"][0], "float32")
    if "rope_parameters" in overrides:
        hf.pop("rope_scaling")  # the legacy copy of the rope settings replaced
    hf.update(overrides)
    path.mkdir(exist_ok=True)
    (path / "config.json").write_text(json.dumps({k: v for k, v in hf.items() if v is not None}))
    return hf


def test_legacy_rope_keys_are_read(tmp_path):
    legacy_rope = {
        "type": "llama3",
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8,
    }
    hf = _write_config(tmp_path, rope_parameters=None, rope_theta=123.0, rope_scaling=legacy_rope)
    cfg = hf_io.config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    assert cfg.rope_theta == 123.0
    assert cfg.rope_scaling == config_lib.RopeScaling(8.0, 1.0, 4.0, 8)
    assert hf["rope_parameters"] is None
    default = hf_io.config_from_hf({**hf, "rope_parameters": None, "rope_scaling": None})
    assert default.rope_scaling is None and default.rope_theta == 123.0


def test_both_rope_spellings_agreeing_are_read(tmp_path):
    yarn = {"factor": 4.0, "original_max_position_embeddings": 8}
    _write_config(
        tmp_path,
        rope_parameters={**yarn, "rope_type": "yarn", "rope_theta": 5e5},
        rope_scaling={**yarn, "type": "yarn"},
    )
    cfg = hf_io.config_from_hf(json.loads((tmp_path / "config.json").read_text()))
    assert cfg.rope_theta == 5e5 and cfg.rope_scaling.rope_type == "yarn"
    assert cfg.rope_scaling.factor == 4.0


@pytest.mark.parametrize("top_level", [None, 1e4])
def test_both_rope_spellings_with_a_theta_transformers_would_not_run_are_refused(
    tmp_path, top_level
):
    # A transformers 5 folder keeps theta in rope_parameters alone; a YaRN rope_scaling added
    # beside it by hand makes transformers run rope_scaling's, else the top-level, else 1e4.
    yarn = {"factor": 4.0, "original_max_position_embeddings": 8}
    rope_parameters = {**yarn, "rope_type": "yarn", "rope_theta": 5e5}
    _write_config(
        tmp_path,
        rope_parameters=rope_parameters,
        rope_scaling={**yarn, "type": "yarn"},
        rope_theta=top_level,
    )
    theirs = transformers.AutoConfig.from_pretrained(tmp_path).rope_parameters["rope_theta"]
    assert theirs == 1e4
    with pytest.raises(hf_io.HFError, match="rope_theta 500000 but transformers.* runs with 10000"):
        hf_io.load_hf(tmp_path)
    # rope_scaling carrying the same theta: transformers runs it, and so does r1jax.
    _write_config(
        tmp_path,
        rope_parameters=rope_parameters,
        rope_scaling={**yarn, "type": "yarn", "rope_theta": 5e5},
        rope_theta=top_level,
    )
    assert transformers.AutoConfig.from_pretrained(tmp_path).rope_parameters["rope_theta"] == 5e5
    hf = json.loads((tmp_path / "config.json").read_text())
    assert hf_io.config_from_hf(hf).rope_theta == 5e5


def test_swish_is_read_as_silu():
    # transformers maps both names to one function (ACT2FN); some Llama configs say "swish".
    hf = hf_io.config_to_hf(SAVE_CASES["llama3-untied-head_dim16"][0], "float32")
    assert hf_io.config_from_hf({**hf, "hidden_act": "swish"}) == hf_io.config_from_hf(hf)


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"architectures": ["GemmaForCausalLM"]}, "unsupported architectures"),
        # transformers' Mistral slides with its default window when the key is absent, and
        # whatever layer_types say.
        (
            {"architectures": ["MistralForCausalLM"]},
            r"sliding-window attention \(sliding_window 4096, layers \[0, 1\]\)",
        ),
        (
            {
                "architectures": ["MistralForCausalLM"],
                "sliding_window": 8,
                "layer_types": ["full_attention", "full_attention"],
            },
            r"sliding-window attention \(sliding_window 8, layers \[0, 1\]\)",
        ),
        (
            {"architectures": ["MistralForCausalLM"], "sliding_window": 4096},
            r"sliding-window attention \(sliding_window 4096, layers \[0, 1\]\)",
        ),
        (
            {
                "architectures": ["Qwen2ForCausalLM"],
                "use_sliding_window": True,
                "max_window_layers": 0,
            },
            r"sliding-window attention .*layers \[0, 1\]",
        ),
        (
            {
                "architectures": ["Qwen2ForCausalLM"],
                "use_sliding_window": True,
                "max_window_layers": 1,
            },
            r"sliding-window attention .*layers \[1\]",
        ),
        (
            {"layer_types": ["full_attention", "sliding_attention"], "sliding_window": 8},
            r"sliding-window attention \(sliding_window 8, layers \[1\]\)",
        ),
        ({"rope_parameters": {"rope_type": "longrope", "factor": 4.0}}, "rope type 'longrope'"),
        ({"rope_parameters": {"rope_type": "linear"}}, "missing required key 'factor'"),
        (
            {"rope_parameters": {"rope_type": "yarn", "factor": -2.0}},
            "rope_parameters: RopeScaling.factor must be positive",
        ),
        (
            {"rope_parameters": {"rope_type": "yarn", "factor": 2.0, "truncate": "yes"}},
            "'truncate' must be true or false",
        ),
        (
            {"rope_parameters": {"rope_type": "llama3", "factor": 2.0, "low_freq_factor": 1.0}},
            "missing required key 'high_freq_factor'",
        ),
        (
            {"rope_parameters": None, "rope_scaling": {"type": "dynamic", "factor": 2.0}},
            "rope type 'dynamic' in rope_scaling",
        ),
        (
            # transformers reads rope_scaling when both are set (a card's YaRN added by hand).
            {
                "rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
                "rope_scaling": {"type": "yarn", "factor": 4.0},
            },
            "rope_parameters .* and rope_scaling .* disagree",
        ),
        ({"attention_bias": True}, "attention_bias"),
        (
            {"architectures": ["Qwen3ForCausalLM"], "attention_bias": True},
            r"Qwen3ForCausalLM attention_bias=true \(o_proj bias\)",
        ),
        (
            {
                "architectures": ["Qwen3ForCausalLM"],
                "use_sliding_window": True,
                "max_window_layers": 1,
            },
            r"sliding-window attention .*layers \[1\]",
        ),
        ({"hidden_act": "gelu"}, "hidden_act"),
        ({"hidden_size": None}, "hidden_size"),
    ],
)
def test_unsupported_configs_fail_clearly(tmp_path, overrides, message):
    _write_config(tmp_path, **overrides)
    with pytest.raises((ValueError, KeyError), match=message):
        hf_io.load_hf(tmp_path)


def test_wrong_tensor_shape_names_the_tensor(tmp_path):
    cfg = SAVE_CASES["qwen2-tied"][0]
    hf_io.save_hf(tmp_path, cfg, _our_model(cfg))
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "intermediate_size": 48}))
    with pytest.raises(ValueError, match="mlp.gate_proj.weight"):
        hf_io.load_hf(tmp_path)


def test_unexpected_tensors_fail_but_tied_lm_head_copy_is_ignored(tmp_path):
    cfg = SAVE_CASES["qwen2-tied"][0]
    params = _our_model(cfg)
    hf_io.save_hf(tmp_path, cfg, params)
    # Neither model.safetensors (which alone is the model, as in transformers) nor an index:
    # every *.safetensors file is read.
    (tmp_path / "model.safetensors").rename(tmp_path / "weights.safetensors")
    extra = {"lm_head.weight": np.asarray(params["embedding"])}
    safetensors_numpy.save_file(extra, tmp_path / "extra.safetensors")
    assert hf_io.load_hf(tmp_path)[0].tie_embeddings
    extra["model.layers.0.self_attn.o_proj.bias"] = np.zeros(cfg.d_model, np.float32)
    safetensors_numpy.save_file(extra, tmp_path / "extra.safetensors")
    with pytest.raises(ValueError, match="o_proj.bias"):
        hf_io.load_hf(tmp_path)


def test_tied_config_with_a_distinct_lm_head_loads_untied_like_transformers(tmp_path):
    model = _hf_model(
        "qwen2", num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True
    )
    model.save_pretrained(tmp_path)
    lm_head = np.random.RandomState(1).normal(0, 0.2, (V, 64)).astype(np.float32)
    tensors = safetensors_numpy.load_file(tmp_path / "model.safetensors")
    tensors["lm_head.weight"] = lm_head
    safetensors_numpy.save_file(tensors, tmp_path / "model.safetensors", metadata={"format": "pt"})
    reference = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", dtype=torch.float32
    ).eval()
    cfg, params = hf_io.load_hf(tmp_path)
    assert not cfg.tie_embeddings
    np.testing.assert_array_equal(params["lm_head"], lm_head.T)
    tokens = _tokens()
    diff = np.abs(np.asarray(_forward(cfg, params, tokens)) - _hf_logits(reference, tokens)).max()
    assert diff <= 1e-4, f"max |logit diff| {diff}"


def test_save_hf_over_an_earlier_save_replaces_its_weight_files(tmp_path):
    cfg = SAVE_CASES["qwen2-tied"][0]
    old, new = _our_model(cfg, seed=0), _our_model(cfg, seed=1)
    hf_io.save_hf(tmp_path, cfg, old)
    hf_io.save_hf(tmp_path, cfg, new, max_shard_bytes=20_000)  # sharded over a single file
    assert not (tmp_path / "model.safetensors").exists()
    # Weights readable as the config is (safetensors alone writes them 0600).
    modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    assert len(set(modes.values())) == 1, modes
    model = transformers.AutoModelForCausalLM.from_pretrained(
        tmp_path, attn_implementation="eager", dtype=torch.float32
    ).eval()
    tokens = _tokens()
    diff = np.abs(np.asarray(_forward(cfg, new, tokens)) - _hf_logits(model, tokens)).max()
    assert diff <= 1e-4, f"transformers read stale weights: max |logit diff| {diff}"
    one_layer = dataclasses.replace(cfg, n_layers=1)  # single file over shards of a deeper model
    hf_io.save_hf(tmp_path, one_layer, _our_model(one_layer))
    assert sorted(p.name for p in tmp_path.glob("*.safetensors")) == ["model.safetensors"]
    assert hf_io.load_hf(tmp_path)[0] == one_layer


def test_a_shard_missing_from_a_sharded_save_is_named_before_any_read(tmp_path):
    cfg = SAVE_CASES["qwen2-tied"][0]
    hf_io.save_hf(tmp_path, cfg, _our_model(cfg), max_shard_bytes=20_000)
    shards = sorted(tmp_path.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2
    shards[-1].unlink()  # a copy or download cut short (it read as a bare FileNotFoundError)
    with pytest.raises(hf_io.HFError, match=rf"lacks: {shards[-1].name}$"):
        hf_io.load_hf(tmp_path)


def test_an_index_naming_a_shard_without_the_tensor_is_a_clear_error(tmp_path):
    cfg = SAVE_CASES["qwen2-tied"][0]
    hf_io.save_hf(tmp_path, cfg, _our_model(cfg), max_shard_bytes=20_000)
    weight_map = json.loads((tmp_path / "model.safetensors.index.json").read_text())["weight_map"]
    name = "model.layers.1.mlp.down_proj.weight"
    shard = tmp_path / weight_map[name]
    tensors = safetensors_numpy.load_file(shard)
    del tensors[name]  # re-sharded or hand-edited (safetensors' own error named neither)
    safetensors_numpy.save_file(tensors, shard)
    with pytest.raises(hf_io.HFError, match=rf"{shard.name}: cannot read tensor '{name}'"):
        hf_io.load_hf(tmp_path)


@pytest.mark.parametrize("stored", [np.int32, np.bool_, np.int8])
def test_a_weight_stored_as_integers_is_refused_not_cast(tmp_path, stored):
    # Cast to float it loaded as another model (a quantized or damaged checkpoint).
    cfg = SAVE_CASES["qwen2-tied"][0]
    hf_io.save_hf(tmp_path, cfg, _our_model(cfg))
    tensors = safetensors_numpy.load_file(tmp_path / "model.safetensors")
    name = "model.layers.0.mlp.up_proj.weight"
    tensors[name] = tensors[name].astype(stored)
    safetensors_numpy.save_file(tensors, tmp_path / "model.safetensors")
    with pytest.raises(hf_io.HFError, match=rf"'{name}' is stored as (I32|BOOL|I8), not as a"):
        hf_io.load_hf(tmp_path)


@pytest.mark.parametrize(
    "saved, named, expected",
    [
        (torch.bfloat16, "float32", "float32"),
        (torch.float32, "bfloat16", "bfloat16"),
        (torch.float32, None, "float32"),
        (torch.bfloat16, None, "bfloat16"),
    ],
)
def test_the_dtype_is_config_jsons_as_transformers_auto_else_the_stored_one(
    tmp_path, saved, named, expected
):
    model = _hf_model("qwen2", num_attention_heads=4, num_key_value_heads=2)
    model.to(saved).save_pretrained(tmp_path)
    hf = json.loads((tmp_path / "config.json").read_text())
    hf.pop("torch_dtype", None)
    hf["dtype"] = named
    (tmp_path / "config.json").write_text(json.dumps(hf))
    auto = transformers.AutoModelForCausalLM.from_pretrained(tmp_path)  # dtype="auto"
    assert str(next(auto.parameters()).dtype) == f"torch.{expected}"
    cfg, params = hf_io.load_hf(tmp_path)
    assert (cfg.dtype, cfg.param_dtype) == (expected, expected)
    assert {str(x.dtype) for x in jax.tree.leaves(params)} == {expected}
    # The older key alone is read too; a dtype given by the caller wins.
    hf["torch_dtype"] = hf.pop("dtype")
    (tmp_path / "config.json").write_text(json.dumps(hf))
    assert hf_io.load_hf(tmp_path)[0].dtype == expected
    assert hf_io.load_hf(tmp_path, dtype="float16")[0].dtype == "float16"


def test_a_config_dtype_r1jax_cannot_compute_in_is_a_clear_error(tmp_path):
    cfg = SAVE_CASES["qwen2-tied"][0]
    hf_io.save_hf(tmp_path, cfg, _our_model(cfg))
    hf = json.loads((tmp_path / "config.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps({**hf, "dtype": "float64"}))
    with pytest.raises(hf_io.HFError, match="config key 'dtype' is 'float64'; supported"):
        hf_io.load_hf(tmp_path)
    assert hf_io.load_hf(tmp_path, dtype="float32")[0].dtype == "float32"


def test_a_single_file_beside_a_stale_shard_index_is_the_model_as_in_transformers(tmp_path):
    # transformers' save_pretrained unsharded over a sharded save removes the shards but not
    # the index; from_pretrained then reads model.safetensors, and so must load_hf.
    _hf_model("qwen2", num_attention_heads=4, num_key_value_heads=2).save_pretrained(
        tmp_path, max_shard_size="30KB"
    )
    model = _hf_model("llama", num_attention_heads=4, num_key_value_heads=2)
    with torch.no_grad():  # other weights than the sharded save's
        model.model.embed_tokens.weight.mul_(-1.0)
    model.save_pretrained(tmp_path)
    assert (tmp_path / "model.safetensors.index.json").exists()
    assert not list(tmp_path.glob("model-*-of-*.safetensors"))
    cfg, params = hf_io.load_hf(tmp_path)
    tokens = _tokens()
    diff = np.abs(np.asarray(_forward(cfg, params, tokens)) - _hf_logits(model, tokens)).max()
    assert diff <= 1e-4, f"max |logit diff| {diff}"


def _saved_without(model, path, field: str):
    """Saves `model` to `path` with `field` left out of its config.json; returns what
    transformers loads from that folder (the reference)."""
    model.save_pretrained(path)
    hf = json.loads((path / "config.json").read_text())
    del hf[field]
    (path / "config.json").write_text(json.dumps(hf))
    return transformers.AutoModelForCausalLM.from_pretrained(
        path, attn_implementation="eager", dtype=torch.float32
    ).eval()


@pytest.mark.parametrize("arch", ["llama", "qwen3"])
def test_a_config_without_architectures_loads_by_its_model_type_as_transformers(arch, tmp_path):
    # AutoModelForCausalLM reads model_type where architectures is absent (configs written by
    # hand or by other tools); r1jax called such a folder an "unsupported architectures []".
    model = _hf_model(arch, num_attention_heads=4, num_key_value_heads=2, head_dim=8)
    reference = _saved_without(model, tmp_path, "architectures")
    cfg, params = hf_io.load_hf(tmp_path)
    assert cfg.family == arch and cfg.qk_norm == (arch == "qwen3")
    tokens = _tokens()
    diff = np.abs(np.asarray(_forward(cfg, params, tokens)) - _hf_logits(reference, tokens)).max()
    assert diff <= 1e-4, f"max |logit diff| {diff}"
    hf = json.loads((tmp_path / "config.json").read_text())
    with pytest.raises(hf_io.HFError, match="unsupported architectures"):  # named, not ours
        hf_io.config_from_hf({**hf, "architectures": ["LlamaModel"]})


@pytest.mark.parametrize(
    "text, message",
    [
        ('{"vocab_size": 3,', "config.json is not valid JSON"),
        ("[1, 2]", "must hold a JSON object"),
        ('{"architectures": ["LlamaForCausalLM"], "hidden_size": "big"}', "'hidden_size'"),
    ],
)
def test_corrupt_config_json_names_the_file(tmp_path, text, message):
    (tmp_path / "config.json").write_text(text)
    with pytest.raises(ValueError, match=message) as e:
        hf_io.load_hf(tmp_path)
    assert str(tmp_path / "config.json") in str(e.value)


def test_config_defaults_follow_transformers():
    hf = hf_io.config_to_hf(SAVE_CASES["qwen2-tied"][0], "float32")
    del hf["max_position_embeddings"], hf["rms_norm_eps"]
    cfg = hf_io.config_from_hf({**hf, "num_key_value_heads": None, "head_dim": None})
    assert cfg.max_seq_len == 32768 and cfg.rms_norm_eps == 1e-6  # Qwen2Config defaults
    assert cfg.n_kv_heads == cfg.n_heads and cfg.head_dim == cfg.d_model // cfg.n_heads
    llama = hf_io.config_from_hf({**hf, "architectures": ["LlamaForCausalLM"]})
    assert llama.max_seq_len == 2048  # LlamaConfig default
    del hf["head_dim"]
    qwen3 = hf_io.config_from_hf({**hf, "architectures": ["Qwen3ForCausalLM"]})
    assert qwen3.head_dim == 128 and qwen3.max_seq_len == 32768  # Qwen3Config defaults
    assert qwen3.qk_norm and not qwen3.qkv_bias and qwen3.family == "qwen3"
    with pytest.raises(ValueError, match="'head_dim' must be a number"):  # transformers fails
        hf_io.config_from_hf({**hf, "architectures": ["Qwen3ForCausalLM"], "head_dim": None})
    # Qwen3 slides only with a window (transformers drops use_sliding_window's without one).
    windowless = {"use_sliding_window": True, "sliding_window": None, "max_window_layers": 0}
    assert hf_io.config_from_hf({**hf, **windowless, "architectures": ["Qwen3ForCausalLM"]})
    with pytest.raises(ValueError, match="'rms_norm_eps' must be a number"):
        hf_io.config_from_hf({**hf, "rms_norm_eps": None})  # transformers rejects it too


@pytest.mark.parametrize(
    "arch, heads, kv_heads, extra",
    [
        ("qwen2", 64, 32, {}),
        ("qwen3", 64, 32, {}),
        ("mistral", 16, 8, {"sliding_window": None}),
        ("llama", 16, 16, {}),
    ],
)
def test_an_absent_kv_head_count_is_the_config_classs_default(
    tmp_path, arch, heads, kv_heads, extra
):
    # transformers fills an absent num_key_value_heads with its class default (Qwen2 and Qwen3
    # 32, Mistral 8, Llama one per head); r1jax read one per head and refused the weights.
    model = _hf_model(
        arch, num_attention_heads=heads, num_key_value_heads=kv_heads, head_dim=4, **extra
    )
    reference = _saved_without(model, tmp_path, "num_key_value_heads")
    assert reference.config.num_key_value_heads == kv_heads
    cfg, params = hf_io.load_hf(tmp_path)
    assert cfg.n_kv_heads == kv_heads
    tokens = _tokens()
    diff = np.abs(np.asarray(_forward(cfg, params, tokens)) - _hf_logits(reference, tokens)).max()
    assert diff <= 1e-4, f"max |logit diff| {diff}"


def test_a_save_cut_short_is_no_model_until_saved_again(tmp_path, monkeypatch):
    cfg = SAVE_CASES["qwen2-tied"][0]
    old, new = _our_model(cfg, seed=0), _our_model(cfg, seed=1)
    hf_io.save_hf(tmp_path, cfg, old)
    real_save, calls = safetensors_numpy.save_file, []

    def save_then_fail(*args, **kwargs):  # the second shard's write fails (a kill, a full disk)
        calls.append(args[1])
        if len(calls) == 2:
            raise OSError("No space left on device")
        return real_save(*args, **kwargs)

    monkeypatch.setattr(safetensors_numpy, "save_file", save_then_fail)
    with pytest.raises(OSError, match="No space left"):
        hf_io.save_hf(tmp_path, cfg, new, max_shard_bytes=20_000)
    monkeypatch.setattr(safetensors_numpy, "save_file", real_save)
    assert not (tmp_path / "config.json").exists()
    assert not list(tmp_path.glob("*.tmp*"))  # no temporary file left behind
    with pytest.raises(FileNotFoundError, match="no config.json"):
        hf_io.load_hf(tmp_path)
    with pytest.raises((OSError, ValueError), match="config.json"):  # transformers refuses too
        transformers.AutoModelForCausalLM.from_pretrained(tmp_path)
    (tmp_path / "model-00001-of-00002.safetensors.tmp4242").write_bytes(b"cut")  # a SIGKILL's
    hf_io.save_hf(tmp_path, cfg, new, max_shard_bytes=20_000)
    assert not list(tmp_path.glob("*.tmp*"))
    cfg2, params2 = hf_io.load_hf(tmp_path)
    assert cfg2 == cfg
    jax.tree.map(np.testing.assert_array_equal, new, params2)
