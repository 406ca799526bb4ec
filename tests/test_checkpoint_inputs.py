"""Checkpoints from outside pass one validator before any work starts: config values of the right type,
config files that are UTF-8 JSON of a sane depth, finite weights, files that are checkpoints at all,
folders where folders belong. Every refusal is one line naming the file (never a traceback); the bad
files are made for real (safetensors folders, .pth files, config.json files)."""

from __future__ import annotations

import argparse
import copy
import json
import math
import pickle
import shutil
import zipfile

import pytest
import torch

from stylevar.cli import main
from stylevar.config import Sampling, StyleVARConfig, VQVAEConfig
from stylevar.errors import CheckpointError, ConfigError
from stylevar.io import (
    load_checkpoint_dir,
    load_pretrained,
    load_training_checkpoint,
    load_vqvae,
    save_lora,
    save_pretrained,
    save_vqvae,
)
from stylevar.io.safe import file_kind, first_nonfinite, read_file
from stylevar.io.vqvae import TOKENIZER_TRAINING_FORMAT
from stylevar.models.lora import LoRAConfig, apply_lora
from stylevar.training.config import GRPOConfig, SFTConfig, TokenizerConfig

VAE_NAME = "vae_ch160v4096z32.pth"


def _one_line(excinfo) -> str:
    msg = str(excinfo.value)
    assert "\n" not in msg, msg
    return msg


def _edited_copy(src, dest, edit, name="config.json"):
    """A copy of the folder ``src`` whose ``name`` JSON went through ``edit(raw)``."""
    shutil.copytree(src, dest)
    raw = json.loads((dest / name).read_text())
    edit(raw)
    (dest / name).write_text(json.dumps(raw))
    return dest


# ---------------------------------------------------------------------------------------- 1. config types
@pytest.mark.parametrize(
    "cls, values, fragment",
    [
        (StyleVARConfig, {"alpha": ["x"]}, "StyleVARConfig.alpha must be a list of numbers or a string"),
        (StyleVARConfig, {"depth": True}, "StyleVARConfig.depth must be an integer (int), got True"),
        (StyleVARConfig, {"depth": 2.0}, "StyleVARConfig.depth must be an integer (int), got 2.0"),
        (StyleVARConfig, {"clip_vision": [1, 2]}, "clip_vision must be an object or null (dict | None)"),
        (VQVAEConfig, {"patch_nums": [1, 2.5]}, "VQVAEConfig.patch_nums must be a list of integers"),
        (VQVAEConfig, {"using_sa": 1}, "VQVAEConfig.using_sa must be true or false (bool), got 1"),
        (Sampling, {"temperature": math.nan}, "temperature must be a finite number (float), got nan"),
        (Sampling, {"top_p": math.inf}, "Sampling.top_p must be a finite number"),
        (LoRAConfig, {"alpha": 10**400}, "LoRAConfig.alpha must be a finite number (float), got 1000"),
        (StyleVARConfig, {"depth": 2**64}, "StyleVARConfig.depth must be an integer (int), got 1844"),
        (TokenizerConfig, {"betas": [0.5]}, "TokenizerConfig.betas must be a list of 2 numbers"),
        (SFTConfig, {"epochs": False}, "SFTConfig.epochs must be an integer"),
        (SFTConfig, {"cache_tokens": "yes"}, "SFTConfig.cache_tokens must be true or false"),
        (GRPOConfig, {"lr": True}, "GRPOConfig.lr must be a finite number"),
        (GRPOConfig, {"lora_targets": ["attn.proj", 3]}, "GRPOConfig.lora_targets must be a list of strings"),
        (LoRAConfig, {"targets": "ffn.fc1"}, "LoRAConfig.targets must be a list of strings"),
        (StyleVARConfig, [1, 2], "StyleVARConfig: expected an object of fields (a dict), got [1, 2]"),
    ],
)
def test_from_dict_checks_each_value_against_its_annotation(cls, values, fragment):
    with pytest.raises(ConfigError) as e:
        cls.from_dict(values)
    assert fragment in _one_line(e)


