"""Value head (PPO critic) and scalar reward head on top of the decoder's hidden states.

B batch, T time, D model.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from r1jax import sharding


class ValueHead(nn.Module):
    """Dense D -> 1 with logical axes ("embed", None)."""

    d_model: int
    param_dtype: str = "float32"

    @nn.compact
    def __call__(self, h_BxTxD):
        # Fan-in scaled init keeps initial values O(1) whatever the width (as OpenRLHF's critic).
        init = nn.initializers.normal(1.0 / (self.d_model + 1) ** 0.5)
        kernel = self.param(
            "kernel",
            nn.with_logical_partitioning(init, ("embed", None)),
            (self.d_model, 1),
            jnp.dtype(self.param_dtype),
        )
        bias = self.param(
            "bias",
            nn.with_logical_partitioning(nn.initializers.zeros, (None,)),
            (1,),
            jnp.dtype(self.param_dtype),
        )
        # Rows in the batch layout and the D floats of the kernel whole on every device: left to
        # the partitioner, the product's D was split over tensor, with collectives of [B, T]
        # partial values every micro-batch.
        h_BxTxD = sharding.constrain(h_BxTxD.astype(jnp.float32), ("batch", None, None))
        kernel = sharding.constrain(kernel.astype(jnp.float32), (None, None))
        v_BxTx1 = jnp.einsum("btd,do->bto", h_BxTxD, kernel)
        return (v_BxTx1 + bias.astype(jnp.float32)[None, None])[..., 0]


def _module(cfg) -> ValueHead:
    return ValueHead(cfg.d_model, cfg.param_dtype)


def init_value_head(cfg, rng: jax.Array) -> dict:
    """Random value-head params (plain pytree: kernel [D, 1], bias [1])."""
    h = jnp.zeros((1, 1, cfg.d_model), jnp.float32)
    return nn.meta.unbox(_module(cfg).init(rng, h)["params"])


def value_head_logical_axes(cfg) -> dict:
    """PartitionSpecs of logical axis names for the value-head params."""
    init = lambda r: _module(cfg).init(r, jnp.zeros((1, 1, cfg.d_model), jnp.float32))
    boxed = jax.eval_shape(init, jax.random.key(0))
    return nn.get_partition_spec(boxed)["params"]


def values(cfg, head_params, h_BxTxD: jax.Array) -> jax.Array:
    """Per-token values [B, T] in float32."""
    if h_BxTxD.ndim != 3 or h_BxTxD.shape[-1] != cfg.d_model:
        raise ValueError(f"h_BxTxD must be [B, T, {cfg.d_model}], got {h_BxTxD.shape}")
    return _module(cfg).apply({"params": head_params}, h_BxTxD)


def last_token_scores(cfg, head_params, h_BxTxD: jax.Array, mask_BxT: jax.Array) -> jax.Array:
    """Reward-model score [B]: the value at each row's last non-pad token (mask true)."""
    if mask_BxT.shape != h_BxTxD.shape[:2]:
        raise ValueError(f"mask_BxT {mask_BxT.shape} does not match h_BxTxD {h_BxTxD.shape}")
    v_BxT = values(cfg, head_params, h_BxTxD)
    t = mask_BxT.shape[1]
    # Rows without any real token fall back to position 0 rather than failing inside jit.
    last_B = jnp.max(jnp.where(mask_BxT.astype(bool), jnp.arange(t)[None, :], 0), axis=-1)
    return jnp.take_along_axis(v_BxT, last_B[:, None], axis=-1)[:, 0]
