"""What a network costs: per-layer FLOPs, parameters and activations, and the totals budgets
are stated in."""
