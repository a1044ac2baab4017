"""The differentiable search: SearchModule, discretization, budget control."""
