"""Retrain a found architecture (or a uniform baseline) and export it to integer-only inference."""

from pathlib import Path

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="retrain")
def main(cfg: DictConfig) -> float | None:
    # Imported here, after Hydra has parsed the command line: --help answers at once.
    from edmips.core.cli import one_line_errors
    from edmips.core.rundir import checkpoint_path
    from edmips.programs.retrain import retrain

    with one_line_errors():
        result = retrain(cfg)
    # The last line: the run's directory (with resume=, the resumed run's).
    resumed = cfg.get("resume")
    out = checkpoint_path(Path(str(resumed))).parents[1] if resumed else cfg.output_dir
    print(f"results in {out}")
    return result.get("test_acc")


if __name__ == "__main__":
    import sys

    from edmips.programs.command_line import check_command_line

    check_command_line("retrain", sys.argv[1:])
    main()
