"""The documentation keeps its promises: every link and anchor resolves, the site builds with no warning, every
`tasktune` command and flag it names exists, and the README's quick start and the tutorial run as written (on the
tiny model: the built-in model's name is the one word swapped, and the task file gets a two-step budget)."""

from __future__ import annotations

import contextlib
import importlib.util
import io
import re
import shlex
import shutil
import subprocess
import sys
from functools import cache
from pathlib import Path

import pytest
import yaml

from tasktune.cli import main

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"
README = ROOT / "README.md"
PAGES = [README, *sorted(DOCS.rglob("*.md"))]

FENCE = re.compile(r"^```([\w-]*)\n(.*?)^```", re.M | re.S)
INLINE_CODE = re.compile(r"`[^`\n]+`")
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # link text may wrap onto the next line
HEADING = re.compile(r"^(#{1,6})\s+(.+?)\s*#*\s*$", re.M)
COMMAND = re.compile(r"\btasktune\s+([a-z][a-z-]*)(.*)")
REPO_PATH = re.compile(r"(?<![\w/.-])(?:benchmarks|configs|examples|tests|src)/[\w./-]*\w")
SHELL_LANGS = {"", "bash", "sh", "console"}
# Cheap on the tiny model; the others (a server, a search, six trainings, a teacher) are checked through --help.
RUN_AS_WRITTEN = {"check", "train", "eval", "predict", "export", "diagnose", "example"}


# ---- links and anchors ------------------------------------------------------------------------------------------


def _prose(text: str) -> str:
    """The text without fenced blocks and inline code: a link shown as code is not a link."""
    return INLINE_CODE.sub("", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """GitHub's anchor for a heading: markup and punctuation dropped, lower case, spaces to hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading keeps its text
    text = re.sub(r"<[^>]+>", "", text).strip().lower()
    return re.sub(r"[^\w\- ]", "", text).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, title in HEADING.findall(FENCE.sub("", path.read_text(encoding="utf-8"))):
        slug = github_slug(title)
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def broken_links(path: Path) -> list[str]:
    """Each relative link of a markdown file whose file is missing, or whose #anchor names no heading there."""
    problems = []
    for target in LINK.findall(_prose(path.read_text(encoding="utf-8"))):
        if re.match(r"[a-z][a-z+.-]*:", target):  # https:, mailto:
            continue
        file_part, _, anchor = target.partition("#")
        dest = (path.parent / file_part).resolve() if file_part else path
        where = f"{path.name}: {target}"
        if not dest.exists():
            problems.append(f"{where}: no such file")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{where}: no heading with anchor #{anchor} in {dest.name}")
    return problems


def test_every_relative_link_and_anchor_resolves():
    problems = [p for page in PAGES for p in broken_links(page)]
    assert not problems, "broken links:\n" + "\n".join(problems)


def test_the_link_checker_catches_a_planted_broken_link(tmp_path):
    (tmp_path / "other.md").write_text("# Other page\n\n## Two words, and more\n", encoding="utf-8")
    page = tmp_path / "page.md"
    page.write_text(
        "# Page\n\n## Local part\n\n"
        "[fine](other.md) [fine anchor](other.md#two-words-and-more) [local](#local-part) [web](https://example.com)\n"
        "[missing file](nowhere.md) [missing anchor](other.md#three-words) [bad local](#nope)\n"
        "`[in code](ignored.md)`\n",
        encoding="utf-8",
    )
    problems = broken_links(page)
    assert len(problems) == 3, problems
    assert any("nowhere.md: no such file" in p for p in problems)
    assert any("#three-words" in p for p in problems)
    assert any("#nope" in p for p in problems)


def test_github_slugs():
    assert github_slug("The recipe's rules, across tasks") == "the-recipes-rules-across-tasks"
    assert github_slug("`tasktune check` on 100,000 rows") == "tasktune-check-on-100000-rows"
    assert github_slug("The server: `response_format`") == "the-server-response_format"


def _code(text: str) -> str:
    return "\n".join([body for _, body in FENCE.findall(text)] + INLINE_CODE.findall(FENCE.sub("", text)))


def test_every_repository_path_the_docs_name_exists():
    """Paths in code (`benchmarks/serve_load.py`, `configs/accelerate/ddp.yaml`): from the root, or in the package."""
    missing = sorted(
        f"{page.name}: {p}"
        for page in PAGES
        for p in REPO_PATH.findall(_code(page.read_text(encoding="utf-8")))
        if not (ROOT / p).exists() and not (ROOT / "src" / "tasktune" / p).exists()
    )
    assert not missing, missing


# ---- the README's shape -----------------------------------------------------------------------------------------


def _section(text: str, title: str) -> str:
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end > 0 else None]