def test_from_dict_takes_what_json_gives():
    """Ints where floats are expected, lists for tuples, null for optional fields, a preset name for alpha."""
    assert Sampling.from_dict({"top_p": 1, "temperature": 2}).temperature == 2.0
    assert VQVAEConfig.from_dict({"patch_nums": [1, 2, 4]}).patch_nums == (1, 2, 4)
    assert StyleVARConfig.from_dict({"alpha": "sft", "clip_vision": None}).alpha[0] == 0.1
    assert StyleVARConfig.from_dict({"alpha": [0, 1] * 5}).alpha == (0.0, 1.0) * 5
    assert TokenizerConfig.from_dict({"betas": [0, 0.5]}).betas == (0.0, 0.5)
    for cls in (
        StyleVARConfig,
        VQVAEConfig,
        Sampling,
        LoRAConfig,
        TokenizerConfig,
        SFTConfig,
        GRPOConfig,
    ):
        c = cls()
        assert cls.from_dict(json.loads(json.dumps(c.to_dict()))) == c, cls.__name__


@pytest.mark.parametrize(
    "edit, fragment",
    [
        (lambda r: r["stylevar"].update(alpha=["x"]), "StyleVARConfig.alpha must be a list of numbers"),
        (lambda r: r["stylevar"].update(depth="2"), "StyleVARConfig.depth must be an integer (int), got '2'"),
        (lambda r: r["stylevar"].update(clip_vision=[1]), "StyleVARConfig.clip_vision must be an object"),
        (lambda r: r["vqvae"].update(ch=32.5), "VQVAEConfig.ch must be an integer"),
        (lambda r: r["sampling"].update(top_k=[900]), "Sampling.top_k must be an integer"),
        (lambda r: r.update(info=[1, 2]), '"info" must be an object ({...}), got list [1, 2]'),
        (lambda r: r.update(stylevar="d20"), '"stylevar" must be an object'),
        (lambda r: r.update(sampling=None), '"sampling" must be an object'),
        (lambda r: r.pop("vqvae"), 'has no "vqvae" section'),
    ],
)
def test_our_config_json_with_wrong_types_is_one_line_naming_it(tmp_path, ours_dir, edit, fragment):
    ck = _edited_copy(ours_dir, tmp_path / "ck", edit)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(ck)
    msg = _one_line(e)
    assert msg.startswith(str(ck / "config.json")) and fragment in msg, msg


def test_an_int_where_a_float_is_stored_still_loads(tmp_path, ours_dir, tiny):
    ck = _edited_copy(ours_dir, tmp_path / "ck", lambda r: r["stylevar"].update(mlp_ratio=4, norm_eps=0))
    assert load_pretrained(ck).model.config.mlp_ratio == tiny[0].config.mlp_ratio == 4.0


def test_tokenizer_folder_and_training_checkpoint_configs_are_checked(tmp_path, tiny):
    tok = save_vqvae(tmp_path / "tok", tiny[1])
    raw = json.loads((tok / "config.json").read_text())
    raw["vqvae"]["ch"] = "32"
    (tok / "config.json").write_text(json.dumps(raw))
    with pytest.raises(CheckpointError) as e:
        load_vqvae(tok)
    msg = _one_line(e)
    assert msg.startswith(str(tok / "config.json")) and "VQVAEConfig.ch must be an integer" in msg
    pt = tmp_path / "last.pt"
    vq = tiny[1].config.to_dict()
    torch.save({"format": TOKENIZER_TRAINING_FORMAT, "config": {"vqvae": {**vq, "ch_mult": "12"}}}, pt)
    with pytest.raises(CheckpointError) as e:
        load_vqvae(pt)
    assert _one_line(e).startswith(f"{pt}: invalid VQ-VAE configuration (VQVAEConfig.ch_mult must be a list")
    torch.save({"format": TOKENIZER_TRAINING_FORMAT, "config": {"vqvae": vq}, "model": [1]}, pt)
    with pytest.raises(CheckpointError, match="not a state dict of tensors"):
        load_vqvae(pt)


def test_lora_folder_config_is_checked(tmp_path, tiny, ours_dir):
    model = copy.deepcopy(tiny[0])
    apply_lora(model, LoRAConfig(rank=2, alpha=4.0), generator=torch.Generator().manual_seed(0))
    good = save_lora(tmp_path / "adapter", model, info={"base": str(ours_dir)})
    for i, (edit, fragment) in enumerate(
        [
            (lambda r: r["info"].update(base=5), 'info "base" must be the base checkpoint\'s path'),
            (lambda r: r["lora"].update(rank="2"), "LoRAConfig.rank must be an integer"),
            (lambda r: r.update(info="x"), '"info" must be an object'),
            (lambda r: r["stylevar"].update(depth=[2]), "StyleVARConfig.depth must be an integer"),
        ]
    ):
        bad = _edited_copy(good, tmp_path / f"bad{i}", edit, "adapter_config.json")
        with pytest.raises(CheckpointError) as e:
            load_pretrained(bad)
        msg = _one_line(e)
        assert str(bad / "adapter_config.json") in msg and fragment in msg, msg


