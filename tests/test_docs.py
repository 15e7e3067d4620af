"""The README and the docs site: the site builds strictly, every `plateau ...` command the pages
show still parses and checks, flags named in the prose exist, links land, and the README stays
short. Fast: no Ray, no TensorFlow; `plateau check` runs in-process.

A command shown in a code block is tested by what it is:

* `plateau train|compare|check|run SPEC [flags]`: parsed by the CLI's own parser, then checked
  with `plateau check SPEC` and the same overrides (`service.cli.overrides_from`: the shorthand
  flags and every `--set`), which must exit 0. `check` validates the spec and every trial spec
  of a study, and reads no data, so placeholder paths such as PATH/TO/mnist.npz only need to be
  well-formed; they are still mapped to `sample`. Flags `check` has no use for (`--address`,
  `--quiet-trials`) are parsed, not checked.
* every other subcommand (`submit`, `status`, `logs`, `stop`, `jobs`, `runs`, `show`): parsed
  by the CLI's own parser, so a renamed flag or subcommand fails here.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import re
import shlex
import subprocess
import sys
import unicodedata
import warnings
from pathlib import Path

import pytest

from service import spec as spec_models
from service.cli import build_parser, main, overrides_from
from tests.support.limits import PROGRAM_S

pytestmark = pytest.mark.filterwarnings("ignore::service.spec.SpecWarning")  # legacy names, shown on purpose

ROOT = Path(__file__).resolve().parent.parent
JAX_INSTALLED = importlib.util.find_spec("jax") is not None
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_BYTES = 15 * 1024

# Subcommands whose spec `plateau check` can resolve.
CHECKED = ("train", "compare", "check", "run")
# Spec files the pages show on purpose although they do not exist (an example of bad input).
ILLUSTRATIVE_SPECS = {"typo.yaml"}
# Specs whose data a shown command makes first (`python examples/make_data.py`), in the current
# directory the check runs in: spec -> (the program, the file it writes).
MADE_DATA = {"examples/features.yaml": ("examples/make_data.py", "examples/features.npz")}
# Shell words that end the command itself (a redirect, a pipe, a second command).
SHELL_STOPS = {">", ">>", "2>", "|", "&&", ";", "&"}

FENCE = re.compile(r"^[ \t]*```[^\n]*\n(.*?)^[ \t]*```", re.M | re.S)
COMMAND = re.compile(r"plateau\s+[-A-Za-z]")  # `plateau: ...` is an output line, not a command


def _rel(page: Path) -> str:
    return page.relative_to(ROOT).as_posix()


def shown_commands() -> list[tuple[str, str]]:
    """(page, command line) for every `plateau ...` line in a fenced code block (`$ ` prompts
    dropped, backslash continuations joined)."""
    found = []
    for page in PAGES:
        for block in FENCE.finditer(page.read_text()):
            logical, pending = [], ""
            for line in block.group(1).splitlines():
                if line.rstrip().endswith("\\"):
                    pending += line.rstrip()[:-1] + " "
                    continue
                logical.append(pending + line)
                pending = ""
            for line in logical:
                text = line.strip().removeprefix("$ ")
                if COMMAND.match(text):
                    found.append((_rel(page), text))
    return found


def argv_of(command: str) -> list[str]:
    """The command's arguments after `plateau`, without comments, redirects or what follows."""
    words = shlex.split(command, comments=True)
    assert words[0] == "plateau", command
    argv = []
    for word in words[1:]:
        if word in SHELL_STOPS:
            break
        argv.append(word)
    return argv


def parse(argv: list[str], shown: str) -> argparse.Namespace:
    """The CLI's own parser on argv; a usage error fails the test, naming the command. Flags
    must be spelled out in full (argparse would take `--epoch` for `--epochs`)."""
    try:
        args = build_parser().parse_args(argv)
    except SystemExit as exc:
        pytest.fail(f"the CLI rejects `{shown}` (argparse exit {exc.code}); see the usage error above")
    flags = [w.split("=", 1)[0] for w in argv if w.startswith("-") and w != "-"]
    unknown = [f for f in flags if f not in _known_options(args.command)]
    assert not unknown, f"`{shown}`: plateau {args.command} has no {', '.join(unknown)}"
    return args


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    """The top-level parser (key "") and each subcommand's."""
    parser = build_parser()
    actions = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return {"": parser, **actions[0].choices}


def _known_options(subcommand: str) -> set[str]:
    """Every option string `plateau SUBCOMMAND` takes, before or after the subcommand."""
    parsers = _subparsers()
    return set(parsers[subcommand]._option_string_actions) | set(parsers[""]._option_string_actions)


COMMANDS = shown_commands()


def test_the_pages_show_commands():
    subcommands = {argv_of(command)[0] for _, command in COMMANDS}
    assert {"train", "check", "compare", "submit", "runs", "show"} <= subcommands, subcommands


