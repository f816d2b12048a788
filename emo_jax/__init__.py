"""emo_jax: Earth Mover Distance Optimization (EMO, ICLR 2024) for causal LMs in JAX/Flax.

``emo_jax.losses`` holds the per-token objectives (CE, DEMD, EMO, MixCE, TaiLr) and
``emo_jax.fused_losses`` their memory-efficient versions computed from hidden states; the
model, data and training modules are imported explicitly (``emo_jax.train`` etc.).
"""

from emo_jax import fused_losses, losses

__all__ = ["fused_losses", "losses"]
__version__ = "0.1.0"
