"""Differentiable mixed-precision search. `python search.py --help` lists the options."""

from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="search")
def main(cfg: DictConfig) -> float | None:
    # Imported here, after Hydra has parsed the command line: --help answers at once.
    from edmips.core.cli import one_line_errors
    from edmips.core.rundir import checkpoint_path
    from edmips.programs.search import search

    with one_line_errors():
        result = search(cfg)
    # The last line: the run's directory (with resume=, the resumed run's).
    resumed = cfg.get("resume")
    out = checkpoint_path(Path(str(resumed))).parents[1] if resumed else cfg.output_dir
    print(f"results in {out}")
    return result["val_acc"]


if __name__ == "__main__":
    import sys

    from edmips.programs.command_line import check_command_line

    check_command_line("search", sys.argv[1:])
    main()
