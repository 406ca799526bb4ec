"""What the subcommands share: the parser class (errors with the subcommand's usage and a suggested
flag), flags made from config dataclass fields, the checkpoint options, value parsers.

Nothing here imports torch: ``stylevar --help``, ``stylevar SUBCOMMAND --help`` and argument errors
answer at once. Each subcommand imports its library inside its ``run`` function.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import re
from collections.abc import Iterable, Sequence
from typing import Any, NoReturn

from ..config import DTYPE_ALIASES, DTYPES, parse_numbers

#: torchvision's ImageNet weight files the commands name (``--vgg-weights``; the file names of
#: ``VGG19_Weights.IMAGENET1K_V1`` and ``VGG16_Weights.IMAGENET1K_V1``, checked by tests/test_cli.py)
VGG19_FILE = "vgg19-dcbb9e9d.pth"
VGG16_FILE = "vgg16-397923af.pth"
EXAMPLE_WIDTH = 92  #: example commands longer than this continue on the next line


# ---------------------------------------------------------------------------------------- the parser
class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """A description in one paragraph is wrapped to the terminal as usual; text with line breaks (the
    examples of :func:`examples`, the epilog) is printed as written."""

    def _fill_text(self, text: str, width: int, indent: str) -> str:
        if "\n" in text.strip():
            return super()._fill_text(text, width, indent)
        return argparse.HelpFormatter._fill_text(self, text, width, indent)


class Parser(argparse.ArgumentParser):
    """``argparse.ArgumentParser`` whose errors suggest the closest valid command or flag, and whose help
    keeps an epilog of examples as written (:class:`HelpFormatter`)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str) -> NoReturn:
        m = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
        if m:
            choices = re.findall(r"'?([\w./:-]+)'?", m.group(2))
            close = difflib.get_close_matches(m.group(1), choices, n=1, cutoff=0.5)
            if close:
                message += f"; did you mean {close[0]!r}?"
        super().error(message)

    def unknown_arguments(self, extras: Sequence[str]) -> NoReturn:
        """Refuse arguments this parser does not know, suggesting the closest of its flags."""
        message = f"unrecognized arguments: {' '.join(extras)}"
        hint = suggest_flag(next((e for e in extras if e.startswith("-")), ""), self.option_strings())
        if hint:
            message += f"; did you mean {hint}?"
        self.error(message)

    def option_strings(self) -> list[str]:
        return [s for action in self._actions for s in action.option_strings if s.startswith("--")]


def examples(*cases: tuple[str, str]) -> str:
    """An epilog of example commands: ``(what it does, command)`` pairs, printed as written (a long
    command continued on the next lines with ``\\``, as a shell reads it)."""
    lines = ["examples:"]
    for what, command in cases:
        lines.append(f"  # {what}")
        units: list[str] = []  # a flag stays on one line with its value
        for word in command.split():
            if units and units[-1].startswith("-") and " " not in units[-1] and not word.startswith("-"):
                units[-1] += " " + word
            else:
                units.append(word)
        line = ""
        for unit in units:
            if line and len(line) + 1 + len(unit) > EXAMPLE_WIDTH:
                lines.append(f"  {line} \\")
                line = "    " + unit
            else:
                line = f"{line} {unit}" if line else unit
        lines.append(f"  {line}")
    return "\n".join(lines)


def dtype_arg(text: str) -> str:
    """``--dtype``: the canonical name (fp32, bf16, fp16, int8) of any accepted spelling (``bfloat16``)."""
    key = text.lower().removeprefix("torch.")
    return DTYPE_ALIASES.get(key, key)


def suggest_flag(given: str, options: Iterable[str]) -> str | None:
    """The flag meant by ``given`` (``--num_samples`` -> ``--num-samples``, ``--sed`` -> ``--seed``), or None."""
    if not given.startswith("-"):
        return None
    name = given.split("=", 1)[0]
    options = list(options)
    normal = "--" + name.lstrip("-").replace("_", "-").lower()
    if normal in options:
        return normal
    close = difflib.get_close_matches(normal, options, n=1, cutoff=0.75)
    return close[0] if close else None


# ---------------------------------------------------------------------------------------- config flags
def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


_SCALARS = {"int": int, "float": float, "str": str}


