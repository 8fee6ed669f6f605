"""Every command-line entry of the workspace answers `--help`, in one argument style.

Discovered, not listed: every module with an `if __name__ == "__main__":` block (or a package
`__main__.py`) under the installed packages and the ROS packages' Python modules. The style:
argparse with `prog="python -m <module>"`, a one-line description, kebab-case flags and every
default shown in the help. Exceptions, named here: `learning.train` is Hydra's entry (its
`--help` is Hydra's, arguments are `key=value` overrides); ROS node executables are configured
by ROS parameters (`--ros-args -p ...`), so their `--help` lists the node's parameter table
(`roboloop_node_common.entry.node_usage`) and starts nothing.

The argparse CLIs run in this one process (`runpy`, SystemExit caught): about 10 s in all, most
of it importing torch and diffusers once.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import re
import runpy
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ["episode_dataset", "roboloop_runtime", "sim", "learning", "bench", "demo"]
HYDRA_ENTRIES = {"learning.train"}
MAIN_GUARD = re.compile(r'^if __name__ == "__main__":', re.MULTILINE)
ROS_NODE = re.compile(r"^\s*(import rclpy|from rclpy|from roboloop_node_common)", re.MULTILINE)


def _module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__main__" else parts)


def discover() -> list[str]:
    """Module names of every CLI (ROS node executables excluded, see the module docstring)."""
    roots = [(REPO / p, REPO) for p in PACKAGES]
    roots += [(d, d.parent) for d in sorted((REPO / "ros2_ws" / "src").glob("*/*")) if d.is_dir()]
    found = set()
    for folder, root in roots:
        for path in folder.rglob("*.py"):
            text = path.read_text()
            if path.name != "__main__.py" and not MAIN_GUARD.search(text):
                continue
            if folder.is_relative_to(REPO / "ros2_ws") and ROS_NODE.search(text):
                continue  # a ROS node executable
            found.add(_module_name(path, root))
    return sorted(found)


CLIS = discover()


def test_discovery_finds_the_known_entries() -> None:
    expected = {
        "bench",
        "demo.loop",
        "episode_dataset",
        "learning.check_reacher",
        "learning.export",
        "learning.namo.evaluate",
        "learning.train",
        "sim.collect",
        "sim.evaluate",
        "roboloop_policy.reference_model",
    }
    assert expected <= set(CLIS), sorted(expected - set(CLIS))
    assert not any(name.endswith((".node", ".q_scorer")) for name in CLIS)


def _parsers(parser: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
    """`parser` and its subcommand parsers."""
    out = [parser]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                out += _parsers(sub)
    return out


def _console_scripts() -> dict[str, str]:
    """module -> console script name from pyproject's [project.scripts] (its usage name)."""
    text = (REPO / "pyproject.toml").read_text()
    section = text.split("[project.scripts]", 1)[1].split("\n[", 1)[0]  # tomllib needs 3.11
    scripts = re.findall(r'^([\w-]+) = "([\w.]+):\w+"', section, re.MULTILINE)
    return {target.removesuffix(".cli"): name for name, target in scripts}


def _style_problems(parser: argparse.ArgumentParser, top: str) -> list[str]:
    problems = []
    names = (f"python -m {top}", _console_scripts().get(top, f"python -m {top}"))
    if not parser.prog.startswith(names):
        problems.append(f"prog {parser.prog!r} is not {names[0]!r}")
    description = (parser.description or "").strip()
    if not description or "\n" in description:
        problems.append(f"{parser.prog}: description is not one line: {description[:60]!r}")
    shows_defaults = issubclass(parser.formatter_class, argparse.ArgumentDefaultsHelpFormatter)
    shown_help = parser.format_help()
    if "(default: None)" in shown_help:  # the help says what unset means instead
        problems.append(f"{parser.prog}: --help shows '(default: None)'")
    if "(default: True)" in shown_help or "(default: False)" in shown_help:  # flags
        problems.append(f"{parser.prog}: --help shows a flag's default")
    for action in parser._actions:
        for flag in action.option_strings:
            if flag.startswith("--") and "_" in flag:
                problems.append(f"{parser.prog}: flag {flag} is not kebab-case")
        flag = action.nargs == 0  # store_true/false: given or not, no default to show
        has_default = not (action.default is None or action.default is False or flag) and (
            action.default != argparse.SUPPRESS
        )
        hidden = action.help == argparse.SUPPRESS or isinstance(action, argparse._HelpAction)
        # argparse prints "(default: ...)" only on an argument that has a help text.
        shown = action.help and (shows_defaults or "default" in action.help.lower())
        if has_default and not hidden and not shown:
            problems.append(f"{parser.prog}: the default of {action.dest} is not shown")
    return problems


