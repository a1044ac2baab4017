"""Differentiable mixed-precision search. `python search.py --help` lists the options."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="search")
def main(cfg: DictConfig) -> float:
    from edmips.search.run import search  # after Hydra has parsed the command line: fast --help

    return search(cfg)["val_acc"]


if __name__ == "__main__":
    main()
