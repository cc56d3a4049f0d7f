"""Text encoders (token embedding, CLIP, T5, BERT) and latent spaces (pixel space, VAE) with public-format loaders."""
