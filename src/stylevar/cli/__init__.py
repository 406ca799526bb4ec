"""The ``stylevar`` command line. Subcommands are thin: flags -> config -> library call.

    stylevar stylize CONTENT STYLE -o OUTPUT    stylize files or folders (every content x style pair)
    stylevar video VIDEO STYLE -o OUTPUT        a stylized video (mp4, webm, mov, mkv, gif), flicker-free
    stylevar convert UPSTREAM.pth -o DIR        upstream .pth files -> config.json + safetensors
    stylevar merge-lora LORA --base SFT -o OUT  GRPO LoRA adapters merged into plain weights
    stylevar info CHECKPOINT                    print a checkpoint's configuration
    stylevar make-synthetic / demo              procedural triplets; the whole pipeline on a CPU
    stylevar train-tokenizer / sft / grpo / dpo the trainers (torchrun for several processes)
    stylevar plot RUN_DIR                       a run's curves
    stylevar evaluate -o DIR --model M ...      the paper's Table 2 (metrics, baselines, timing, reports)
    stylevar app [--checkpoint C]               a web page with every control (Gradio)

One module per subcommand (``register`` adds its parser, ``run`` does the work and imports the
library only then), so ``--help`` and argument errors answer without importing torch. An argument
error prints the subcommand's usage and the closest valid flag (exit 2); a user error of the library
(:class:`~stylevar.errors.StyleVARError`) prints one line, no traceback (exit 1). Every option's help states
its default, and every subcommand's help ends with examples (tests/test_cli.py walks the parser).
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence

from .. import __version__, threads
from .._malloc import release_memory_promptly
from ..errors import Interrupted, StyleVARError
from . import app, checkpoints, demo, dpo, evaluate, grpo, plot, sft, stylize, tokenizer, triplets, video
from .common import Parser, examples

#: subcommand modules in the order ``--help`` lists them
COMMANDS = (stylize, video, checkpoints, demo, tokenizer, plot, triplets, sft, grpo, dpo, evaluate, app)

#: commands that train: they keep glibc's own allocator policy. Sending every allocation of 1 MiB or
#: more to mmap (release_memory_promptly) keeps inference's peak low, but a training step allocates
#: and frees the same activations every step, and paying page faults for each made the demo's
#: tokenizer steps 1.57x slower (0.48 s instead of 0.31 s, docs/demo.md)
TRAINING_COMMANDS = frozenset({"demo", "train-tokenizer", "sft", "grpo", "dpo"})


def build_parser() -> Parser:
    """The ``stylevar`` parser with every subcommand."""
    parser = Parser(
        prog="stylevar",
        description="Reference-based style transfer with StyleVAR. `stylevar COMMAND --help` lists a "
        "command's options, each with its default, and ends with examples.",
        epilog=examples(
            (
                "stylize a photo with a painting (the released model, downloaded once)",
                "stylevar stylize photo.jpg monet.jpg -o out.png --seed 0",
            ),
            ("the whole pipeline trained from nothing on a CPU (about 10 minutes)", "stylevar demo -o demo/"),
        ),
    )
    parser.add_argument("--version", action="version", version=f"stylevar {__version__}")
    parser.add_argument(
        "-v",
        "--verbose",
        action="count",
        default=0,
        help="more log output: -v info, -vv debug (default: warnings and errors only)",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=Parser)
    sub.required = True
    for module in COMMANDS:
        module.register(sub)
    return parser


def parse(parser: Parser, argv: Sequence[str] | None) -> argparse.Namespace:
    """Parse ``argv``; unknown arguments are refused by the subcommand's parser (its usage, a suggestion)."""
    args, extras = parser.parse_known_args(argv)
    if extras:
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        sub.choices[args.command].unknown_arguments(extras)
    return args


def _stop_on_signals() -> dict:
    """SIGTERM and SIGHUP end a command as Ctrl-C does (its summary, temporary files removed), with the
    conventional exit codes 143 and 129 (:class:`~stylevar.errors.Interrupted`). Training commands put
    their own handlers in place while they train (they save and stop at a step boundary)."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():
        return {}

    def handler(signum: int, _frame) -> None:
        raise Interrupted(signum, signal.Signals(signum).name)

    sigs = [s for s in (signal.SIGTERM, getattr(signal, "SIGHUP", None)) if s is not None]
    return {sig: signal.signal(sig, handler) for sig in sigs}  # the previous handlers, restored by main


def main(argv: Sequence[str] | None = None) -> int:
    args = parse(build_parser(), argv)
    previous = _stop_on_signals()
    try:
        return _run(args)
    finally:
        import signal

        for sig, handler in previous.items():
            signal.signal(sig, handler)


def _run(args: argparse.Namespace) -> int:
    if getattr(args, "threads", 0):  # `demo --threads N`: the user's count, for stylevar.threads too
        os.environ[threads.ENV_THREADS] = str(args.threads)
    try:  # before torch loads: its OpenMP threads follow the CPUs this process may use (docs/speed.md)
        threads.apply()
    except StyleVARError as e:
        print(f"stylevar: error: {e}", file=sys.stderr)
        return 1
    if args.command not in TRAINING_COMMANDS:
        release_memory_promptly()
    level = (logging.WARNING, logging.INFO, logging.DEBUG)[min(args.verbose, 2)]
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    if not args.verbose:  # the Hub client logs every retry; our own error line says what failed
        logging.getLogger("huggingface_hub").setLevel(logging.ERROR)
    try:
        return int(args.func(args) or 0)
    except StyleVARError as e:
        print(f"stylevar: error: {e}", file=sys.stderr)
        return 1
    except Interrupted as e:
        print(f"stylevar: stopped by {e.name}", file=sys.stderr)
        return 128 + e.signum
    except KeyboardInterrupt:
        print("stylevar: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # output piped into e.g. `head`, which stopped reading
        sys.stderr.close()
        return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
