"""Sampling videos from a trained model."""
