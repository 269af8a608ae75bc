"""The residual study: the grid (spec), how its cells run (execution), and its report."""
