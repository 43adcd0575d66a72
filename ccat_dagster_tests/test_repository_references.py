"""The repository explains itself: nothing tracked points to a document outside it.

Code comments, docstrings, CLI help and docs point to docs/design.md and docs/lifecycle.md (or
another file of the repository), never to design notes that only existed elsewhere; every
``docs/<name>.md`` mentioned and every relative Markdown link resolves to a tracked file.
"""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
THIS_FILE = Path(__file__).resolve().relative_to(ROOT).as_posix()

# Names of documents that are not in the repository (built so this file does not match itself).
OUTSIDE = [
    r"\bseeds\b",
    "ARCHITECTURE" + r"\.md",
    "core" + "_concepts",
    "data" + r"_lifecycle\.rst",
    "deletion_manager" + "_api",
    "shared" + "/",
]
OUTSIDE_RE = re.compile("|".join(OUTSIDE), re.IGNORECASE)
DOCS_MENTION_RE = re.compile(r"\bdocs/[\w.-]+\.md\b")
MD_LINK_RE = re.compile(r"\]\(([^)\s#]+)(?:#[^)]*)?\)")
BINARY_SUFFIXES = {".png", ".jpg", ".gif", ".tar", ".gz", ".db", ".pyc"}


def _tracked_text_files() -> list[str]:
    try:
        out = subprocess.run(
            ["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, text=True
        ).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the tracked files are unknown")
    files = []
    for name in filter(None, out.split("\0")):
        path = ROOT / name
        if path.suffix in BINARY_SUFFIXES or not path.is_file():
            continue
        files.append(name)
    return files


def _read(name: str) -> str | None:
    try:
        return (ROOT / name).read_text(encoding="utf-8")
    except UnicodeDecodeError:
        return None


def test_nothing_points_to_documents_outside_the_repository():
    found = []
    for name in _tracked_text_files():
        if name == THIS_FILE:
            continue
        text = _read(name)
        if text is None:
            continue
        for lineno, line in enumerate(text.splitlines(), 1):
            if OUTSIDE_RE.search(line):
                found.append(f"{name}:{lineno}: {line.strip()}")
    assert not found, (
        "references to documents outside the repository; point to docs/design.md or "
        "docs/lifecycle.md instead:\n" + "\n".join(found)
    )


def test_every_mentioned_doc_and_markdown_link_exists():
    tracked = set(_tracked_text_files())
    missing = []
    for name in sorted(tracked):
        text = _read(name)
        if text is None:
            continue
        for mention in DOCS_MENTION_RE.findall(text):
            if mention not in tracked:
                missing.append(f"{name}: {mention}")
        if name.endswith(".md"):
            base = (ROOT / name).parent
            for target in MD_LINK_RE.findall(text):
                if "://" in target or target.startswith("mailto:"):
                    continue
                resolved = (base / target).resolve()
                if not resolved.exists():
                    missing.append(f"{name}: link {target}")
    assert not missing, "references to files that do not exist:\n" + "\n".join(missing)


def test_design_and_lifecycle_docs_exist():
    for doc in ("docs/design.md", "docs/lifecycle.md"):
        assert (ROOT / doc).is_file(), doc
