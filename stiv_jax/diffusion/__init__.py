"""Flow matching (t = 0 noise, t = 1 data), conditioning masks and ODE/SDE samplers."""
