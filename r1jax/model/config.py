"""Model configuration: the frozen, hashable `ModelConfig`, presets and size/FLOP arithmetic."""

import dataclasses

FAMILIES = ("qwen2", "llama", "qwen3")
REMAT_MODES = ("none", "full", "dots")
# unroll_layers=0 ("auto") writes the layers out as straight-line code up to this depth.
AUTO_UNROLL_MAX_LAYERS = 8


ROPE_TYPES = ("llama3", "linear", "yarn")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling, as the Hugging Face rope types of the same names.

    - "llama3" (Llama 3.1): low frequencies divided by `factor`, high ones kept, a smooth ramp
      between (`low_freq_factor`, `high_freq_factor`, `original_max_position`).
    - "linear" (position interpolation): every frequency divided by `factor`.
    - "yarn" (YaRN): frequencies ramped from extrapolated to interpolated (divided by `factor`)
      between the dimensions that turn `beta_fast` and `beta_slow` times over
      `original_max_position` (ramp ends rounded outwards when `truncate`), and cos / sin
      multiplied by `attention_factor` (resolved from `factor` and mscale when loading).
    """

    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position: int | None = None
    rope_type: str = "llama3"
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    attention_factor: float = 1.0
    truncate: bool = True

    def __post_init__(self):
        if self.rope_type not in ROPE_TYPES:
            raise ValueError(
                f"RopeScaling.rope_type must be one of {ROPE_TYPES}, got {self.rope_type!r}"
            )
        if not self.factor > 0:
            raise ValueError(f"RopeScaling.factor must be positive, got {self.factor}")
        needs = {
            "llama3": ("low_freq_factor", "high_freq_factor", "original_max_position"),
            "linear": (),
            "yarn": ("original_max_position",),
        }[self.rope_type]
        missing = [name for name in needs if getattr(self, name) is None]
        if missing:
            raise ValueError(f"RopeScaling of type {self.rope_type!r} needs {', '.join(missing)}")
        if self.rope_type == "llama3" and self.high_freq_factor == self.low_freq_factor:
            raise ValueError(
                "RopeScaling llama3: high_freq_factor must differ from low_freq_factor"
            )
        if self.original_max_position is not None and self.original_max_position <= 0:
            raise ValueError(
                f"RopeScaling.original_max_position must be positive, got "
                f"{self.original_max_position}"
            )


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """Decoder shape and numerics; hashable so jitted functions take it as a static argument."""

    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int
    d_ff: int
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    rms_norm_eps: float = 1e-6
    qkv_bias: bool = False
    # RMSNorm of each query and key head over Dh (own scales, shared by the heads) before RoPE,
    # as Qwen3; set exactly when family is "qwen3".
    qk_norm: bool = False
    tie_embeddings: bool = False
    max_seq_len: int = 2048
    dtype: str = "float32"  # compute dtype; logits are always float32
    param_dtype: str = "float32"
    remat: str = "none"  # "none" | "full" | "dots": rematerialisation of each layer
    family: str = "qwen2"  # "qwen2" | "llama" | "qwen3": the Hugging Face architecture on export
    # Layers per iteration of the layer loop (params stay stacked on a leading "layers" axis
    # either way): 1 = one rolled scan, compile time flat in depth; n_layers = straight-line
    # code, no stacked activations (a 4-layer GRPO update ~10% faster on XLA:CPU); 0 = auto,
    # straight-line up to AUTO_UNROLL_MAX_LAYERS layers, else rolled.
    unroll_layers: int = 0
    # Queries per block of attention over a whole sequence (training, scoring, prefill): the
    # float32 scores held at once are [B, H, block, S] instead of [B, H, T, S], each block
    # recomputed in the backward pass. 0 = the whole sequence in one block.
    attention_chunk: int = 0

    def __post_init__(self):
        shape_fields = ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "head_dim")
        for name in (*shape_fields, "d_ff"):
            if getattr(self, name) <= 0:
                raise ValueError(f"ModelConfig.{name} must be positive, got {getattr(self, name)}")
        if self.vocab_size >= 2**31:  # token ids are int32 everywhere
            raise ValueError(f"ModelConfig.vocab_size must be below 2**31, got {self.vocab_size}")
        if self.n_heads % self.n_kv_heads:
            raise ValueError(
                f"ModelConfig.n_heads ({self.n_heads}) must be a multiple of "
                f"n_kv_heads ({self.n_kv_heads})"
            )
        if self.remat not in REMAT_MODES:
            raise ValueError(f"ModelConfig.remat must be one of {REMAT_MODES}, got {self.remat!r}")
        if self.family not in FAMILIES:
            raise ValueError(f"ModelConfig.family must be one of {FAMILIES}, got {self.family!r}")
        if self.qk_norm != (self.family == "qwen3"):
            # Qwen3 always normalises q and k; Qwen2 and Llama never do, so a model of the
            # other kind would export (and load back) as a different computation.
            raise ValueError(
                f"ModelConfig.qk_norm={self.qk_norm} with family={self.family!r}: q/k norms "
                "are Qwen3's (qk_norm=True exactly when family='qwen3')"
            )
        if self.unroll_layers < 0:
            raise ValueError(
                f"ModelConfig.unroll_layers must be >= 0 (0 = auto), got {self.unroll_layers}"
            )
        if self.attention_chunk < 0:
            raise ValueError(
                f"ModelConfig.attention_chunk must be >= 0 (0 = off), got {self.attention_chunk}"
            )
        if self.head_dim % 2:
            raise ValueError(f"ModelConfig.head_dim must be even for RoPE, got {self.head_dim}")

    @property
    def layer_unroll(self) -> int:
        """The resolved `unroll_layers`: layers per iteration of the layer loop, >= 1."""
        if self.unroll_layers:
            return min(self.unroll_layers, self.n_layers)
        return self.n_layers if self.n_layers <= AUTO_UNROLL_MAX_LAYERS else 1


_LLAMA3_SCALING_8K = dict(low_freq_factor=1.0, high_freq_factor=4.0, original_max_position=8192)

PRESETS: dict[str, ModelConfig] = {
    "tiny": ModelConfig(
        vocab_size=512,
        d_model=64,
        n_layers=2,
        n_heads=4,
        n_kv_heads=2,
        head_dim=16,
        d_ff=128,
        qkv_bias=True,
        tie_embeddings=True,
        max_seq_len=512,
    ),
    "qwen2.5-0.5b": ModelConfig(
        vocab_size=151936,
        d_model=896,
        n_layers=24,
        n_heads=14,
        n_kv_heads=2,
        head_dim=64,
        d_ff=4864,
        rope_theta=1000000.0,
        qkv_bias=True,
        tie_embeddings=True,
        max_seq_len=32768,
        dtype="bfloat16",
    ),
    "qwen2.5-1.5b": ModelConfig(
        vocab_size=151936,
        d_model=1536,
        n_layers=28,
        n_heads=12,
        n_kv_heads=2,
        head_dim=128,
        d_ff=8960,
        rope_theta=1000000.0,
        qkv_bias=True,
        tie_embeddings=True,
        max_seq_len=32768,
        dtype="bfloat16",
    ),
    "qwen2.5-7b": ModelConfig(
        vocab_size=152064,
        d_model=3584,
        n_layers=28,
        n_heads=28,
        n_kv_heads=4,
        head_dim=128,
        d_ff=18944,
        rope_theta=1000000.0,
        qkv_bias=True,
        tie_embeddings=False,
        max_seq_len=131072,
        dtype="bfloat16",
    ),
    "llama3.2-1b": ModelConfig(
        vocab_size=128256,
        d_model=2048,
        n_layers=16,
        n_heads=32,
        n_kv_heads=8,
        head_dim=64,
        d_ff=8192,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=32.0, **_LLAMA3_SCALING_8K),
        rms_norm_eps=1e-5,
        tie_embeddings=True,
        max_seq_len=131072,
        dtype="bfloat16",
        family="llama",
    ),
    "llama3.1-8b": ModelConfig(
        vocab_size=128256,
        d_model=4096,
        n_layers=32,
        n_heads=32,
        n_kv_heads=8,
        head_dim=128,
        d_ff=14336,
        rope_theta=500000.0,
        rope_scaling=RopeScaling(factor=8.0, **_LLAMA3_SCALING_8K),
        rms_norm_eps=1e-5,
        tie_embeddings=False,
        max_seq_len=131072,
        dtype="bfloat16",
        family="llama",
    ),
}


def get_preset(name: str) -> ModelConfig:
    """Returns the preset `ModelConfig` called `name`."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known presets: {sorted(PRESETS)}")
    return PRESETS[name]


