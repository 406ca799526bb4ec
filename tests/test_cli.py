"""The ``stylevar`` command: end to end on real files, folders and both checkpoint formats; one-line errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import smooth_images
from stylevar.cli import main


def _write_pics(folder: Path, n: int, seed: int, sizes=((80, 60), (64, 64), (40, 70))) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for i in range(n):
        a = ((smooth_images(1, 96, seed + i)[0].permute(1, 2, 0).numpy() + 1) * 127.5).astype(np.uint8)
        p = folder / f"pic{i}.{'png' if i % 2 == 0 else 'jpg'}"
        Image.fromarray(a).resize(sizes[i % len(sizes)]).save(p)
        out.append(p)
    return out


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("cli")
    return {
        "content": _write_pics(d / "content", 2, 100),
        "style": _write_pics(d / "style", 2, 200),
        "root": d,
    }


def _cli_script() -> list[str]:
    script = Path(sys.executable).parent / "stylevar"
    return [str(script)] if script.exists() else [sys.executable, "-m", "stylevar"]


@pytest.mark.slow
def test_stylize_one_pair_from_upstream_pth_via_the_installed_command(tmp_path, data, upstream_dir):
    out = tmp_path / "result.png"
    cmd = _cli_script() + [
        "stylize",
        str(data["content"][0]),
        str(data["style"][1]),
        "-o",
        str(out),
        "--checkpoint",
        str(upstream_dir / "StyleVAR-GRPO.pth"),
        "--seed",
        "7",
        "--grid",
        "--device",
        "cpu",
        "--top-k",
        "20",
        "--top-p",
        "0.9",
    ]
    r = subprocess.run(
        cmd, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300
    )
    assert r.returncode == 0, r.stderr
    assert Image.open(out).size == (64, 64)
    grid = Image.open(tmp_path / "result_grid.png")
    assert grid.size == (3 * 66 + 2, 66 + 2)
    assert "seed 7" in r.stdout
    assert sorted(p.name for p in tmp_path.iterdir()) == ["result.png", "result_grid.png"]


def test_folders_every_pair_our_format_and_resume(tmp_path, data, ours_dir, capsys):
    out = tmp_path / "out"
    args = [
        "stylize",
        str(data["content"][0].parent),
        str(data["style"][0].parent),
        "-o",
        str(out),
        "--checkpoint",
        str(ours_dir),
        "--num-samples",
        "2",
        "--batch-size",
        "3",
        "--seed",
        "11",
        "-q",
    ]
    assert main(args) == 0
    names = sorted(p.name for p in out.iterdir())
    want = sorted(f"pic{c}__pic{s}__{k}.png" for c in range(2) for s in range(2) for k in range(2))
    assert names == sorted(want + ["stylevar_runs.jsonl"])
    log = [json.loads(line) for line in (out / "stylevar_runs.jsonl").read_text().splitlines()]
    assert [r["seed"] for r in log] == list(range(11, 19))
    assert "8 written, 0 skipped (unreadable input)" in capsys.readouterr().out

    victim = out / "pic1__pic0__1.png"
    kept = np.asarray(Image.open(victim))
    victim.unlink()
    assert main(args + ["--skip-existing"]) == 0
    printed = capsys.readouterr().out
    assert "1 written, 0 skipped (unreadable input), 7 already there" in printed
    # same seed, same image, to the byte: the resumed run computes it in a batch of the same size
    assert np.array_equal(np.asarray(Image.open(victim)), kept)


def test_keep_size_squash_and_jpeg(tmp_path, data, ours_dir):
    out = tmp_path / "r.jpg"
    assert (
        main(
            [
                "stylize",
                str(data["content"][0]),
                str(data["style"][0]),
                "-o",
                str(out),
                "--checkpoint",
                str(ours_dir),
                "--fit",
                "squash",
                "--keep-size",
                "--seed",
                "0",
                "-q",
            ]
        )
        == 0
    )
    assert Image.open(out).size == Image.open(data["content"][0]).size == (80, 60)


def test_fast_path_options_match_the_python_pipeline(tmp_path, data, ours_dir):
    """--dtype bf16 --cuda-graphs (the static path runs eagerly on the CPU) writes what the pipeline gives."""
    from stylevar.stylize.pipeline import StyleVARPipeline

    out = tmp_path / "fast.png"
    c, s = str(data["content"][0]), str(data["style"][0])
    args = ["stylize", c, s, "-o", str(out), "--checkpoint", str(ours_dir), "--seed", "3", "-q"]
    assert main([*args, "--dtype", "bf16", "--cuda-graphs"]) == 0
    pipe = StyleVARPipeline.from_pretrained(str(ours_dir), device="cpu")
    want = pipe(c, s, seed=3, dtype="bf16", cuda_graphs=True, output_type="pt").images[0]
    got = torch.from_numpy(np.asarray(Image.open(out), dtype=np.float32) / 255).permute(2, 0, 1)
    assert (got - want).abs().max() <= 1 / 255 + 1e-6


def _bad(tmp_path, args, capsys):
    out = tmp_path / "outdir"
    code = main(["stylize", *args[:2], "-o", str(out), *args[2:], "-q"])
    err = capsys.readouterr().err.strip()
    assert code == 1, err
    assert err.startswith("stylevar: error: ") and "\n" not in err, err
    assert not out.exists() or not any(out.iterdir()), "nothing may be written on a user error"
    return err


def test_every_bad_input_gets_one_line(tmp_path, data, ours_dir, upstream_dir, capsys):
    c, s = str(data["content"][0]), str(data["style"][0])
    ck = ["--checkpoint", str(ours_dir)]
    notimg = tmp_path / "notes.png"
    notimg.write_text("not an image")
    tiny = tmp_path / "tiny.png"
    Image.new("RGB", (8, 8)).save(tiny)
    badfolder = tmp_path / "badfolder"
    badfolder.mkdir()
    Image.open(data["content"][0]).save(badfolder / "a.png")
    (badfolder / "b.jpg").write_bytes(b"\xff\xd8\xff\xe0garbage")
    emptyfolder = tmp_path / "empty"
    emptyfolder.mkdir()
    (emptyfolder / "readme.txt").write_text("x")
    pickled = tmp_path / "pickled"
    pickled.mkdir()
    torch.save(
        {
            "model": torch.load(upstream_dir / "StyleVAR-GRPO.pth")["model"],
            "args": __import__("argparse").Namespace(a=1),
        },
        pickled / "StyleVAR-GRPO.pth",
    )
    (pickled / "vae_ch160v4096z32.pth").write_bytes((upstream_dir / "vae_ch160v4096z32.pth").read_bytes())
    cases = [
        ([str(tmp_path / "missing.png"), s, *ck], "content path not found"),
        ([str(notimg), s, *ck], "not an image file"),
        ([c, str(tiny), *ck], "smaller than"),
        ([str(badfolder), s, *ck], "b.jpg"),
        ([str(emptyfolder), s, *ck], "has no image files"),
        (
            [c, s, "--checkpoint", str(upstream_dir / "vae_ch160v4096z32.pth")],
            "VQ-VAE (tokenizer) checkpoint",
        ),
        ([c, s, "--checkpoint", str(tmp_path / "nothing_here")], "not found"),
        ([c, s, "--checkpoint", str(pickled)], "--trust-checkpoint"),
        ([c, s, *ck, "--alpha", "0.1,0.2"], "alpha needs one value per scale"),
        ([c, s, *ck, "--top-p", "2"], "top_p"),
    ]
    if not torch.cuda.is_available():
        cases.append(([c, s, *ck, "--device", "cuda"], "CUDA is not available"))
    for args, fragment in cases:
        err = _bad(tmp_path, args, capsys)
        assert fragment in err, (args, err)
    # a file name for many outputs
    code = main(["stylize", str(data["content"][0].parent), s, "-o", str(tmp_path / "one.png"), *ck, "-q"])
    assert code == 1 and "give a folder" in capsys.readouterr().err
    # trusted pickled file works
    assert (
        main(
            [
                "stylize",
                c,
                s,
                "-o",
                str(tmp_path / "ok.png"),
                "--checkpoint",
                str(pickled),
                "--trust-checkpoint",
                "-q",
            ]
        )
        == 0
    )


def test_convert_then_info(tmp_path, upstream_dir, capsys):
    out = tmp_path / "converted"
    assert (
        main(["convert", str(upstream_dir / "StyleVAR-GRPO.pth"), "-o", str(out), "--dtype", "bfloat16"]) == 0
    )
    assert sorted(os.listdir(out)) == ["config.json", "model.safetensors", "vqvae.safetensors"]
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    info = json.loads(capsys.readouterr().out)
    assert info["stylevar"]["patch_nums"] == [1, 2, 3, 4] and info["resolution"] == 64
    assert info["stylevar"]["alpha"] == [0.2, 0.4, 0.6, 0.8] and info["info"]["variant"] == "grpo"


def test_offline_hub_default_gives_a_clear_error(tmp_path, data, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    err = _bad(
        tmp_path,
        [str(data["content"][0]), str(data["style"][0]), "--cache-dir", str(tmp_path / "emptycache")],
        capsys,
    )
    assert "Senfier-LiqiJing/StyleVAR" in err and "offline" in err


def test_only_inference_commands_change_the_allocator(tmp_path, monkeypatch, capsys):
    """glibc's 1 MiB mmap threshold is for inference; the training commands keep the default policy
    (page faults on every step's activations made training 1.57x slower)."""
    import stylevar.cli as cli

    calls = []
    monkeypatch.setattr(cli, "release_memory_promptly", lambda: calls.append(1))
    assert main(["info", str(tmp_path / "missing.pth")]) != 0 and calls == [1]
    assert main(["train-tokenizer", str(tmp_path / "no-images"), "-o", str(tmp_path / "tok")]) != 0
    assert main(["sft", str(tmp_path / "no-data"), "-o", str(tmp_path / "sft"), "--depth", "2"]) != 0
    assert calls == [1] and cli.TRAINING_COMMANDS >= {"demo", "train-tokenizer", "sft", "grpo"}


# ---------------------------------------------------------------------------------------- the help
def _subparsers() -> dict:
    import argparse

    from stylevar.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {"stylevar": parser, **{f"stylevar {name}": p for name, p in sub.choices.items()}}


def _options(parser) -> list:
    import argparse

    skip = (argparse._HelpAction, argparse._VersionAction, argparse._SubParsersAction)
    return [a for a in parser._actions if not isinstance(a, skip)]


def test_every_option_has_help_that_states_its_default():
    """Every argument of every command explains itself, and one with a default (not None, not off) says it."""
    missing = []
    for command, parser in _subparsers().items():
        for a in _options(parser):
            name = "/".join(a.option_strings) or a.dest
            if not (a.help or "").strip():
                missing.append(f"{command} {name}: no help")
            elif a.default is not None and a.default is not False and "default" not in a.help.lower():
                missing.append(f"{command} {name}: default {a.default!r} not stated")
    assert not missing, "\n".join(missing)


def test_a_stated_default_is_the_real_one():
    """``(default: X)`` in an option's help is the value the option takes when left out (``stylevar dpo``
    sets its objective to dpo: its help says so)."""
    import re

    wrong = []
    for command, parser in _subparsers().items():
        formatter = parser._get_formatter()
        for a in _options(parser):
            if not a.help or a.default is None or isinstance(a.default, bool):
                continue
            m = re.search(r"\(default: ([^)]*)\)", formatter._expand_help(a))
            if m is None:
                continue
            shown = m.group(1)
            first = re.split(r"[ ,;]", shown, maxsplit=1)[0]
            if a.default in ([], ""):
                ok = shown.startswith("none")
            elif isinstance(a.default, (int, float)):  # a number, or what the value means (0: one per GPU)
                ok = not re.fullmatch(r"[-+.\de]+", first) or float(first) == a.default
            else:
                ok = first == (",".join(map(str, a.default)) if isinstance(a.default, tuple) else a.default)
            if not ok:
                wrong.append(f"{command} {'/'.join(a.option_strings)}: shows {shown!r}, takes {a.default!r}")
    assert not wrong, "\n".join(wrong)
    dpo = {a.dest: a for a in _subparsers()["stylevar dpo"]._actions}["objective"]
    assert dpo.default == "dpo"


def _example_commands(epilog: str) -> list[list[str]]:
    """The example commands of an epilog (``\\``-continued lines joined), as argv after ``stylevar``."""
    import shlex

    commands, current = [], ""
    for line in epilog.splitlines():
        text = line.strip()
        if not line.startswith("  ") or text.startswith("#"):
            continue
        current = f"{current} {text.removesuffix(chr(92)).strip()}".strip()
        if not text.endswith(chr(92)):
            argv = shlex.split(current)
            commands.append(argv[argv.index("stylevar") + 1 :])
            current = ""
    return commands


def test_every_command_ends_with_examples_that_parse():
    from stylevar.cli import build_parser, parse

    for command, parser in _subparsers().items():
        assert parser.epilog and parser.epilog.startswith("examples:"), command
        commands = _example_commands(parser.epilog)
        assert len(commands) >= 2, (command, parser.epilog)
        for argv in commands:
            if command != "stylevar":
                assert "stylevar " + argv[0] == command, (command, argv)
            parse(build_parser(), argv)  # a misspelt flag or a missing argument exits


def _help(capsys, monkeypatch, *argv: str) -> str:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as e:
        main([*argv, "--help"])
    assert e.value.code == 0
    return capsys.readouterr().out


def test_help_texts_agree_with_the_code(capsys, monkeypatch):
    from torchvision.models import VGG16_Weights, VGG19_Weights

    from stylevar.cli.common import VGG16_FILE, VGG19_FILE
    from stylevar.config import DTYPES
    from stylevar.eval.suite import METRICS
    from stylevar.metric_names import METRIC_GROUPS, METRIC_NAMES, SET_METRICS

    # the usage names the inputs as the text does; the examples come after the options, raw
    text = _help(capsys, monkeypatch, "stylize")
    assert text.startswith("usage: stylevar stylize CONTENT STYLE -o OUTPUT [options]\n")
    assert "[content]" not in text and text.index("--seed") < text.index("--ray-workers") < text.index(
        "examples:"
    )
    assert "  stylevar stylize photo.jpg monet.jpg -o out.png --seed 0\n" in text and "exit codes:" in text
    text = _help(capsys, monkeypatch, "video")
    assert "VIDEO STYLE" in text and "into OUTPUT" in text and "-o OUTPUT, --output OUTPUT" in text
    # one spelling of the output flag everywhere
    for command, parser in _subparsers().items():
        flags = {s for a in parser._actions for s in a.option_strings}
        assert "--out" not in flags, command
        if "-o" in flags:
            assert next(a for a in parser._actions if "-o" in a.option_strings).option_strings == [
                "-o",
                "--output",
            ], command
    # the metric registry: one list of names, all of them in evaluate's help
    assert tuple(METRICS) == METRIC_NAMES
    assert {n for n, info in METRICS.items() if not info.per_image} == set(SET_METRICS)
    assert all(set(group) <= set(METRIC_NAMES) for group in METRIC_GROUPS.values())
    text = _help(capsys, monkeypatch, "evaluate")
    assert all(name in text for name in (*METRIC_NAMES, *METRIC_GROUPS)) and "leakage, structure" in text
    # torchvision's weight files, named once
    assert VGG19_Weights.IMAGENET1K_V1.url.endswith("/" + VGG19_FILE)
    assert VGG16_Weights.IMAGENET1K_V1.url.endswith("/" + VGG16_FILE)
    for command in ("evaluate", "grpo", "dpo"):
        assert VGG19_FILE in _help(capsys, monkeypatch, command)
    assert VGG16_FILE in _help(capsys, monkeypatch, "train-tokenizer")
    # --dtype offers the canonical names and takes the long ones
    for command, parser in _subparsers().items():
        for a in parser._actions:
            if "--dtype" in a.option_strings:
                assert set(a.choices) <= set(DTYPES), (command, a.choices)
                assert a.type("bfloat16") == "bf16", command


def test_usage_errors_exit_2_with_the_usage_and_import_no_torch(tmp_path, capsys):
    cases = [
        (["stylize", "-o", "x.png"], "give CONTENT and STYLE"),
        (["stylize", "a.png", "-o", "x.png"], "give STYLE"),
        (["stylize", "a.png", "b.png", "--pairs", "p.csv", "-o", "x"], "not both"),
        (["stylize", "a.png", "b.png", "-o", "x", "--ray", "--grid"], "--grid"),
        (["info"], "CHECKPOINT"),
    ]
    for argv, fragment in cases:
        with pytest.raises(SystemExit) as e:
            main(argv)
        err = capsys.readouterr().err
        assert e.value.code == 2 and f"usage: stylevar {argv[0]}" in err and fragment in err, (argv, err)
    code = (
        "import sys\nfrom stylevar.cli import main\ntry:\n    main(['stylize', '-o', 'x.png'])\n"
        "except SystemExit as e:\n    print(e.code, 'torch' in sys.modules)"
    )
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.stdout.split() == ["2", "False"], res.stdout + res.stderr
