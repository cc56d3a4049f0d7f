"""Train state, optimizer, train step and metrics."""
