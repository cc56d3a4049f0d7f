"""stiv_jax: STIV text- and image-conditioned video diffusion transformers in JAX/Flax.

Layers, lower to higher (lower never import higher):
  parallel/ -> model/, encoders/ -> diffusion/ -> data/ -> training/, checkpointing/ -> train.py, sample.py
"""

__version__ = "0.1.0"
