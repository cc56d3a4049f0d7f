"""Text encoders (CLIP, T5, BERT) and latent spaces (VAE) with loaders for public checkpoint formats."""
