"""README.md and docs/: every relative link resolves, the README stays short, and CI's test command stays findable.

CI (`.ci/run`) runs the first ```bash block after README's test-command marker, so the marker and that block are
checked here too.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
DOCS = ROOT / "docs"
MAX_README_LINES = 170
TEST_COMMAND_MARKER = "<!-- test-command"

FENCED_BLOCK = re.compile(r"^(```|~~~).*?^\1[ \t]*$", re.MULTILINE | re.DOTALL)
INLINE_CODE = re.compile(r"`[^`\n]*`")
# [text](target) and ![alt](target), with an optional "title"; the text may hold inline code
LINK = re.compile(r"!?\[(?:[^\[\]]|\[[^\[\]]*\])*\]\(\s*<?([^()\s<>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
EXTERNAL = ("http://", "https://", "mailto:")


def link_targets(markdown: str) -> list[str]:
    """The targets of the markdown links and images in ``markdown``, code blocks and inline code left out."""
    text = FENCED_BLOCK.sub("", markdown)
    text = INLINE_CODE.sub("", text)
    return LINK.findall(text)


def broken_links(markdown: str, base: Path) -> list[str]:
    """The relative link targets of ``markdown`` that name no existing file or folder, resolved from ``base``.

    External links (http, https, mailto) and pure ``#anchor`` links are not checked; an ``#anchor`` after a path is
    dropped before the path is checked.
    """
    broken = []
    for target in link_targets(markdown):
        if target.startswith(EXTERNAL) or target.startswith("#"):
            continue
        path = target.split("#", 1)[0].split("?", 1)[0]
        if not path or not (base / path).exists():
            broken.append(target)
    return broken


def docs_markdown_files() -> list[Path]:
    return sorted(DOCS.rglob("*.md"))


# -- the checker itself ------------------------------------------------------------------------------------------
def test_the_link_checker_finds_a_planted_broken_link(tmp_path: Path) -> None:
    (tmp_path / "exists.md").write_text("# here\n")
    (tmp_path / "folder").mkdir()
    markdown = (
        "See [a page](exists.md), [a section](exists.md#here), [a folder](folder/), [the web](https://example.org),\n"
        "[an anchor](#top), ![a missing plot](plots/missing.png) and [a `code` name](nowhere.md#part).\n"
        "```bash\n[not a link](inside-a-code-block.md)\n```\n"
        "Inline code is not a link either: `[x](inline.md)`.\n"
    )
    assert link_targets(markdown) == [
        "exists.md",
        "exists.md#here",
        "folder/",
        "https://example.org",
        "#top",
        "plots/missing.png",
        "nowhere.md#part",
    ]
    assert broken_links(markdown, tmp_path) == ["plots/missing.png", "nowhere.md#part"]
    assert broken_links("[fine](exists.md) and [fine too](folder)", tmp_path) == []


# -- README.md ---------------------------------------------------------------------------------------------------
def test_every_relative_link_in_the_readme_resolves() -> None:
    assert link_targets(README.read_text(encoding="utf-8")), "the extractor found no link in README.md"
    assert broken_links(README.read_text(encoding="utf-8"), ROOT) == []


def test_the_readme_is_short() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= MAX_README_LINES, f"README.md has {len(lines)} lines; move details into docs/"


def test_the_test_command_marker_is_followed_by_a_bash_block_that_runs_pytest() -> None:
    """What `.ci/run` extracts: the lines of the first ```bash block after the marker, up to its closing fence."""
    lines = README.read_text(encoding="utf-8").splitlines()
    markers = [i for i, line in enumerate(lines) if line.startswith(TEST_COMMAND_MARKER)]
    assert len(markers) == 1, "README.md must hold exactly one test-command marker"
    after = lines[markers[0] + 1 :]
    assert after and after[0] == "```bash", "the marker must be followed directly by a ```bash block"
    closing = next(i for i, line in enumerate(after[1:], start=1) if line.startswith("```"))
    command = "\n".join(after[1:closing])
    assert "pytest" in command
    assert command.strip(), "the test command block is empty"


# -- docs/ -------------------------------------------------------------------------------------------------------
def test_docs_hold_markdown_pages() -> None:
    assert len(docs_markdown_files()) >= 5


@pytest.mark.parametrize("page", docs_markdown_files(), ids=lambda page: str(page.relative_to(ROOT)))
def test_every_relative_link_in_docs_resolves(page: Path) -> None:
    assert broken_links(page.read_text(encoding="utf-8"), page.parent) == []
