"""The house rules of docs/architecture.md, checked: layers, a command line that answers without torch,
flags made from config fields, one (de)serialisation, and public names where users find them."""

from __future__ import annotations

import dataclasses
import importlib
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import pytest

from helpers import REPO_ROOT

SRC = REPO_ROOT / "src" / "stylevar"


def _python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)


# ---------------------------------------------------------------------------------------- structure
def test_import_contracts_hold():
    """pyproject.toml's import-linter contracts: the layers, and no import cycle (function-local included)."""
    exe = shutil.which("lint-imports") or str(Path(sys.executable).parent / "lint-imports")
    res = subprocess.run([exe], cwd=REPO_ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0 and "0 broken" in res.stdout, res.stdout[-3000:] + res.stderr[-2000:]


def test_code_cites_docs_in_the_repository():
    cited = [p.relative_to(SRC).as_posix() for p in SRC.rglob("*.py") if "upstream-spec" in p.read_text()]
    assert not cited, cited
    assert (REPO_ROOT / "docs" / "upstream.md").is_file() and (
        REPO_ROOT / "docs" / "architecture.md"
    ).is_file()


# ---------------------------------------------------------------------------------------- the command line
@pytest.mark.parametrize(
    "argv",
    [
        ["--help"],
        ["sft", "--help"],
        ["grpo", "--help"],
        ["train-tokenizer", "--help"],
        ["evaluate", "--help"],
        ["stylize", "a.png", "b.png", "-o", "x", "--num_samples", "2"],
    ],
)
def test_help_and_argument_errors_import_no_torch(argv):
    code = f"""
import sys
from stylevar.cli import main
try:
    main({argv!r})
except SystemExit as e:
    print("exit", e.code)
print("torch" in sys.modules, "numpy" in sys.modules, "PIL" in sys.modules)
"""
    res = _python(code)
    assert res.stdout.strip().splitlines()[-1] == "False False False", res.stdout[-500:] + res.stderr[-500:]


def test_an_argument_error_shows_the_subcommand_and_the_closest_flag():
    res = _python(
        "from stylevar.cli import main; main(['stylize', 'a.png', 'b.png', '-o', 'x', '--num_samples', '2'])"
    )
    assert res.returncode == 2
    assert "usage: stylevar stylize" in res.stderr and "did you mean --num-samples?" in res.stderr
    res = _python(
        "from stylevar.cli import main; main(['sft', 'data', '-o', 'r', '--init', 'c', '--micro_batch', '2'])"
    )
    assert "usage: stylevar sft" in res.stderr and "did you mean --micro-batch?" in res.stderr
    res = _python("from stylevar.cli import main; main(['stylze'])")
    assert res.returncode == 2 and "did you mean 'stylize'?" in res.stderr


def test_trainer_flags_are_the_config_fields():
    from stylevar.cli import build_parser
    from stylevar.training.config import GRPOConfig, SFTConfig, TokenizerConfig

    sub = next(a for a in build_parser()._actions if a.dest == "command").choices
    for command, cls, keep_defaults in (
        ("sft", SFTConfig, True),
        ("grpo", GRPOConfig, True),
        ("train-tokenizer", TokenizerConfig, False),
    ):
        actions = {a.dest: a for a in sub[command]._actions}
        for f in dataclasses.fields(cls):
            if not f.metadata.get("flag", True):
                continue  # set by a hand-written flag (--fsdp, --vmr, --full-finetune ...)
            a = actions[f.name]
            flag = "--" + f.name.replace("_", "-")
            if isinstance(f.default, bool):  # --name / --no-name
                assert a.option_strings == [flag, "--no-" + flag[2:]]
            else:
                assert a.option_strings == [flag]
            assert a.default == (f.default if keep_defaults else None), (command, f.name)
            assert f.metadata["help"].split(" (")[0].replace("%", "%%") in a.help
            if f.metadata.get("choices"):
                assert tuple(a.choices) == f.metadata["choices"]


# ---------------------------------------------------------------------------------------- configs
def test_every_config_shares_one_serialisation_and_model_configs_are_frozen():
    from stylevar.config import Sampling, Serialisable, StyleVARConfig, VQVAEConfig
    from stylevar.data import TripletTransform
    from stylevar.demo import DemoConfig
    from stylevar.errors import ConfigError
    from stylevar.eval.benchmark import EvalSettings
    from stylevar.models.lora import LoRAConfig
    from stylevar.stylize.settings import Leakage, Output, Regions, RunPolicy, VideoOptions
    from stylevar.training.config import GRPOConfig, SFTConfig, TokenizerConfig

    for cls in (
        StyleVARConfig,
        VQVAEConfig,
        Sampling,
        Output,
        Leakage,
        Regions,
        RunPolicy,
        VideoOptions,
        LoRAConfig,
        TokenizerConfig,
        SFTConfig,
        GRPOConfig,
        DemoConfig,
        EvalSettings,
        TripletTransform,
    ):
        assert issubclass(cls, Serialisable)
        c = cls()
        assert cls.from_dict(c.to_dict()) == c
        with pytest.raises(ConfigError, match="unknown field"):
            cls.from_dict({**c.to_dict(), "no_such_field": 1})
    cfg = StyleVARConfig(depth=2, embed_dim=64, num_heads=2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.drop_path_rate = 0.0  # the blocks are built: the record may not drift from the model
    assert dataclasses.replace(cfg, alpha="sft").alpha != cfg.alpha


# ---------------------------------------------------------------------------------------- public names
def test_public_names_stay_where_users_find_them():
    import stylevar
    import stylevar.models as M

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert stylevar.StyleVARPipeline.__name__ == "StyleVARPipeline"
        assert stylevar.load_pretrained is importlib.import_module("stylevar.io").load_pretrained
        assert stylevar.save_pretrained is importlib.import_module("stylevar.io").save_pretrained
        assert {"StyleVAR", "VQVAE", "Conditioning", "GenerationOutput"} <= set(dir(M))
        from stylevar.training import DPOTrainer, GRPOTrainer, SFTConfig, SFTTrainer, TokenizerTrainer  # noqa: F401
    with pytest.raises(AttributeError):
        stylevar.no_such_name  # noqa: B018


def test_no_generated_stub_files_in_the_package():
    """Gradio writes a .pyi beside the source of every component subclass; the app must not make any."""
    assert not list(SRC.rglob("*.pyi"))