def _run_help(module: str) -> tuple[str, list[argparse.ArgumentParser]]:
    """Run `python -m module --help` in this process: (stdout, parsers that printed help)."""
    seen: list[argparse.ArgumentParser] = []
    original = argparse.ArgumentParser.print_help

    def recording(self: argparse.ArgumentParser, file=None) -> None:  # noqa: ANN001
        seen.append(self)
        original(self, file)

    out = io.StringIO()
    argv = sys.argv
    sys.argv = [module, "--help"]
    try:
        with (
            pytest.MonkeyPatch.context() as mp,
            contextlib.redirect_stdout(out),
            warnings.catch_warnings(),
            pytest.raises(SystemExit) as exit_,
        ):
            warnings.simplefilter("ignore")  # runpy: "found in sys.modules" for imported ones
            mp.setattr(argparse.ArgumentParser, "print_help", recording)
            runpy.run_module(module, run_name="__main__", alter_sys=True)
    finally:
        sys.argv = argv
    assert exit_.value.code in (0, None), f"{module} --help exited {exit_.value.code}"
    return out.getvalue(), seen


@pytest.mark.parametrize("module", [m for m in CLIS if m not in HYDRA_ENTRIES])
def test_help_in_one_style(module: str) -> None:
    text, parsers = _run_help(module)
    assert parsers and text.startswith("usage: "), f"{module}: no argparse help: {text[:200]}"
    problems = [p for parser in _parsers(parsers[0]) for p in _style_problems(parser, module)]
    assert not problems, "\n".join(problems)


@pytest.mark.parametrize("module", sorted(HYDRA_ENTRIES))
def test_hydra_entry_has_help(module: str) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", module, "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "powered by Hydra" in proc.stdout and "== Config ==" in proc.stdout


def test_style_check_names_each_problem() -> None:
    parser = argparse.ArgumentParser(prog="x.py", description="two\nlines")
    parser.add_argument("--max_steps", type=int, default=3)
    assert _style_problems(parser, "m") == [
        "prog 'x.py' is not 'python -m m'",
        "x.py: description is not one line: 'two\\nlines'",
        "x.py: flag --max_steps is not kebab-case",
        "x.py: the default of max_steps is not shown",
    ]


def _node_scripts() -> dict[str, str]:
    """Console script name -> "module:function" of every installed roboloop node executable."""
    from importlib.metadata import entry_points

    return {
        ep.name: ep.value
        for ep in entry_points(group="console_scripts")
        if ep.value.startswith("roboloop_") and ".main:" in ep.value
    }


NODE_SCRIPTS = _node_scripts()


def test_every_node_executable_is_found() -> None:
    nodes = {"sim_bridge", "recorder", "policy_node", "q_scorer", "goal_generator", "namo_planner"}
    assert nodes <= set(NODE_SCRIPTS)


@pytest.mark.timeout(60)  # without --help handling the node would start and wait for a signal
@pytest.mark.parametrize("script", sorted(NODE_SCRIPTS))
def test_node_executable_help_lists_its_parameters(
    script: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """`policy_node --help` prints its ROS parameters (its command line) and starts no node."""
    import inspect

    module, func = NODE_SCRIPTS[script].split(":")
    main = getattr(__import__(module, fromlist=[func]), func)
    (node_module,) = re.findall(r"run_console_script\(\s*\"([\w.]+)\"", inspect.getsource(main))
    monkeypatch.setattr(sys, "argv", [script, "--help", "--ros-args", "-p", "x:=1"])
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    try:  # a node's main takes the stop signals over: the test worker keeps its own
        assert main() == 0
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
    out = capsys.readouterr().out
    assert out.startswith(f"usage: {script} [-h] [--ros-args")
    parameters = sys.modules[node_module].PARAMETERS
    listed = re.findall(r"^  (\w+) \(default: ", out, re.MULTILINE)
    assert listed == list(parameters)
    # every number has a declared range (rclpy refuses a value outside it), shown here
    for name, (default, _, *rule) in parameters.items():
        if isinstance(default, int | float) and not isinstance(default, bool):
            assert rule, f"{script}: parameter {name} has no range"
            assert rule[0].accepts(default), f"{script}: {name}'s default is outside its range"
            assert f"  {name} (default: {default!r}; {rule[0]})" in out
