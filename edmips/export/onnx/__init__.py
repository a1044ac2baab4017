"""The ONNX forms of the integer graph, one module each, which all compute the same integers.

A form registers itself: its name, its file, the writer of its model from the integer graph
and, where it has one, a runner (the model under its runtime, a function from a batch of
images in [0, 1] to logits) that the check of an export uses. `forms()` imports every module
of this package on first use, so a new form is a new module here.
"""

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import onnx
from torch import Tensor

from edmips import Registry
from edmips.export.ir import Graph
from edmips.records.files import write_file_atomic


@dataclass(frozen=True)
class Form:
    name: str
    file_name: str
    write: Callable[[Graph], onnx.ModelProto]
    runner: Callable[[Path], Callable[[Tensor], Tensor]] | None = None


_FORMS = Registry("ONNX form", __name__)


def register(form: Form) -> Form:
    return _FORMS.add(form.name, form)


def unregister(name: str) -> None:
    _FORMS.remove(name)


def forms() -> list[Form]:
    """Every registered form, by file name (model.onnx first)."""
    return sorted(_FORMS.members().values(), key=lambda form: form.file_name)


def form(name: str) -> Form:
    return _FORMS.get(name)


def to_onnx(graph: Graph, name: str = "qonnx") -> onnx.ModelProto:
    """The ONNX model of an integer graph in the form `name`."""
    return form(name).write(graph)


def save_onnx(graph: Graph, path: str | Path, name: str = "qonnx") -> Path:
    """Write the graph's ONNX model in the form `name` (checked first) atomically."""
    model = to_onnx(graph, name)
    onnx.checker.check_model(model)
    return write_file_atomic(path, lambda tmp: onnx.save(model, str(tmp)))
