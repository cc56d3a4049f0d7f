"""Text encoders and latent spaces (pixel space, VAE)."""
