"""MkDocs hook: the site's home page is the README, so the two cannot drift.

``docs/index.md`` holds only the ``<!-- stylevar-readme -->`` marker; at build time it becomes
``README.md`` with its links made relative to ``docs/`` (``docs/speed.md`` -> ``speed.md``; a link to a
file outside ``docs/`` points at the repository instead).
"""

from __future__ import annotations

import re
from pathlib import Path

MARKER = "<!-- stylevar-readme -->"
ROOT = Path(__file__).resolve().parents[2]


def home_page() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    text = re.sub(r"\]\(docs/", "](", text)  # links and images into docs/
    text = re.sub(r"`docs/`", "the docs folder", text)
    return text


def on_page_markdown(markdown: str, page, config, files) -> str:
    if MARKER in markdown:
        return markdown.replace(MARKER, home_page())
    return markdown
