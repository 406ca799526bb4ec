"""MkDocs hook: the CLI reference page (``docs/cli.md``) is the parser's own help, so it cannot drift.

Every ``<!-- stylevar-cli -->`` marker is replaced by the ``--help`` text of ``stylevar`` and of each of
its subcommands, in the order ``stylevar --help`` lists them, made by ``stylevar.cli.build_parser()``
at build time.
"""

from __future__ import annotations

import argparse
import os

MARKER = "<!-- stylevar-cli -->"


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    return {}


def reference() -> str:
    os.environ["COLUMNS"] = "100"  # argparse wraps at the terminal's width: a fixed one for the page
    from stylevar.cli import build_parser

    parser = build_parser()
    parts = ["## stylevar", "", "```text", parser.format_help().rstrip(), "```", ""]
    for name, sub in _subparsers(parser).items():
        parts += [f"## stylevar {name}", "", "```text", sub.format_help().rstrip(), "```", ""]
    return "\n".join(parts)


def on_page_markdown(markdown: str, page, config, files) -> str:  # noqa: ARG001 (the hook's signature)
    if MARKER not in markdown:
        return markdown
    return markdown.replace(MARKER, reference())
