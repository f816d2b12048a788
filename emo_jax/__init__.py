"""emo_jax: Earth Mover Distance Optimization (EMO, ICLR 2024) for causal LMs in JAX/Flax."""

from emo_jax import losses

__all__ = ["losses"]
__version__ = "0.1.0"
