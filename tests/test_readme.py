"""Every code block of README.md runs, as a reader would run it, top to bottom, in one fresh
directory (search.py, retrain.py, ptq.py and conf/ linked in, so `python search.py` and the
`outputs/` paths of the blocks work as they read).

The conventions (README.md states the short settings; the rest is here):
- A block that cannot run here is marked on the line before it: `<!-- not run: <reason> -->`.
  Every other block runs, and `test_every_unmarked_block_ran` checks that each one did.
- bash blocks run under `bash -euo pipefail`. `pip install ... &&` is taken as done (the tests
  run from this tree's install: `test_the_install_is_this_tree`), and the line that installs
  and runs the tests must be .ci/run's own command (run by CI, not from inside the suite).
  Every `python search.py|retrain.py|ptq.py` gets the README's "Make it short" settings of its
  program right after its name (the README's own settings follow them and win), and its output
  goes to a log of its own: its last line must be `results in <dir>`, a directory it wrote.
- python blocks run in a fresh interpreter each. A block that starts with `# edmips/<path>.py`
  is that module: it is run as that module, in place of the file, and its package's registry
  must then load with it. A yaml block `# conf/quant/<name>.yaml` is a quantizer family: it is
  built, with the module block before it, into a searched network that runs and lowers to the
  integer graph.
"""

import os
import re
import subprocess
import sys
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest

# The blocks run in order in one directory, and the last test reads what the others recorded:
# one worker runs them all.
pytestmark = pytest.mark.xdist_group("readme")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PROGRAMS = ("search.py", "retrain.py", "ptq.py")
FENCE = re.compile(r"^( *)```(\w*)\n(.*?)^\1```$", re.S | re.M)
NOT_RUN = re.compile(r"^<!-- not run: (\S.*?) -->$")
RESULTS = re.compile(r"^results in (\S.*)$")


@dataclass
class Block:
    line: int
    lang: str
    code: str
    not_run: str | None  # the reason, where marked

    @property
    def id(self) -> str:
        return f"README.md:{self.line}:{self.lang or 'text'}"


def readme_blocks() -> list[Block]:
    text = README.read_text()
    found = []
    for m in FENCE.finditer(text):
        before = text[: m.start()].rstrip("\n").rsplit("\n", 1)[-1].strip()
        marked = NOT_RUN.match(before)
        code = textwrap.dedent(m.group(3))
        line = text.count("\n", 0, m.start()) + 1
        found.append(Block(line, m.group(2), code, marked.group(1) if marked else None))
    return found


def short_settings() -> dict[str, list[str]]:
    """The README's "Make it short" table: program -> its overrides."""
    row = re.compile(r"^\| (search\.py|retrain\.py|ptq\.py) \| `([^`]+)` \|$", re.M)
    rows = row.findall(README.read_text())
    return {program: settings.split() for program, settings in rows}


def ci_command() -> str:
    """The command .ci/run runs: its last line."""
    lines = [x.strip() for x in (ROOT / ".ci" / "run").read_text().splitlines()]
    return [x for x in lines if x and not x.startswith("#")][-1]


BLOCKS = readme_blocks()
RUN = [b for b in BLOCKS if b.not_run is None]
ran: set[str] = set()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    """Where the reader stands: a fresh directory with the entry points and conf/ linked in."""
    folder = tmp_path_factory.mktemp("reader")
    for name in (*PROGRAMS, "conf"):
        (folder / name).symlink_to(ROOT / name)
    return folder


def shell_script(code: str, logs: Path) -> tuple[str, list[tuple[str, Path]]]:
    """The block as it runs here (module docstring); the program runs and their logs."""
    short, runs, out = short_settings(), [], []
    code = code.replace("\\\n", " ")  # continued lines as one
    for line in code.splitlines():
        command = re.sub(r"\s+#.*$", "", line).strip()
        if command.startswith("pip install") and "python -m pytest" in command:
            assert command == ci_command(), f"the test command differs from .ci/run's: {line}"
            out.append(": the tests, as .ci/run runs them")
            continue
        command = re.sub(r"^pip install [^&]+&&\s*", "", command)
        assert not command.startswith("pip "), f"a pip command other than an install: {line}"
        program = re.match(r"^python (search\.py|retrain\.py|ptq\.py)\b(.*)$", command)
        if program:
            name, args = program.groups()
            log = logs / f"{len(list(logs.iterdir())) + len(runs)}-{name}.log"
            runs.append((name, log))
            command = f"python {name} {' '.join(short[name])}{args} > {log} 2>&1"
        out.append(command)
    return "\n".join(out), runs


