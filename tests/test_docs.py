"""The README stays short, and every relative link in it and in docs/*.md points at something that exists."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
README = REPO / "README.md"
MAX_README_LINES = 350

# [text](target) or [text](target "title"); images ![alt](target) match too.
LINK = re.compile(r"\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")
FENCE = re.compile(r"^\s*(```|~~~)")


def _markdown_files():
    return [README, *sorted((REPO / "docs").glob("*.md"))]


def _links(text):
    """Link targets outside fenced code blocks and inline code spans."""
    out, in_fence = [], False
    for line in text.splitlines():
        if FENCE.match(line):
            in_fence = not in_fence
            continue
        if in_fence:
            continue
        out.extend(LINK.findall(re.sub(r"`[^`]*`", "", line)))
    return out


def _is_external(target):
    return re.match(r"^[a-zA-Z][a-zA-Z0-9+.-]*:", target) is not None or target.startswith("#")


def test_readme_is_short():
    n = len(README.read_text(encoding="utf-8").splitlines())
    assert n <= MAX_README_LINES, f"README.md has {n} lines (at most {MAX_README_LINES}); move detail to docs/"


def test_relative_links_resolve():
    broken = []
    for md in _markdown_files():
        for target in _links(md.read_text(encoding="utf-8")):
            if _is_external(target):
                continue
            path = target.split("#", 1)[0]
            if path and not (md.parent / path).exists():
                broken.append(f"{md.relative_to(REPO)}: {target}")
    assert not broken, "broken relative links:\n" + "\n".join(broken)
