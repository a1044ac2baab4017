"""Differentiable mixed-precision search. `python search.py --help` lists the options."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="search")
def main(cfg: DictConfig) -> float | None:
    # Imported here, after Hydra has parsed the command line: --help answers at once.
    from edmips.core.cli import one_line_errors
    from edmips.programs.search import search

    with one_line_errors():
        return search(cfg)["val_acc"]


if __name__ == "__main__":
    main()
