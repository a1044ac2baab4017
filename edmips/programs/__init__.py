"""The programs, on top of everything: each builds a run from its config and carries it through
(search, retrain). search.py and retrain.py are their thin Hydra entry points."""
