"""The entry points as a user runs them: bad input ends with one line and status 1."""

import json
import subprocess
import sys

import pytest
from conftest import ROOT


def _run(script, *args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / script), *args, f"hydra.run.dir={cwd}/run"],
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "script,args,message",
    [
        ("retrain.py", ["arch=missing.json"], "missing.json: no such file"),
        ("search.py", ["data=cifar10", "data.path=nowhere"], "nowhere not found"),
        ("search.py", ["space.abits=[2,7,9]"], "unsupported bit-width 9"),
        ("search.py", ["mu=abc"], "mu must be a number, got 'abc'"),
        ("retrain.py", [], "arch is required"),
        ("ptq.py", ["arch=uniform"], "model.weights is required"),
    ],
)
def test_bad_input_ends_with_one_line(tmp_path, script, args, message):
    done = _run(script, *args, "model=resnet_tiny", cwd=tmp_path)
    assert done.returncode == 1
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and message in last
    assert "Traceback" not in done.stderr


def test_a_malformed_arch_file_is_named(tmp_path):
    (tmp_path / "found.json").write_text(json.dumps({"schema": 1, "model": "resnet8"}))
    done = _run("retrain.py", "arch=found.json", cwd=tmp_path)
    assert done.returncode == 1
    assert done.stderr.strip().splitlines()[-1].endswith("found.json: missing 'space'")


@pytest.mark.parametrize(
    "script,knobs",
    [
        ("search.py", ["mu=", "target_bits=", "space.wbits=", "search.discretize=", "resume="]),
        ("retrain.py", ["arch=", "arch=uniform", "experiment=", "resume="]),
        ("ptq.py", ["model.weights=", "arch=uniform", "ptq.activation_clip=", "calibration."]),
    ],
)
def test_help_opens_with_what_the_command_does_and_its_knobs(script, knobs):
    done = subprocess.run(
        [sys.executable, str(ROOT / script), "--help"], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0 and done.stdout.startswith(f"{script}: ")
    head = done.stdout.split("== Configuration groups ==")[0]
    assert all(knob in head for knob in knobs)


def _tool(*args):
    return subprocess.run(
        [sys.executable, "-m", "edmips", *args],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_the_tools_are_verbs_of_one_program():
    listing = _tool("--help")
    assert listing.returncode == 0
    assert all(verb in listing.stdout for verb in ("rediscretize", "export", "report"))
    for verb in ("rediscretize", "export", "report"):
        done = _tool(verb, "--help")
        assert done.returncode == 0 and f"python -m edmips {verb}" in done.stdout
    unknown = _tool("arch")
    assert unknown.returncode == 2
    assert unknown.stderr.strip() == (
        "error: unknown verb 'arch': choose from rediscretize, export, report"
    )


@pytest.mark.parametrize(
    "script,args,key",
    [
        ("search.py", ["hydra.run.dir={file}/run"], "hydra.run.dir"),
        ("retrain.py", ["-m", "arch=uniform", "hydra.sweep.dir={file}/sweep"], "hydra.sweep.dir"),
    ],
)
def test_a_run_dir_through_a_file_is_one_line_before_hydra_creates_it(tmp_path, script, args, key):
    file = tmp_path / "file"
    file.write_text("x")
    done = subprocess.run(
        [sys.executable, str(ROOT / script), *[a.format(file=file) for a in args]],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 1 and "Traceback" not in done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: {key}: {file}/{args[-1].rsplit('/', 1)[1]}: {file} is a file, not a directory"
    ]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"]