def test_readme_is_a_front_door():
    text = README.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines; reference material belongs in docs/"
    head = "\n".join(lines[:8])
    assert "make demo" in head and "make test" in head
    quick = next(i for i, line in enumerate(lines) if line.startswith("## Quick start"))
    assert quick < 60, f"the quick start begins at line {quick + 1}: keep it on the first screen"
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), "no dated entries in the README: docs/benchmarks.md"


# ---- the site ---------------------------------------------------------------------------------------------------


def _nav_pages(node) -> set[str]:
    if isinstance(node, str):
        return {node}
    items = node.values() if isinstance(node, dict) else node
    return set().union(*(_nav_pages(n) for n in items))


def test_the_site_navigation_covers_every_page():
    nav = _nav_pages(yaml.safe_load((ROOT / "mkdocs.yml").read_text(encoding="utf-8"))["nav"])
    pages = {str(p.relative_to(DOCS)) for p in DOCS.rglob("*.md")}
    assert nav == pages


@pytest.mark.skipif(
    importlib.util.find_spec("mkdocs") is None,
    reason="mkdocs is not installed: pip install -e '.[docs]' (make install does, through the test extra)",
)
@pytest.mark.timeout(120)
def test_the_site_builds_without_a_warning(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(tmp_path / "site")],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "site" / "index.html").is_file()


# ---- commands and flags -----------------------------------------------------------------------------------------


@cache
def _help(command: str | None) -> str:
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            main([command, "--help"] if command else ["--help"])
    except SystemExit as stop:
        assert stop.code == 0, out.getvalue()
    return out.getvalue()


def _commands() -> set[str]:
    usage = re.search(r"\{([a-z,-]+)\}", _help(None))
    assert usage, _help(None)
    return set(usage.group(1).split(","))


def _shell_lines(block: str) -> list[str]:
    """Lines of a shell block, continuation lines joined."""
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def _named_commands() -> list[tuple[str, str, str, bool]]:
    """(page, command, rest of the line, whether the line starts with it) for every `tasktune CMD ...` in a shell
    block or an inline code span."""
    found = []
    for page in PAGES:
        text = page.read_text(encoding="utf-8")
        lines = [ln for lang, body in FENCE.findall(text) if lang in SHELL_LANGS for ln in _shell_lines(body)]
        lines += [span.strip("`") for span in INLINE_CODE.findall(FENCE.sub("", text))]
        for line in lines:
            m = COMMAND.search(line.split(" #", 1)[0])
            if m:
                found.append((page.name, m.group(1), m.group(2), line.startswith("tasktune ")))
    return found


def command_problems(named: list[tuple[str, str, str, bool]], commands: set[str]) -> list[str]:
    problems = []
    for page, command, rest, leading in named:
        if command not in commands:
            if leading:  # "is not a tasktune run" in a quoted message is prose, not a command
                problems.append(f"{page}: tasktune {command}: no such command")
            continue
        known = set(re.findall(r"--[a-z0-9][a-z0-9-]*", _help(command)))
        problems += [
            f"{page}: tasktune {command} {flag}: no such flag"
            for flag in re.findall(r"(?<![\w-])--[a-z0-9][a-z0-9-]*", rest)
            if flag not in known
        ]
    return sorted(set(problems))


def test_every_command_and_flag_the_docs_name_exists():
    commands = _commands()
    named = _named_commands()
    assert {c for _, c, _, _ in named} >= commands, "every command is shown somewhere in the docs"
    problems = command_problems(named, commands)
    assert not problems, "\n".join(problems)


def test_the_flag_checker_catches_an_invented_flag():
    planted = [("x.md", "train", " --task t.yaml --epochs 2 --epoch 3", True), ("x.md", "fly", " --high", True)]
    assert command_problems(planted, _commands()) == [
        "x.md: tasktune fly: no such command",
        "x.md: tasktune train --epoch: no such flag",
    ]


def _cheap_task(task_file: Path, tiny_model: Path) -> None:
    """The task file on the tiny model, two steps: what the docs' commands then run on."""
    task = yaml.safe_load(task_file.read_text(encoding="utf-8"))
    train = task.setdefault("train", {}) or {}
    train.update(model=str(tiny_model), max_steps=2, precision="fp32", validate_rows=4, eval_max_rows=4)
    task["train"] = train
    task_file.write_text(yaml.safe_dump(task, sort_keys=False), encoding="utf-8")


