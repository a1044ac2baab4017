"""What a network costs: per-layer FLOPs, parameters and activations (layers), and the cost
models budgets are stated in (model: the protocol and its registry; one module per cost)."""