def _layer_params(cfg: ModelConfig) -> int:
    d, dh = cfg.d_model, cfg.head_dim
    attn = d * cfg.n_heads * dh * 2 + d * cfg.n_kv_heads * dh * 2
    if cfg.qkv_bias:
        attn += (cfg.n_heads + 2 * cfg.n_kv_heads) * dh
    if cfg.qk_norm:
        attn += 2 * dh
    return attn + 3 * d * cfg.d_ff + 2 * d


def num_params(cfg: ModelConfig) -> int:
    """Total parameter count (embedding counted once when tied)."""
    embed = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    return embed + cfg.n_layers * _layer_params(cfg) + cfg.d_model


def flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Training FLOPs per token: 6 * matmul params (layers + lm head) + 12 * L * H * Dh * seq_len.

    The embedding lookup is not a matmul and is excluded; the lm head (D x V) is included
    whether or not it is tied. The attention term is the PaLM-appendix count (scores and
    weighted values, forward + backward, without the causal halving).
    """
    matmul_params = cfg.n_layers * _layer_params(cfg) + cfg.d_model * cfg.vocab_size
    attention = 12 * cfg.n_layers * cfg.n_heads * cfg.head_dim * seq_len
    return float(6 * matmul_params + attention)


def forward_flops_per_token(cfg: ModelConfig, seq_len: int) -> float:
    """Forward-only FLOPs per token (one third of `flops_per_token`)."""
    return flops_per_token(cfg, seq_len) / 3.0


def decode_bytes_per_step(
    cfg: ModelConfig,
    *,
    rows: int,
    prompts: int,
    prompt_len: float,
    new_len: float,
    param_bytes: int = 4,
    cache_bytes: int = 4,
) -> float:
    """The fewest bytes one decode step of `rows` rows (`rows / prompts` samples of each of
    `prompts` prompts) must read from memory, `new_len` new tokens into their caches: every
    weight once (of the embedding table only the rows' own rows; the lm head whole, tied or
    not), each prompt's K/V once (its samples share it) and each row's K/V of its new tokens.
    Divided by a memory bandwidth it is the step's memory roofline: on an accelerator decoding
    at small batches is bound by these reads rather than by its FLOPs."""
    weights = cfg.n_layers * _layer_params(cfg) + cfg.d_model + cfg.vocab_size * cfg.d_model
    weights += rows * cfg.d_model
    kv_per_slot = 2 * cfg.n_layers * cfg.n_kv_heads * cfg.head_dim
    kv_slots = prompts * prompt_len + rows * new_len
    return float(weights * param_bytes + kv_per_slot * kv_slots * cache_bytes)