def run_shell(block: Block, workdir: Path) -> None:
    logs = workdir / ".readme-logs"
    logs.mkdir(exist_ok=True)
    script, runs = shell_script(block.code, logs)
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    env.pop("HYDRA_FULL_ERROR", None)
    done = subprocess.run(
        ["bash", "-euo", "pipefail", "-c", script],
        cwd=workdir,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    tails = "\n".join(f"--- {log.name}:\n{_tail(log)}" for _, log in runs if log.exists())
    assert done.returncode == 0, f"{block.id} failed:\n{script}\n{done.stderr}\n{tails}"
    for name, log in runs:
        lines = [x for x in log.read_text().splitlines() if x.strip()]
        last = RESULTS.match(lines[-1]) if lines else None
        assert last, f"{block.id}: {name}'s last line is not `results in <dir>`:\n{_tail(log)}"
        out = workdir / last.group(1)
        assert out.is_dir() and (out / ".hydra").is_dir(), f"{name}: {out} is not its run"
        result = "found.json" if name == "search.py" else "metrics.json"
        assert (out / result).is_file(), f"{name}: {out} holds no {result}"


def _tail(log: Path) -> str:
    return "\n".join(log.read_text().splitlines()[-15:])


DRIVER = """
import importlib, sys, types
from edmips import import_submodules
path, module_name, family = sys.argv[1], sys.argv[2], sys.argv[3]
code = compile(open(path).read(), path, "exec")
if not module_name:
    exec(code, {"__name__": "__main__"})
    sys.exit()
module = types.ModuleType(module_name)
module.__file__ = path
sys.modules[module_name] = module  # in place of the file: the registry imports this one
exec(code, module.__dict__)
package, _, leaf = module_name.rpartition(".")
setattr(importlib.import_module(package), leaf, module)
import_submodules(package)  # the package's registry loads with the block in it
if family:
    import torch
    from omegaconf import OmegaConf
    from edmips.export import lower
    from edmips.models import create_model
    from edmips.nn import default_searched, to_fixed, to_search
    from edmips.quant import Family, calibration
    fam = Family.from_spec(OmegaConf.load(family))
    model = create_model("resnet_tiny", num_classes=10, mean=(0.5,) * 3, std=(0.25,) * 3)
    names = default_searched(model)
    to_search(model, names, (2, 3), (2, 3), family=fam)
    model.train()(torch.rand(4, 3, 16, 16))  # the composite runs the family's mix
    to_fixed(model, {n: (2, 2) for n in names})
    with torch.no_grad(), calibration(model.eval()):
        model(torch.rand(8, 3, 16, 16))
    lower(model, (3, 16, 16))
    print("family", fam)
"""


def run_python(block: Block, workdir: Path, family: Path | None = None) -> None:
    first = block.code.splitlines()[0]
    module = re.match(r"^# (edmips/[\w/]+)\.py\b", first)
    name = module.group(1).replace("/", ".") if module else ""
    path = workdir / f"block-{block.line}.py"
    path.write_text(block.code)
    done = subprocess.run(
        [sys.executable, "-c", DRIVER, str(path), name, str(family or "")],
        cwd=workdir,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, f"{block.id} failed:\n{done.stdout}\n{done.stderr}"


@pytest.mark.slow
@pytest.mark.parametrize("block", RUN, ids=lambda b: b.id)
def test_a_readme_block_runs(block: Block, workdir: Path):
    if block.lang == "bash":
        run_shell(block, workdir)
    elif block.lang == "python":
        run_python(block, workdir)
    elif block.lang == "yaml" and block.code.startswith("# conf/quant/"):
        before = BLOCKS[BLOCKS.index(block) - 1]
        assert before.lang == "python", f"{block.id}: no quantizer module before the family"
        family = workdir / f"family-{block.line}.yaml"
        family.write_text(block.code)
        run_python(before, workdir, family)
    else:
        pytest.fail(f"{block.id}: no way to run a {block.lang or 'plain'} block: mark it not run")
    ran.add(block.id)


@pytest.mark.slow
def test_every_unmarked_block_ran():
    """After the blocks' runs (this test comes after them in the file): none was skipped,
    deselected or failed, and the README has blocks of every kind that runs."""
    assert {b.lang for b in RUN} >= {"bash", "python", "yaml"}
    missing = [b.id for b in RUN if b.id not in ran]
    assert not missing, f"README blocks that did not run: {missing}"


def test_the_readme_blocks_are_marked_or_runnable():
    """A mark gives its reason; an unmarked block is one this test knows how to run; the top of
    the README is the two install commands; every program has its short settings."""
    assert BLOCKS[0].not_run is None and BLOCKS[0].lang == "bash"
    top = [re.sub(r"\s+#.*$", "", x) for x in BLOCKS[0].code.splitlines()]
    assert top == ["pip install -e . && python search.py", ci_command()]
    assert all(b.lang in ("bash", "python", "yaml") for b in RUN)
    assert set(short_settings()) == set(PROGRAMS)
    text = README.read_text()
    marks = re.findall(r"<!-- not run:", text)
    assert len(marks) == len(BLOCKS) - len(RUN), "a `not run` mark that is not before a block"


def test_the_install_is_this_tree():
    """Why the test may take `pip install -e .` as done: the package it imports is this tree."""
    import edmips

    assert Path(edmips.__file__).resolve().parent == ROOT / "edmips"


def test_the_shell_rewrite_adds_the_short_settings_and_logs(tmp_path):
    script, runs = shell_script(
        'pip install -e . && python search.py  # the demo\npip install -e ".[test]" && '
        "python -m pytest\nls\npython retrain.py arch=float \\\n    trainer.max_epochs=3\n",
        tmp_path,
    )
    lines = script.splitlines()
    short = short_settings()
    assert lines[0].startswith(f"python search.py {' '.join(short['search.py'])} > ")
    assert lines[1].startswith(":") and lines[2] == "ls"
    words = [*short["retrain.py"], "arch=float", "trainer.max_epochs=3", ">"]
    assert lines[3].split()[:2] == ["python", "retrain.py"] and lines[3].split()[2:-2] == words
    assert [name for name, _ in runs] == ["search.py", "retrain.py"]
    with pytest.raises(AssertionError, match="differs from .ci/run"):
        shell_script('pip install -e ".[test]" && python -m pytest tests/x.py', tmp_path)