# ---------------------------------------------------------------------------------------- 2. unreadable JSON
BAD_JSON = {
    "latin-1": (
        b'{"format": "stylevar", "info": {"note": "caf\xe9"}}',
        "is not UTF-8 text (byte 0xe9 at offset",
    ),
    "deep": (b"[" * 100_000 + b"]" * 100_000, "its JSON is nested too deeply to read"),
    "broken": (b'{"format": "stylevar",', "is not valid JSON (Expecting property name"),
    "huge int": (b'{"format": "stylevar", "x": ' + b"9" * 5000 + b"}", "Exceeds the limit (4300 digits)"),
}


@pytest.mark.parametrize("case", sorted(BAD_JSON))
def test_a_config_that_is_not_utf8_json_is_one_line_naming_it(tmp_path, ours_dir, case):
    content, fragment = BAD_JSON[case]
    ck = tmp_path / "ck"
    shutil.copytree(ours_dir, ck)
    (ck / "config.json").write_bytes(content)
    lora = tmp_path / "lora"
    lora.mkdir()
    (lora / "adapter_config.json").write_bytes(content)
    for load, config_file in [
        (lambda: load_pretrained(ck), ck / "config.json"),
        (lambda: load_vqvae(ck), ck / "config.json"),
        (lambda: load_pretrained(lora), lora / "adapter_config.json"),
    ]:
        with pytest.raises(CheckpointError) as e:
            load()
        msg = _one_line(e)
        assert msg.startswith(str(config_file)) and fragment in msg, msg


def test_a_run_folder_whose_final_config_is_unreadable_gets_the_plain_message(tmp_path):
    run = tmp_path / "run"
    (run / "final").mkdir(parents=True)
    (run / "final" / "config.json").write_bytes(BAD_JSON["deep"][0])
    with pytest.raises(CheckpointError) as e:
        load_pretrained(run)
    assert _one_line(e).startswith(f"{run} holds neither a stylevar checkpoint")


def test_a_config_with_a_utf8_bom_loads(tmp_path, ours_dir, tiny):
    ck = tmp_path / "ck"
    shutil.copytree(ours_dir, ck)
    (ck / "config.json").write_bytes(b"\xef\xbb\xbf" + (ours_dir / "config.json").read_bytes())
    assert load_pretrained(ck).model.config.alpha == tiny[0].config.alpha


# ---------------------------------------------------------------------------------------- 3. finite weights
def _poisoned(module: torch.nn.Module, key: str, value: float) -> torch.nn.Module:
    m = copy.deepcopy(module)
    with torch.no_grad():
        m.state_dict()[key].view(-1)[1] = value
    return m


@pytest.mark.parametrize("value, word", [(math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "inf")])
@pytest.mark.parametrize("dtype", [None, torch.bfloat16])
def test_nonfinite_weights_in_our_folder_are_refused_naming_file_and_tensor(
    tmp_path, tiny, value, word, dtype
):
    model, vae = tiny
    key = "blocks.1.ffn.fc2.weight"
    ck = save_pretrained(tmp_path / "m", _poisoned(model, key, value), vae, dtype=dtype)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(ck)
    msg = _one_line(e)
    assert msg.startswith(f"{ck / 'model.safetensors'}: tensor {key} holds {word} values"), msg
    vkey = "decoder.conv_out.weight"
    ck = save_pretrained(tmp_path / "v", model, _poisoned(vae, vkey, value), dtype=dtype)
    for load in (load_pretrained, load_vqvae):
        with pytest.raises(CheckpointError) as e:
            load(ck)
        assert _one_line(e).startswith(f"{ck / 'vqvae.safetensors'}: tensor {vkey} holds {word}")


