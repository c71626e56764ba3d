"""README.md and docs/*.md stay true to the tree: relative links lead to files (and `#anchors` to
headings), every `python -m bench` command in a code block parses with the CLI's own parser, and
every `make` target exists. Nothing is run but `python -m bench <command> --help`."""

import contextlib
import io
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from bench.cli import build_parser

ROOT = Path(__file__).resolve().parent.parent
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
README_MAX_LINES = 250  # a page a newcomer reads in five minutes

FENCE = re.compile(r"^\s*(```|~~~)")
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\]]*\])*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
INLINE_CODE = re.compile(r"(`+)((?:(?!\n[ \t]*\n).)+?)\1", re.S)  # not across paragraphs
BENCH = re.compile(r"^(?:\S*/)?python3? -m bench(?:\s|$)")


def _ids(pages):
    return [str(p.relative_to(ROOT)) for p in pages]


def split_fences(text: str) -> tuple[str, list[list[str]]]:
    """The page's prose (code blocks blanked, so line numbers hold) and its fenced code blocks."""
    prose, blocks, block = [], [], None
    for line in text.splitlines():
        if FENCE.match(line):
            if block is None:
                block = []
            else:
                blocks.append(block)
                block = None
            prose.append("")
        elif block is not None:
            block.append(line)
            prose.append("")
        else:
            prose.append(line)
    return "\n".join(prose), blocks


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lowercase, punctuation but '-' and '_' dropped, spaces to '-'."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link's text only
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    prose, _ = split_fences(page.read_text(encoding="utf-8"))
    seen: dict[str, int] = {}
    out = set()
    for line in prose.splitlines():
        m = re.match(r"^ {0,3}#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not m:
            continue
        base = slug(m.group(1))
        n = seen.get(base, 0)
        seen[base] = n + 1
        out.add(base if n == 0 else f"{base}-{n}")
    return out


def links(page: Path) -> list[str]:
    """Link and image targets in the page's prose (not in code blocks or code spans)."""
    prose, _ = split_fences(page.read_text(encoding="utf-8"))
    prose = INLINE_CODE.sub(lambda m: " " * len(m.group(0)), prose)
    return [m.group(1) for m in LINK.finditer(prose)]


def code_lines(page: Path) -> list[str]:
    """Every logical line of the page's fenced code blocks: backslash continuations joined."""
    _, blocks = split_fences(page.read_text(encoding="utf-8"))
    out = []
    for block in blocks:
        pending = ""
        for line in block:
            if line.rstrip().endswith("\\"):
                pending += line.rstrip()[:-1] + " "
                continue
            out.append((pending + line).strip())
            pending = ""
        if pending:
            out.append(pending.strip())
    return out


def bench_commands(page: Path) -> list[list[str]]:
    """argv (after `python -m bench`) of every command line in the page's code blocks."""
    return [shlex.split(line, comments=True)[3:] for line in code_lines(page) if BENCH.match(line)]


def make_commands(page: Path) -> list[str]:
    """`make ...` command lines in the page's code blocks and code spans."""
    text = page.read_text(encoding="utf-8")
    prose, _ = split_fences(text)
    spans = [" ".join(m.group(2).split()) for m in INLINE_CODE.finditer(prose)]
    return [c for c in code_lines(page) + spans if re.match(r"^make(\s|$)", c)]


def makefile_targets() -> set[str]:
    targets = set()
    for line in (ROOT / "Makefile").read_text().splitlines():
        m = re.match(r"^([^\s:=#][^:=]*?)\s*:(?!=)", line)
        if m:
            targets.update(t for t in m.group(1).split() if "$" not in t)
    return targets


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_lead_to_files_and_headings(page):
    problems = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I):  # http:, https:, mailto: ...
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            problems.append(f"{target}: {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest} "
                            "does not exist")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            problems.append(f"{target}: no heading '#{anchor}' in {dest.relative_to(ROOT)}")
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_the_pages_have_links_and_commands_to_check():
    """Guards the extractors: a regex that silently matches nothing would pass every test."""
    readme = ROOT / "README.md"
    assert any(t.startswith("docs/") for t in links(readme))
    assert any(argv[:1] == ["run"] for argv in bench_commands(readme))
    assert any(c.startswith("make run") for c in make_commands(readme))
    assert slug("The `run` options: all of them (v2)") == "the-run-options-all-of-them-v2"
    assert slug("Plugins: the entry point group `bench.codecs`") == \
        "plugins-the-entry-point-group-benchcodecs"


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_bench_commands_parse(page):
    parser = build_parser()
    problems = []
    for argv in bench_commands(page):
        err = io.StringIO()
        try:
            with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
                parser.parse_args(argv)
        except SystemExit as exc:
            if exc.code:
                problems.append(f"python -m bench {shlex.join(argv)}\n  "
                                f"{(err.getvalue().strip().splitlines() or [''])[-1]}")
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_help_of_every_documented_subcommand():
    commands = sorted({argv[0] for page in PAGES for argv in bench_commands(page) if argv})
    assert commands
    for command in commands:
        proc = subprocess.run([sys.executable, "-m", "bench", command, "--help"], cwd=ROOT,
                              capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0, f"python -m bench {command} --help: {proc.stderr}"
        assert "usage:" in proc.stdout


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_make_targets_exist(page):
    targets = makefile_targets()
    assert {"run", "test"} <= targets
    problems = []
    for command in make_commands(page):
        words = shlex.split(command, comments=True)[1:]
        named = [w for w in words if not w.startswith("-") and "=" not in w]
        problems += [f"{command}: no target {t!r} in the Makefile" for t in named if t not in targets]
    assert not problems, f"{page.relative_to(ROOT)}:\n" + "\n".join(problems)


def test_readme_is_short():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").count("\n")
    assert lines <= README_MAX_LINES, f"README.md has {lines} lines; move detail into docs/"
