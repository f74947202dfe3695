"""Stage 2: teacher attention -> pixel pseudo-labels, refinement, the enhancer, and WSSS."""