def test_nonfinite_weights_in_upstream_files_are_refused_naming_the_first(tmp_path, tiny, upstream_dir):
    model, vae = tiny
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    first, later = "word_embed.weight", "head.weight"
    assert list(sd).index(first) < list(sd).index(later)
    sd[later].view(-1)[0] = math.nan
    sd[first].view(-1)[0] = math.inf
    bad = tmp_path / "StyleVAR-GRPO.pth"
    torch.save({"model": sd}, bad)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(bad, vae=upstream_dir / VAE_NAME)
    assert _one_line(e).startswith(f"{bad}: tensor {first} holds inf values")
    bad_vae = tmp_path / VAE_NAME
    torch.save(_poisoned(vae, "quantize.embedding.weight", math.nan).state_dict(), bad_vae)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(upstream_dir / "StyleVAR-GRPO.pth", vae=bad_vae)
    assert _one_line(e).startswith(f"{bad_vae}: tensor quantize.embedding.weight holds NaN")
    # the attention mask holds -inf by design; NaN there is refused all the same
    sd = {k: v.clone() for k, v in model.state_dict().items()}
    assert sd["attn_bias_for_masking"].min() == -math.inf
    sd["attn_bias_for_masking"].view(-1)[0] = math.nan
    torch.save({"model": sd}, bad)
    with pytest.raises(CheckpointError, match="tensor attn_bias_for_masking holds NaN"):
        load_pretrained(bad, vae=upstream_dir / VAE_NAME)


def test_first_nonfinite_per_dtype():
    ok = {"w": torch.randn(5), "idx": torch.tensor([1, 2]), "empty": torch.zeros(0), "n": 3}
    assert first_nonfinite(ok) is None
    for dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        for value, word in ((math.nan, "NaN"), (math.inf, "inf"), (-math.inf, "inf")):
            t = torch.randn(1000).to(dtype)
            t[637] = value
            assert first_nonfinite({**ok, "x": t}) == ("x", word), (dtype, value)
    mask = torch.tensor([0.0, -math.inf])
    assert first_nonfinite({"attn_bias_for_masking": mask, "other": mask}) == ("other", "inf")
    assert first_nonfinite({"attn_bias_for_masking": torch.tensor([0.0, math.inf])}) is not None


# ---------------------------------------------------------------------------------------- 4. not a checkpoint
NOT_CHECKPOINTS = {
    "text": (b"not a checkpoint\n" * 3, "it looks like text ('not a checkpoint not'...)"),
    "json": (b'{"model": [1, 2]}\n', "it looks like text ('{\"model\": [1, 2]}')"),
    "empty": (b"", "it is empty"),
    "binary": (bytes(range(256)), "it starts with the bytes 00 01 02 03"),
    "pickle": (pickle.dumps({"model": 1}, protocol=4), "it is a Python pickle that torch.save did not write"),
}


@pytest.mark.parametrize("case", sorted(NOT_CHECKPOINTS))
def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, upstream_dir, case):
    content, fragment = NOT_CHECKPOINTS[case]
    bad = tmp_path / "StyleVAR-GRPO.pth"
    bad.write_bytes(content)
    for load in (
        lambda: load_pretrained(bad, vae=upstream_dir / VAE_NAME),  # as the transformer
        lambda: load_pretrained(upstream_dir / "StyleVAR-GRPO.pth", vae=bad),  # as the VQ-VAE
        lambda: load_vqvae(bad),
    ):
        with pytest.raises(CheckpointError) as e:
            load()
        msg = _one_line(e)
        assert msg.startswith(f"{bad} is not a checkpoint: {fragment}"), msg
        assert "--trust-checkpoint" not in msg and "pickled" not in msg
        assert "PyTorch file" in msg and ".safetensors" in msg  # what is accepted


def test_a_zip_that_torch_did_not_write(tmp_path, upstream_dir):
    bad = tmp_path / "model.pth"
    with zipfile.ZipFile(bad, "w") as z:
        z.writestr("readme.txt", "hello")
    with pytest.raises(CheckpointError) as e:
        load_pretrained(bad, vae=upstream_dir / VAE_NAME)
    msg = _one_line(e)
    assert (
        "not a valid PyTorch checkpoint" in msg and "zip archive" in msg and "--trust-checkpoint" not in msg
    )


@pytest.mark.parametrize("legacy", [False, True])
def test_only_real_pickled_objects_point_at_the_trust_flag(tmp_path, tiny, upstream_dir, legacy):
    fmt = {"_use_new_zipfile_serialization": False} if legacy else {}
    f = tmp_path / "StyleVAR-GRPO.pth"
    torch.save({"model": tiny[0].state_dict(), "args": argparse.Namespace(lr=1e-5)}, f, **fmt)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(f, vae=upstream_dir / VAE_NAME)
    msg = _one_line(e)
    assert (
        msg.startswith(f"{f} contains pickled Python objects (argparse.Namespace)")
        and "--trust-checkpoint" in msg
    )
    assert load_pretrained(f, vae=upstream_dir / VAE_NAME, allow_pickle=True).model.config.depth == 2
    torch.save({"model": tiny[0].state_dict()}, f, **fmt)  # plain tensors load, legacy format too
    assert load_pretrained(f, vae=upstream_dir / VAE_NAME).model.config.depth == 2


