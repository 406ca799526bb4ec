"""Numerical compatibility with the upstream implementation, on the reference vector sets.

Every ``NAME.json`` + ``NAME.safetensors`` pair in ``tests/fixtures/parity`` (see its README) and in
``$STYLEVAR_PARITY_DIR`` (extra sets) is checked:
tokens exact, features and logits within 1e-4, the legacy sampler's tokens identical and its
images within 1e-3. Weights are regenerated from the key names (see helpers.fill_weights).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from helpers import REPO_ROOT, fill_weights
from stylevar.config import Sampling, StyleVARConfig, VQVAEConfig
from stylevar.models import VQVAE, StyleVAR

FEAT_TOL = 1e-4
LEGACY_IMG_TOL = 1e-3


def _parity_dirs() -> list[Path]:
    dirs = [REPO_ROOT / "tests" / "fixtures" / "parity"]
    env = os.environ.get("STYLEVAR_PARITY_DIR")
    if env:
        dirs.append(Path(env))
    return dirs


def _vector_sets() -> list[Path]:
    found = []
    for d in _parity_dirs():
        for js in sorted(d.glob("*.json")):
            if js.with_suffix(".safetensors").exists() and js not in found:
                found.append(js)
    return found


SETS = _vector_sets()


def test_vector_sets_found():
    """The repository's own set is always there (a clone runs every parity test)."""
    assert any(js.name == "stylevar_parity_small.json" for js in SETS), SETS
    assert all(js.with_suffix(".safetensors").exists() for js in SETS)


class ParitySet:
    def __init__(self, js: Path):
        self.name = js.stem
        self.meta = json.loads(js.read_text())
        self.T = load_file(str(js.with_suffix(".safetensors")))
        c = self.meta["config"]
        assert not c.get("shared_aln", False), "shared AdaLN is not part of StyleVAR's release"
        pn = tuple(c["patch_nums"])
        self.num_scales = len(pn)
        self.vae = VQVAE(
            VQVAEConfig(
                vocab_size=c["vocab_size"],
                z_channels=c["Cvae"],
                ch=c["vae_ch"],
                share_quant_resi=c.get("share_quant_resi", 4),
                patch_nums=pn,
            )
        ).eval()
        self.model = StyleVAR(
            StyleVARConfig(
                depth=c["depth"],
                embed_dim=c["embed_dim"],
                num_heads=c["num_heads"],
                mlp_ratio=c.get("mlp_ratio", 4.0),
                norm_eps=c.get("norm_eps", 1e-6),
                attn_l2_norm=c.get("attn_l2_norm", True),
                style_enc_dim=c.get("style_enc_dim", 512),
                vocab_size=c["vocab_size"],
                z_channels=c["Cvae"],
                patch_nums=pn,
                alpha=tuple(c["alpha_nums"]),
            )
        ).eval()
        fill_weights(self.vae, "vae.")
        fill_weights(self.model, "var.")

    def idx(self, tag: str) -> list[torch.Tensor]:
        return [self.T[f"{tag}_{si}"] for si in range(self.num_scales)]


@pytest.fixture(scope="module", params=SETS, ids=[s.stem for s in SETS])
def pset(request) -> ParitySet:
    return ParitySet(request.param)


def _close(name: str, got: torch.Tensor, want: torch.Tensor, tol: float) -> None:
    assert got.shape == want.shape, f"{name}: shape {tuple(got.shape)} != {tuple(want.shape)}"
    err = (got.float() - want.float()).abs().max().item()
    assert err <= tol, f"{name}: max abs error {err:.3e} > {tol:.0e}"


@torch.no_grad()
def test_encoder_features_and_tokens(pset):
    for img in ("content", "style", "target"):
        f = pset.vae.encode_f(pset.T[img])
        _close(f"f_{img}", f, pset.T[f"f_{img}"], FEAT_TOL)
        got = pset.vae.quantize.f_to_idx(f)
        for si, (g, w) in enumerate(zip(got, pset.idx(f"idx_{img}"))):
            assert torch.equal(g, w), (
                f"{img} tokens differ at scale {si}: {(g != w).sum().item()} of {w.numel()}"
            )


@torch.no_grad()
def test_teacher_input_condition_features_and_reconstruction(pset):
    q = pset.vae.quantize
    _close("teacher_input", q.idx_to_teacher_input(pset.idx("idx_target")), pset.T["teacher_input"], FEAT_TOL)
    _close("style_cond", q.idx_to_condition(pset.idx("idx_style")), pset.T["style_cond"], FEAT_TOL)
    _close("content_cond", q.idx_to_condition(pset.idx("idx_content")), pset.T["content_cond"], FEAT_TOL)
    _close("recon_target", pset.vae.idx_to_img(pset.idx("idx_target")), pset.T["recon_target"], FEAT_TOL)


@torch.no_grad()
def test_teacher_forced_logits(pset):
    T = pset.T
    cond = pset.model.conditioning_from_features(T["style"], T["content"], T["style_cond"], T["content_cond"])
    _close("teacher_logits", pset.model(T["teacher_input"], cond), T["teacher_logits"], FEAT_TOL)


@pytest.mark.parametrize("tag", ["legacy", "legacy_ss"])
@torch.no_grad()
def test_legacy_sampler_reproduces_upstream(pset, tag):
    s = pset.meta["sampling"]
    ss = s["style_strength"][tag]
    cond = pset.model.conditioning(pset.vae, pset.T["style"], pset.T["content"])
    out = pset.model.generate(
        pset.vae,
        cond,
        Sampling.plain(top_k=s["top_k"], top_p=s["top_p"], style_strength=ss, legacy_kv_cache=True),
        seed=s["g_seed"],
    )
    for si, (g, w) in enumerate(zip(out.tokens, pset.idx(f"{tag}_idx"))):
        assert torch.equal(g, w), (
            f"{tag}: tokens differ at scale {si}: {(g != w).sum().item()} of {w.numel()}"
        )
    _close(f"{tag}_img", out.images, pset.T[f"{tag}_img"], LEGACY_IMG_TOL)


@torch.no_grad()
def test_correct_cache_matches_teacher_forcing_on_parity_model(pset):
    """The fixed cache reproduces the teacher-forced logits of its own tokens (which legacy cannot)."""
    s = pset.meta["sampling"]
    m, vae = pset.model, pset.vae
    cond = m.conditioning(vae, pset.T["style"], pset.T["content"])
    out = m.generate(
        vae, cond, Sampling.plain(top_k=s["top_k"], top_p=s["top_p"]), seed=s["g_seed"], return_logits=True
    )
    teacher = m(vae.quantize.idx_to_teacher_input(out.tokens), cond)
    for si, (bg, ed) in enumerate(m.begin_ends):
        _close(f"scale {si} logits", out.logits[si], teacher[:, bg:ed], FEAT_TOL)
    legacy = m.generate(
        vae,
        cond,
        Sampling.plain(top_k=s["top_k"], top_p=s["top_p"], legacy_kv_cache=True),
        seed=s["g_seed"],
        return_logits=True,
    )
    teacher_l = m(vae.quantize.idx_to_teacher_input(legacy.tokens), cond)
    worst = max(
        (legacy.logits[si] - teacher_l[:, bg:ed]).abs().max().item()
        for si, (bg, ed) in enumerate(m.begin_ends)
    )
    assert worst > 1e-3, "the legacy cache should differ from teacher forcing (docs/upstream.md §3.6)"