@pytest.mark.parametrize("page, command", COMMANDS, ids=[f"{page}: {command}" for page, command in COMMANDS])
def test_shown_command_parses_and_checks(page: str, command: str, tmp_path: Path,
                                         monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture) -> None:
    argv = argv_of(command)
    args = parse(argv, command)
    if args.command not in CHECKED or Path(args.spec).name in ILLUSTRATIVE_SPECS:
        return
    spec_path = ROOT / args.spec
    assert spec_path.is_file(), f"{page}: `{command}` names {args.spec}, which does not exist"
    if args.data and "PATH/TO" in args.data:
        args.data = "sample"
    if "training.engine=keras_jax" in command and not JAX_INSTALLED:
        pytest.skip("the jax extra is not installed here (it needs Python 3.11+): check would say so, exit 2")
    check = ["check", str(spec_path), *[w for o in overrides_from(args) for w in ("--set", o)]]
    if args.fresh:
        check.append("--fresh")
    if getattr(args, "submit", False):  # checked as submit would: a job server address (or the page's export)
        check += ["--submit", "--address", args.address or "http://127.0.0.1:8265"]
    monkeypatch.chdir(tmp_path)  # a fresh results/ folder: the check's run-folder line says "a new run"
    if args.spec in MADE_DATA:
        maker, made = MADE_DATA[args.spec]
        subprocess.run([sys.executable, str(ROOT / maker), str(tmp_path / made)], check=True, timeout=PROGRAM_S)
    monkeypatch.setattr(warnings, "formatwarning", warnings.formatwarning)  # main() shortens it
    code = main(check)
    out = capsys.readouterr()
    assert code == 0, (f"{page}: `{command}`: `plateau {shlex.join(check)}` exited {code}:\n{out.err}")
    assert f"name: {spec_models.load_spec(spec_path, overrides_from(args)).name}" in out.out




def _without_fences(text: str) -> str:
    return FENCE.sub("", text)


INLINE = re.compile(r"`(plateau(?: [^`]*)?)`")
OPTION = re.compile(r"(?<![\w-])(--?[A-Za-z][\w-]*)")


def test_flags_named_in_the_prose_exist():
    """Inline `plateau SUBCOMMAND ... --flag` spans (the README's command table, the docs' prose)
    name a real subcommand and only flags it takes."""
    parsers = _subparsers()
    problems, seen = [], 0
    for page in PAGES:
        for span in INLINE.findall(_without_fences(page.read_text())):
            words = span.replace("\\|", " ").split()
            name = words[1] if len(words) > 1 and not words[1].startswith("-") else ""
            if name not in parsers:
                problems.append(f"{_rel(page)}: `{span}`: no subcommand {name!r}")
                continue
            known = _known_options(name)
            for flag in OPTION.findall(" ".join(words[2 if name else 1:])):
                seen += 1
                if flag not in known:
                    problems.append(f"{_rel(page)}: `{span}`: plateau {name} has no {flag}")
    assert not problems, "\n".join(problems)
    assert seen >= 10, "expected the README's command table among the spans"


def test_readme_is_short():
    size = len(README.read_bytes())
    assert size <= README_MAX_BYTES, f"README.md is {size} bytes; keep it under {README_MAX_BYTES}: move detail to docs/"


def _section(text: str, heading: str) -> str:
    start = text.index(f"\n## {heading}\n")
    end = text.find("\n## ", start + 1)
    return text[start:end if end >= 0 else None]


def test_readme_spec_keys_are_the_spec_models_fields():
    """The README's "Spec keys at a glance" table lists exactly the fields the spec models have."""
    models = {"`data`": spec_models.DataSpec, "`model`": spec_models.ModelSpec,
              "`training`": spec_models.TrainingSpec, "`scaling`": spec_models.ScalingSpec,
              "`early_stopping`": spec_models.EarlyStoppingSpec, "`reduce_lr`": spec_models.ReduceLRSpec,
              "`checkpoint`": spec_models.CheckpointSpec, "`debug`": spec_models.DebugSpec,
              "compare specs": spec_models.CompareSpec}
    top = {k for k in spec_models.TrainSpec.model_fields if f"`{k}`" not in models}
    expected = {**{k: set(m.model_fields) for k, m in models.items()}, "top level": top}
    rows = {}
    for line in _section(README.read_text(), "Spec keys at a glance").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")] if line.startswith("| ") else []
        if len(cells) >= 2 and cells[0] not in ("section", "---"):
            keys_cell = "|".join(cells[1:])
            rows[cells[0]] = set(re.findall(r"`(\w+)`", re.sub(r"\([^)]*\)", "", keys_cell)))
    assert rows == expected


def slugify(heading: str) -> str:
    """Python-Markdown's toc slug (what MkDocs and the README's links use)."""
    value = unicodedata.normalize("NFKD", heading).encode("ascii", "ignore").decode("ascii")
    value = re.sub(r"[^\w\s-]", "", value).strip().lower()
    return re.sub(r"[-\s]+", "-", value)


def test_readme_links_land():
    """The README is not part of the site, so MkDocs does not check its links: every relative
    link must name a file that exists and, with an anchor, a heading in it."""
    text = _without_fences(README.read_text())
    links = re.findall(r"\]\(([^)\s]+)\)", text)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        if re.match(r"[a-z]+:", link):
            continue
        target, _, anchor = link.partition("#")
        path = ROOT / target if target else README
        assert path.is_file(), f"README.md links to {link}: no such file"
        if anchor:
            headings = re.findall(r"^#+ (.+)$", _without_fences(path.read_text()), re.M)
            assert anchor in {slugify(h) for h in headings}, f"README.md links to {link}: no such heading"


def test_site_builds_strictly(tmp_path: Path) -> None:
    """`mkdocs build --strict`: every page in the nav, every link and anchor between pages, the
    README section that docs/cluster.md includes."""
    pytest.importorskip("mkdocs", reason="MkDocs is not installed: pip install -e '.[docs]' (the test extra has it)")
    env = {**os.environ, "NO_MKDOCS_2_WARNING": "1"}
    done = subprocess.run([sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=PROGRAM_S)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "ResolveTheAmi" in (tmp_path / "site" / "cluster" / "index.html").read_text()