def test_the_format_is_told_by_content_not_name(tmp_path, tiny):
    from safetensors.torch import save_file

    vae_file = tmp_path / VAE_NAME  # safetensors content under a .pth name
    save_file({k: v.contiguous() for k, v in tiny[1].state_dict().items()}, str(vae_file))
    model_file = tmp_path / "StyleVAR-GRPO.pt"
    torch.save({"model": tiny[0].state_dict()}, model_file)
    ckpt = load_pretrained(model_file, vae=vae_file)
    assert torch.equal(ckpt.vae.decoder.conv_out.weight, tiny[1].decoder.conv_out.weight)
    misnamed = tmp_path / "StyleVAR-GRPO.safetensors"  # torch.load itself reads this suffix as safetensors
    shutil.copy(model_file, misnamed)
    with pytest.raises(CheckpointError) as e:
        load_pretrained(misnamed, vae=vae_file)
    assert (
        _one_line(e)
        == f"{misnamed} is a PyTorch (torch.save) file, not safetensors: rename it StyleVAR-GRPO.pth"
    )


def test_a_safetensors_header_that_begins_like_a_pickle(tmp_path):
    """A 640-byte header's length reads 80 02 ..., a pickle's first two bytes: still safetensors."""
    header = json.dumps({"w": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}).encode()
    f = tmp_path / "w.pth"
    f.write_bytes(
        (640).to_bytes(8, "little") + header.ljust(640) + torch.tensor([1.0, 2.0]).numpy().tobytes()
    )
    assert f.read_bytes()[:2] == b"\x80\x02" and file_kind(f) == "safetensors"
    assert torch.equal(read_file(f)["w"], torch.tensor([1.0, 2.0]))


def test_a_folder_where_a_file_belongs_and_the_reverse(tmp_path, upstream_dir, ours_dir):
    folder = tmp_path / "a_folder"
    folder.mkdir()
    with pytest.raises(CheckpointError) as e:
        load_pretrained(upstream_dir / "StyleVAR-GRPO.pth", vae=folder)
    assert _one_line(e).startswith(f"{folder} is a folder, not a file; expected a PyTorch file")
    with pytest.raises(CheckpointError) as e:
        load_training_checkpoint(folder, "stylevar-sft-1", "SFT training")
    assert _one_line(e).startswith(f"{folder} is a folder, not a file")
    model_file = upstream_dir / "StyleVAR-GRPO.pth"
    with pytest.raises(CheckpointError) as e:
        load_checkpoint_dir(model_file)
    assert _one_line(e).startswith(f"{model_file} is a file, not a folder; a stylevar checkpoint directory")
    text = tmp_path / "last.pt"
    text.write_text("step 100\n")
    with pytest.raises(CheckpointError) as e:
        load_training_checkpoint(text, "stylevar-sft-1", "SFT training")
    assert _one_line(e).startswith(f"{text} is not a SFT training checkpoint: it looks like text")


# ---------------------------------------------------------------------------------------- the command line
def test_the_command_line_prints_one_line_for_each(tmp_path, tiny, ours_dir, upstream_dir, capsys):
    """``stylevar info`` on each kind of bad input: exit 1, one line on stderr naming the file."""
    latin = tmp_path / "latin"
    shutil.copytree(ours_dir, latin)
    (latin / "config.json").write_bytes(BAD_JSON["latin-1"][0])
    typed = _edited_copy(ours_dir, tmp_path / "typed", lambda r: r.update(info=[1, 2]))
    nan = save_pretrained(tmp_path / "nan", _poisoned(tiny[0], "head.weight", math.nan), tiny[1])
    text = tmp_path / "notes.pth"
    text.write_text("my notes\n")
    for argv, named in [
        ([str(latin)], latin / "config.json"),
        ([str(typed)], typed / "config.json"),
        ([str(nan)], nan / "model.safetensors"),
        ([str(text), "--vae", str(upstream_dir / VAE_NAME)], text),
    ]:
        assert main(["info", *argv]) == 1
        err = capsys.readouterr().err.strip()
        assert err.count("\n") == 0 and str(named) in err and "Traceback" not in err, err