def _parse_for(f: dataclasses.Field) -> Any:
    """The argparse ``type`` of a field: its default's type (for a None default, the annotation's:
    ``int | None`` -> int), or for tuples comma-separated values (as many as the default has, unless the
    annotation says ``tuple[X, ...]``)."""
    default = f.default
    if default is None:
        kinds = [t.strip() for t in str(f.type).split("|") if t.strip() != "None"]
        if len(kinds) == 1 and kinds[0] in _SCALARS:
            return _SCALARS[kinds[0]]
        raise TypeError(f"field {f.name}: no command-line type for {f.type}")
    if isinstance(default, tuple):
        kind = type(default[0]) if default else str
        n = None if "..." in str(f.type) else len(default)

        def parse(text: str) -> tuple:
            try:
                values = tuple(parse_numbers(text, kind))
            except ValueError:
                values = ()
            if not values or (n is not None and len(values) != n):
                count = "" if n is None else f"{n} "
                raise argparse.ArgumentTypeError(
                    f"expected {count}comma-separated {kind.__name__} values, got {text!r}"
                )
            return values

        parse.__name__ = "values"
        return parse
    return type(default)


def flag_fields(config_cls: type, skip: Iterable[str] = ()) -> list[dataclasses.Field]:
    """The fields of ``config_cls`` that become flags (declared with ``option(..., flag=True)``)."""
    skip = set(skip)
    return [
        f
        for f in dataclasses.fields(config_cls)
        if "help" in f.metadata and f.metadata.get("flag", True) and f.name not in skip
    ]


def add_config_flags(
    group: Any,
    config_cls: type,
    *,
    keep_defaults: bool = True,
    skip: Iterable[str] = (),
    defaults: dict[str, Any] | None = None,
    shown: dict[str, str] | None = None,
) -> list[str]:
    """One ``--field-name`` flag for every field of the dataclass ``config_cls`` declared with
    :func:`stylevar.config.option` (and ``flag=True``): its help text, choices and type come from the
    field; the default is the field's (``keep_defaults``) or None, so that code can tell which flags were
    given (a resumed run keeps its own values for the others). ``defaults`` replaces a field's default
    for this command; ``shown`` the text of a default in the help (``the checkpoint's``). A default kept
    on the flag is shown as argparse's ``%(default)s``, so a command that changes it (``set_defaults``:
    ``stylevar dpo``'s objective) shows its own. Returns the field names."""
    names = []
    defaults, shown = defaults or {}, shown or {}
    for f in flag_fields(config_cls, skip):
        meta = f.metadata
        default = defaults.get(f.name, f.default)
        text = meta["help"].replace("%", "%%")
        live = keep_defaults and f.name not in shown and not isinstance(default, tuple)
        kw: dict[str, Any] = {
            "default": default if keep_defaults else None,
            "help": f"{text} (default: {'%(default)s' if live else shown.get(f.name, _show(default))})",
        }
        if isinstance(default, bool):  # --name / --no-name
            kw["action"] = argparse.BooleanOptionalAction
            kw["help"] = f"{text} (default: {'on' if default else 'off'})"
        else:
            kw["type"] = _parse_for(f) if default is f.default else type(default)
        if meta.get("choices"):
            kw["choices"] = meta["choices"]
            if tuple(meta["choices"]) == DTYPES:  # bfloat16, float16 ... accepted, the four shown
                kw["type"] = dtype_arg
        group.add_argument(_flag(f.name), **kw)
        names.append(f.name)
    return names


def _show(default: Any) -> str:
    if isinstance(default, tuple):
        return ",".join(str(v) for v in default)
    return str(default)


def config_values(args: argparse.Namespace, config_cls: type, skip: Iterable[str] = ()) -> dict[str, Any]:
    """The values of ``config_cls``'s flags in ``args`` that are set (not None): with
    ``keep_defaults=True`` flags, every one; with ``False``, those the user gave."""
    return {f.name: v for f in flag_fields(config_cls, skip) if (v := getattr(args, f.name)) is not None}


# ---------------------------------------------------------------------------------------- value parsers
def alpha_arg(text: str) -> str | list[float]:
    """``--alpha``: a preset name or comma-separated per-scale values."""
    from ..config import ALPHA_PRESETS

    if text in ALPHA_PRESETS:
        return text
    try:
        return parse_numbers(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"expected a preset ({', '.join(ALPHA_PRESETS)}) or comma-separated numbers, got {text!r}"
        ) from None


def int_tuple(text: str) -> tuple[int, ...]:
    """Comma-separated integers (``--patch-nums 1,2,4``)."""
    try:
        return tuple(parse_numbers(text, int))
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None