# Exit codes a command may end with on the tiny model: two steps teach it no stopping, so the run doctor reports
# an error-level finding (`no-stop`) and exits 1, as it is meant to.
ALLOWED_EXIT = {"diagnose": {0, 1}}


def _run_as_written(lines: list[str], tiny_model: Path, cwd: Path) -> list[str]:
    """Run each line in `cwd`; returns the commands run (cheap ones for real, the others' --help)."""
    ran = []
    for line in lines:
        argv = shlex.split(line, comments=True)
        if not argv:
            continue
        if argv[:2] == ["cp", "-r"] and len(argv) == 4:
            shutil.copytree(ROOT / argv[2], cwd / argv[3])
            _cheap_task(cwd / argv[3] / "task.yaml", tiny_model)
            ran.append(line)
            continue
        assert argv[0] == "tasktune", f"a docs command line this test cannot run: {line}"
        args = [str(tiny_model) if a == "smollm2-135m-instruct" else a for a in argv[1:]]
        if args[0] in RUN_AS_WRITTEN:
            assert main(args) in ALLOWED_EXIT.get(args[0], {0}), line
            ran.append(line)
        else:
            assert f"usage: tasktune {args[0]}" in _help(args[0])
            ran.append(f"tasktune {args[0]} --help")
    return ran


def _bash_lines(text: str) -> list[str]:
    return [ln for lang, body in FENCE.findall(text) if lang == "bash" for ln in _shell_lines(body)]


def _command(line: str) -> str:
    return " ".join(shlex.split(line, comments=True))


@pytest.fixture(scope="module")
def tutorial(tiny_model, tmp_path_factory):
    """The tutorial's commands, run in a fresh folder: (folder, the lines run)."""
    cwd = tmp_path_factory.mktemp("tutorial")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TASKTUNE_HOME", str(cwd / "home"))
        mp.chdir(cwd)
        ran = _run_as_written(_bash_lines((DOCS / "tutorial.md").read_text(encoding="utf-8")), tiny_model, cwd)
    return cwd, ran


@pytest.mark.timeout(300)
def test_the_tutorial_runs_as_written(tutorial):
    text = (DOCS / "tutorial.md").read_text(encoding="utf-8")
    shown = yaml.safe_load(next(body for lang, body in FENCE.findall(text) if lang == "yaml"))
    bundled = yaml.safe_load((ROOT / "examples/quickstart/task.yaml").read_text(encoding="utf-8"))
    assert shown == {k: v for k, v in bundled.items() if k != "train"}, "the tutorial shows the bundled task file"
    row = next(body for lang, body in FENCE.findall(text) if lang == "json").strip()
    assert row in (ROOT / "examples/quickstart/train.jsonl").read_text(encoding="utf-8").splitlines()
    cwd, ran = tutorial
    assert {r.split()[1] for r in ran if r.startswith("tasktune")} >= {"check", "train", "eval", "diagnose", "export"}
    assert (cwd / "my-task-clean" / "dropped.jsonl").is_file()
    assert (cwd / "preds.jsonl").is_file() and (cwd / "baseline.json").is_file()
    assert (cwd / "runs" / "my-task" / "diagnosis.json").is_file()
    assert (cwd / "my-model" / "config.json").is_file()


@pytest.mark.timeout(300)
def test_the_readme_quick_start_runs_as_written(tutorial, tiny_model, monkeypatch):
    """The quick start is the tutorial's path in short: the lines it shares ran there (one training, not two); the
    others run here, in the same folder, after them."""
    quick = _section(README.read_text(encoding="utf-8"), "Quick start on your own data")
    copy = re.search(r"`(cp -r examples/quickstart my-task)`", quick)
    assert copy, "the quick start tells how to start from the bundled example"
    written = yaml.safe_load(next(body for lang, body in FENCE.findall(quick) if lang == "yaml"))
    assert {"name", "instruction", "output", "data"} <= set(written)
    lines = [copy.group(1), *_bash_lines(quick)]
    assert [_command(ln).split()[1] for ln in lines[1:]] == ["check", "train", "eval", "predict", "serve", "export"]
    cwd, ran = tutorial
    done = {_command(ln) for ln in ran}
    rest = [ln for ln in lines if _command(ln) not in done]
    assert all(_command(ln).split()[:2] != ["tasktune", "train"] for ln in rest), (
        "the quick start's train line is the tutorial's, so one training serves both"
    )
    monkeypatch.setenv("TASKTUNE_HOME", str(cwd / "home"))
    monkeypatch.chdir(cwd)
    _run_as_written(rest, tiny_model, cwd)
