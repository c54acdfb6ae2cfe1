"""Pre-optimized branching-point tables and the command that rebuilds them."""
