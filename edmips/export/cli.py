"""Export a retrained checkpoint: the integer bundle and its two ONNX models (QONNX, and
standard ops for onnxruntime), for edmips's ResNets and converted models (tv_mobilenet_v2) alike.

    python -m edmips export <retrain run dir or .ckpt> [--out DIR]

retrain.py stores in its checkpoints what rebuilds the network (the arch, the number of
classes, the data statistics and input size), so the checkpoint alone is enough. Without
--out it writes into a new folder `export/`: in the run dir given, or beside the checkpoint
file given (never into a run's own files). The folder written into, --out or `export/`, is
new or empty: one that holds anything is refused, never written over.
"""

import argparse
import logging
from pathlib import Path

from edmips.core import rundir
from edmips.core.cli import one_line_errors
from edmips.export import export
from edmips.models import create_model
from edmips.models.weights import network_state
from edmips.nn import to_fixed
from edmips.nn.convert import fixed_ends
from edmips.nn.fold import fold_batch_norms
from edmips.quant import FULL_PRECISION
from edmips.quant.registry import Family
from edmips.records import arch as arch_file
from edmips.records.files import check_folder, make_dir

DEFAULT_OUT = "export"


def load_retrained(source: Path):
    """The trained fixed-bit network of a retrain run dir or checkpoint, and its input size."""
    checkpoint = rundir.checkpoint_path(source)
    ckpt = rundir.load_checkpoint(checkpoint)
    spec = ckpt.get("edmips_network")
    if spec is None:
        raise ValueError(f"{checkpoint}: not a retrain checkpoint (no network description)")
    found = arch_file.from_dict(spec["arch"], source=str(checkpoint))
    if all(layer.wbits >= FULL_PRECISION for layer in found.layers):
        raise ValueError(f"{checkpoint}: the float network (arch=float): nothing to export")
    model = create_model(
        found.model, num_classes=spec["num_classes"], mean=spec["mean"], std=spec["std"]
    )
    # The family the run was built with (checkpoints from before families: edmips's).
    to_fixed(model, {**fixed_ends(model), **found.bits()}, Family(**spec.get("quant", {})))
    if spec.get("bn_fold"):
        fold_batch_norms(model)
    state = network_state(ckpt["state_dict"])
    rundir.check_weights(model.state_dict(), state, checkpoint)
    model.load_state_dict(state)
    return model, tuple(spec["input_size"])


def main(argv=None) -> list[Path]:
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    parser = argparse.ArgumentParser(
        prog="python -m edmips export",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", type=Path, help="a retrain run dir or a checkpoint file")
    parser.add_argument(
        "--out", type=Path, help="default: export/ in the run dir, or beside the checkpoint"
    )
    args = parser.parse_args(argv)
    with one_line_errors():
        out = check_empty(args.out or default_out(args.source))  # before reading anything
        model, input_size = load_retrained(args.source)
        paths = export(model, input_size, make_dir(out))
    for path in paths:
        print(path)
    return paths


def default_out(source: Path) -> Path:
    """export/ in the run dir, or beside the checkpoint file."""
    return (source if source.is_dir() else source.parent) / DEFAULT_OUT


def check_empty(out: Path) -> Path:
    """The folder to export into: new or empty (the user's files, or a run's, are not ours to
    replace: the export writes model.onnx over a file and replaces a whole integer/ folder)."""
    out = check_folder(out)
    if out.is_dir() and any(out.iterdir()):
        raise ValueError(f"{out} holds files already: remove them or choose another --out")
    return out
