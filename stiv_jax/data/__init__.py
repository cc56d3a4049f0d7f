"""Video I/O, the clip record schema, the shard builder and the grain training pipeline."""
