"""The STIV spatio-temporal diffusion transformer (Flax Linen, logically partitioned)."""