# ---------------------------------------------------------------------------------------- shared option groups
def add_checkpoint_args(p: argparse.ArgumentParser, checkpoint: bool = True) -> None:
    """Which checkpoint to use (every subcommand that loads one)."""
    g = p.add_argument_group("checkpoint")
    if checkpoint:
        g.add_argument(
            "--checkpoint",
            default=None,
            help="our checkpoint directory, an upstream .pth file or folder, or a Hub repo id "
            "(default: Senfier-LiqiJing/StyleVAR)",
        )
    g.add_argument(
        "--vae",
        default=None,
        help="VQ-VAE file for upstream checkpoints (default: vae_ch160v4096z32.pth beside it)",
    )
    g.add_argument(
        "--variant", choices=("grpo", "sft"), default=None, help="released weights to use (default: grpo)"
    )
    g.add_argument(
        "--alpha",
        type=alpha_arg,
        default=None,
        help="per-scale alpha: a preset (paper, sft) or N comma-separated values (default: the checkpoint's)",
    )
    g.add_argument(
        "--base",
        default=None,
        help="base (SFT) checkpoint for a checkpoint holding only GRPO LoRA adapters",
    )
    g.add_argument("--revision", default=None, help="Hub revision: branch, tag or commit (default: main)")
    g.add_argument(
        "--cache-dir",
        default=None,
        help="Hugging Face cache directory (default: $HF_HUB_CACHE or ~/.cache/huggingface/hub)",
    )
    g.add_argument("--offline", action="store_true", help="use only files already in the Hugging Face cache")
    g.add_argument(
        "--trust-checkpoint",
        action="store_true",
        help="allow .pth files with pickled Python objects (runs code from the file: trusted files only)",
    )


def checkpoint_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    """The checkpoint options of :func:`add_checkpoint_args`, as ``load_pretrained`` arguments."""
    return dict(
        vae=args.vae,
        variant=args.variant,
        alpha=args.alpha,
        revision=args.revision,
        cache_dir=args.cache_dir,
        local_files_only=args.offline,
        allow_pickle=args.trust_checkpoint,
        base=args.base,
    )


def load_pipeline(args: argparse.Namespace) -> Any:
    """The pipeline of ``--checkpoint`` and the checkpoint options, on ``--device``."""
    from ..stylize.pipeline import StyleVARPipeline

    return StyleVARPipeline.from_pretrained(args.checkpoint, device=args.device, **checkpoint_kwargs(args))


def add_triplet_data_args(p: argparse.ArgumentParser) -> argparse._ArgumentGroup:
    """DATA and how it is checked and split (``stylevar sft`` and ``grpo``:
    :class:`stylevar.training.jobs.DataOptions`)."""
    p.add_argument(
        "data", nargs="+", metavar="DATA", help="OmniStyle/ImagePulse roots or CSV/JSONL manifests"
    )
    g = p.add_argument_group("data")
    g.add_argument(
        "--layout",
        choices=("auto", "omnistyle", "imagepulse", "manifest"),
        default="auto",
        help="how DATA is laid out: auto (default) reads a file as a CSV/JSONL manifest, a folder as an "
        "OmniStyle root when it has OmniStyle's target folder, else as an ImagePulse root",
    )
    g.add_argument(
        "--on-bad-file",
        choices=("fail", "skip"),
        default="fail",
        help="a missing/unreadable image: stop naming it (default), or leave its triplets out",
    )
    g.add_argument("--full-check", action="store_true", help="decode every image in the check (slow)")
    g.add_argument(
        "--val-fraction", type=float, default=0.05, help="validation share of each source (default 0.05)"
    )
    g.add_argument(
        "--split-seed", type=int, default=42, help="seed of the train/val split (default 42, upstream's)"
    )
    g.add_argument(
        "--fit",
        choices=("squash", "crop"),
        default="squash",
        help="how an image becomes square: squash (default, the published training) or centre crop",
    )
    return g


def data_options(args: argparse.Namespace) -> Any:
    """:class:`stylevar.training.jobs.DataOptions` of the flags of :func:`add_triplet_data_args`."""
    from ..training.jobs import DataOptions

    return DataOptions(**{f.name: getattr(args, f.name) for f in dataclasses.fields(DataOptions)})


def report_training(result: Any, final: str) -> None:
    """The last lines of ``stylevar sft`` / ``grpo`` (rank 0 only): where the model is, or how to continue."""
    if result.rank != 0:
        return
    if result.final is None:
        print(
            f"stopped at step {result.step} of {result.total_steps}; continue with the same command and --resume"
        )
    else:
        print(f"{final}: {result.final}/ (stylevar stylize ... --checkpoint {result.final})")


def say(message: str) -> None:
    """Progress lines of the library, on stdout (flushed: runs are long)."""
    print(message, flush=True)
