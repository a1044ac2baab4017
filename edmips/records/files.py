"""Writing an output file or folder so that a reader never sees half of it, and creating the
folders outputs go into: every program and tool creates them through `make_dir`, so a path
through a file, or one it may not create, is one line naming it (not a traceback)."""

import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path

import torch


def write_text_atomic(path: str | Path, text: str) -> Path:
    """Write `text` to `path` atomically (see write_file_atomic)."""
    return write_file_atomic(path, lambda tmp: tmp.write_text(text))


def save_state_dict_atomic(state: dict, path: str | Path) -> Path:
    """torch.save a state dict to `path` atomically (see write_file_atomic)."""
    return write_file_atomic(path, lambda tmp: torch.save(state, tmp))


def write_file_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` writes a temporary file beside `path`, which is then renamed into place. The
    file gets the mode every other output has (0666 less the umask), not mkstemp's 0600."""
    path = check_dir(path)
    make_dir(path.parent)
    fd, name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    tmp = Path(name)
    try:
        os.chmod(tmp, 0o666 & ~_umask())
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def write_dir_atomic(path: str | Path, write: Callable[[Path], object]) -> Path:
    """`write(tmp)` fills a temporary folder beside `path`, which then replaces `path`. The folder
    gets the mode every other output has (0777 less the umask), not mkdtemp's 0700."""
    path = check_dir(path)
    make_dir(path.parent)
    tmp = Path(tempfile.mkdtemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp"))
    try:
        os.chmod(tmp, 0o777 & ~_umask())
        write(tmp)
        if path.exists():
            shutil.rmtree(path)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return path


def check_dir(path: str | Path) -> Path:
    """`path` (a file or folder to write) can be created: the nearest of its parents that
    exists is a folder."""
    path = Path(path)
    for there in path.parents:
        if there.exists():
            if not there.is_dir():
                raise ValueError(f"{path}: {there} is a file, not a directory")
            break
    return path


def check_folder(path: str | Path) -> Path:
    """`path` is a folder, or can be created as one (see check_dir)."""
    path = check_dir(path)
    if path.exists() and not path.is_dir():
        raise ValueError(f"{path} is a file, not a directory")
    return path


def make_dir(path: str | Path) -> Path:
    """Create the folder `path` and its parents (see check_folder)."""
    path = check_folder(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # permission denied, read-only file system, ...
        raise ValueError(f"{path}: cannot create it ({e.strerror})") from None
    return path


def _umask() -> int:
    mask = os.umask(0)  # the only way to read it; set back at once
    os.umask(mask)
    return mask
