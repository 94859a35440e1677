"""musiclm-jax: MusicLM (text -> music) in JAX/Flax, TPU-native."""

__version__ = "0.1.0"
