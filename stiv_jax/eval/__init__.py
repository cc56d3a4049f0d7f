"""Evaluation: Fréchet Video Distance on Kinetics-400 I3D features, the VBench sampling harness."""
