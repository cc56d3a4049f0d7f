"""Orbax checkpoints of the train state, data-iterator state and config."""
