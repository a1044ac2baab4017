"""The entry points as a user runs them: bad input ends with one line and status 1.

One case per entry point runs as a real process: the interpreter, its command line, its exit
status and what reaches stderr. The other cases run the same script in this process, as
`python script.py` runs it (runpy, `__name__ == "__main__"`, Hydra's command line included):
there the one line is the message of the SystemExit that ends it, which the interpreter prints
to stderr with status 1 (the real processes show that), and nothing else reaches stderr.
"""

import json
import logging
import runpy
import subprocess
import sys

import pytest
from conftest import ROOT
from hydra.core.global_hydra import GlobalHydra

import edmips.__main__


def _run(script, *args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args, f"hydra.run.dir={cwd}/run"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.fixture
def in_process(monkeypatch, capsys):
    """Run an entry point script in this process: (exit status, stdout, stderr, SystemExit's
    code). Logging as Hydra configures it for a run ends with the call."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level

    def call(script, *args, cwd=None):
        if cwd is not None:
            monkeypatch.chdir(cwd)
        monkeypatch.setattr(sys, "argv", [str(ROOT / script), *args])
        GlobalHydra.instance().clear()
        capsys.readouterr()
        with pytest.raises(SystemExit) as e:
            runpy.run_path(str(ROOT / script), run_name="__main__")
        out, err = capsys.readouterr()
        code = e.value.code
        status = code if isinstance(code, int) else int(code is not None)
        return status, out, err, code

    yield call
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)


BAD_INPUT = [
    ("retrain.py", ["arch=missing.json"], "missing.json: no such file"),
    ("search.py", ["data=cifar10", "data.path=nowhere"], "nowhere not found"),
    ("search.py", ["space.abits=[2,7,9]"], "unsupported bit-width 9"),
    ("search.py", ["mu=abc"], "mu must be a number, got 'abc'"),
    ("retrain.py", [], "arch is required"),
    ("ptq.py", ["arch=uniform"], "model.weights is required"),
    # a misspelled key: the closest known one, never Hydra's hint "+target_bit=2"
    (
        "search.py",
        ["target_bit=2"],
        "target_bit is not a setting of search.py: did you mean target_bits?",
    ),
    (
        "search.py",
        ["+target_bit=2"],
        "target_bit is not a setting of search.py: did you mean target_bits?",
    ),
    ("search.py", ["search.warmup_epoch=1"], "did you mean search.warmup_epochs?"),
    (
        "retrain.py",
        ["arch=uniform", "wbit=2"],
        "wbit is not a setting of retrain.py: did you mean wbits?",
    ),
    ("ptq.py", ["arch=uniform", "+calibration_images=8"], "did you mean calibration.images?"),
    # added under a node that builds nothing: read by nothing
    ("search.py", ["+search.warmup=1"], "did you mean search.warmup_epochs?"),
    (
        "retrain.py",
        ["logger=banana"],
        "logger=banana: no such logger; choose from csv, tensorboard",
    ),
]
# One case per script as a real process; every case in this process.
AS_A_PROCESS = [BAD_INPUT[0], BAD_INPUT[3], BAD_INPUT[5]]


@pytest.mark.parametrize("script,args,message", AS_A_PROCESS)
def test_bad_input_ends_with_one_line_and_status_1(tmp_path, script, args, message):
    done = _run(script, *args, "model=resnet_tiny", cwd=tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "Traceback" not in done.stderr


@pytest.mark.parametrize("script,args,message", BAD_INPUT)
def test_bad_input_ends_with_one_line(in_process, tmp_path, script, args, message):
    argv = [*args, "model=resnet_tiny", f"hydra.run.dir={tmp_path}/run"]
    status, _, err, line = in_process(script, *argv, cwd=tmp_path)
    assert status == 1 and isinstance(line, str)
    assert line.startswith("error: ") and message in line and "\n" not in line
    assert "Traceback" not in err


def test_a_malformed_arch_file_is_named(in_process, tmp_path):
    (tmp_path / "found.json").write_text(json.dumps({"schema": 1, "model": "resnet8"}))
    args = ["arch=found.json", f"hydra.run.dir={tmp_path}/run"]
    status, _, err, line = in_process("retrain.py", *args, cwd=tmp_path)
    assert status == 1 and "Traceback" not in err
    assert line.startswith("error: ") and line.endswith("found.json: missing 'space'")


@pytest.mark.parametrize(
    "script,knobs",
    [
        ("search.py", ["mu=", "target_bits=", "space.wbits=", "search.discretize=", "resume="]),
        ("retrain.py", ["arch=", "arch=uniform", "experiment=", "resume="]),
        ("ptq.py", ["model.weights=", "arch=uniform", "ptq.activation_clip=", "calibration."]),
    ],
)
def test_help_opens_with_what_the_command_does_and_its_knobs(in_process, script, knobs):
    status, out, _, _ = in_process(script, "--help")
    assert status == 0 and out.startswith(f"{script}: ")
    head = out.split("== Configuration groups ==")[0]
    assert all(knob in head for knob in knobs)


def test_the_tools_are_one_program_with_its_exit_status():
    done = subprocess.run(
        [sys.executable, "-m", "edmips", "arch"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2
    assert done.stderr.strip() == (
        "error: unknown verb 'arch': choose from rediscretize, export, report"
    )


def test_the_tools_are_verbs_of_one_program(capsys):
    assert edmips.__main__.main(["--help"]) == 0
    listing = capsys.readouterr().out
    assert all(verb in listing for verb in ("rediscretize", "export", "report"))
    for verb in ("rediscretize", "export", "report"):
        with pytest.raises(SystemExit) as e:  # argparse's --help
            edmips.__main__.main([verb, "--help"])
        assert e.value.code == 0 and f"python -m edmips {verb}" in capsys.readouterr().out
    assert edmips.__main__.main(["arch"]) == 2
    assert capsys.readouterr().err.strip() == (
        "error: unknown verb 'arch': choose from rediscretize, export, report"
    )


@pytest.mark.parametrize(
    "script,args,key",
    [
        ("search.py", ["hydra.run.dir={file}/run"], "hydra.run.dir"),
        ("retrain.py", ["-m", "arch=uniform", "hydra.sweep.dir={file}/sweep"], "hydra.sweep.dir"),
    ],
)
def test_a_run_dir_through_a_file_is_one_line_before_hydra_creates_it(
    in_process, tmp_path, script, args, key
):
    file = tmp_path / "file"
    file.write_text("x")
    argv = [a.format(file=file) for a in args]
    status, _, err, line = in_process(script, *argv, cwd=tmp_path)
    assert status == 1 and err == ""
    assert line == (
        f"error: {key}: {file}/{args[-1].rsplit('/', 1)[1]}: {file} is a file, not a directory"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
