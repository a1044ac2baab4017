"""Quantize a float network after training (ACIQ clipping) and export it to integer-only
inference."""

import hydra
from omegaconf import DictConfig


@hydra.main(version_base="1.3", config_path="conf", config_name="ptq")
def main(cfg: DictConfig) -> float | None:
    # Imported here, after Hydra has parsed the command line: --help answers at once.
    from edmips.core.cli import one_line_errors
    from edmips.programs.ptq import ptq

    with one_line_errors():
        result = ptq(cfg)
    print(f"results in {cfg.output_dir}")  # the last line: the run's directory
    return result.get("test_acc")


if __name__ == "__main__":
    import sys

    from edmips.programs.command_line import check_command_line

    check_command_line("ptq", sys.argv[1:])
    main()
