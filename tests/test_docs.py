"""The README is a front door: short, and every page it and the reference pages link to exists."""
from __future__ import annotations

import re

from t2s.config import PROJECT_ROOT

LINK = re.compile(r"\]\(([^)#\s]+)(#[^)]*)?\)")


def _pages():
    return [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").rglob("*.md"))]


def test_the_readme_is_at_most_220_lines_and_links_every_reference_page():
    readme = (PROJECT_ROOT / "README.md").read_text(encoding="utf-8")
    assert len(readme.splitlines()) <= 220
    linked = {m.group(1) for m in LINK.finditer(readme)}
    pages = {p.relative_to(PROJECT_ROOT).as_posix() for p in (PROJECT_ROOT / "docs").glob("*.md")}
    assert pages <= linked, f"reference pages the README does not link: {sorted(pages - linked)}"
    assert "docs/notes/README.md" in linked


def test_every_relative_link_of_the_readme_and_the_docs_points_at_a_file_that_exists():
    broken = []
    for page in _pages():
        for match in LINK.finditer(page.read_text(encoding="utf-8")):
            target = match.group(1)
            if "://" in target or target.startswith("mailto:"):
                continue
            if not (page.parent / target).exists():
                broken.append(f"{page.relative_to(PROJECT_ROOT)}: {target}")
    assert not broken, "\n".join(broken)
