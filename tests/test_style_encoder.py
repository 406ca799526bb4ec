"""StyleAR's style encoder (``style_encoder="clip_resampler"``): a CLIP ViT -> perceiver resampler -> M style
tokens that every block attends to and whose mean feeds AdaLN. Sampling = teacher forcing, the static runner,
regional styles, saving, real CLIP weights from a folder (a tiny CLIP made here), SFT from the CLI, the
pipeline's leakage edits and int8 on such a model; the ResNet path's layout untouched."""

from __future__ import annotations

import copy
import json

import pytest
import torch
from test_sft_cli import FAST, _png

from helpers import one_thread, smooth_images, tiny_models  # noqa: F401
from stylevar.config import Sampling
from stylevar.errors import CheckpointError, ConfigError
from stylevar.models.style_encoders import CLIP_MEAN, CLIP_STD

CLIP = dict(
    hidden_size=32,
    intermediate_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    image_size=32,
    patch_size=8,
)
CLIP_KW = dict(style_encoder="clip_resampler", clip_vision=CLIP, style_tokens=4, resampler_depth=1)


@pytest.fixture(scope="module")
def clip_model():
    return tiny_models(tag="clip", **CLIP_KW)


def _cond(model, vae, B=2, seeds=(1, 2)):
    res = vae.config.resolution
    return model.conditioning(vae, smooth_images(B, res, seeds[0]), smooth_images(B, res, seeds[1]))


def _sampling_is_teacher_forcing(model, vae, cond):
    """Sample with logits; assert they equal teacher forcing's at every scale and the static runner's tokens
    and logits; return (the sample, the teacher-forced logits)."""
    out = model.generate(vae, cond, Sampling.plain(top_k=5), seed=[1, 2], return_logits=True)
    teacher = model(vae.quantize.idx_to_teacher_input(out.tokens), cond)
    for si, (bg, ed) in enumerate(model.begin_ends):
        assert (out.logits[si] - teacher[:, bg:ed]).abs().max().item() < 1e-4, si
    static = model.generate(
        vae, cond, Sampling.plain(top_k=5, cuda_graphs=True), seed=[1, 2], return_logits=True
    )
    assert all(torch.equal(a, b) for a, b in zip(static.tokens, out.tokens))
    assert max((a - b).abs().max().item() for a, b in zip(static.logits, out.logits)) < 1e-5
    return out, teacher


def test_the_resnet_path_keeps_the_released_layout():
    model, _ = tiny_models(tag="plain")
    assert not model.has_style_tokens
    assert all(b.style_attn is None for b in model.blocks)
    assert not any("style_attn" in k or "style_encoder.clip" in k for k in model.state_dict())
    with pytest.raises(ConfigError, match="style_encoder must be one of"):
        tiny_models(tag="bad", style_encoder="vit")


@torch.no_grad()
def test_sampling_reproduces_teacher_forcing_and_the_static_runner(clip_model):
    model, vae = clip_model
    cond = _cond(model, vae)
    assert cond.style_feat.shape == (2, 4, model.C)  # M = 4 style tokens
    assert torch.allclose(model.style_condition(cond.style_feat), cond.style_feat.mean(1))
    out, _ = _sampling_is_teacher_forcing(model, vae, cond)
    # the runner rebinds new style tokens into its buffers: another style, other logits, same as eager
    other = model.conditioning(vae, smooth_images(2, 64, 7), smooth_images(2, 64, 2))
    again = model.generate(vae, other, Sampling.plain(cuda_graphs=True), seed=[1, 2], return_logits=True)
    eager = model.generate(vae, other, seed=[1, 2], return_logits=True)
    assert max((a - b).abs().max().item() for a, b in zip(again.logits, eager.logits)) < 1e-5
    assert (again.logits[-1] - out.logits[-1]).abs().max() > 1e-3
    bf16 = model.generate(vae, cond, Sampling.plain(dtype=torch.bfloat16), seed=[1, 2])
    assert bf16.images.shape == out.images.shape


@torch.no_grad()
def test_the_blocks_attend_to_the_tokens_not_only_to_their_mean(clip_model):
    """Same mean, other tokens: the AdaLN condition is equal, the logits are not (the cross-attention)."""
    model, vae = clip_model
    cond = _cond(model, vae)
    tokens = cond.style_feat
    g = torch.Generator().manual_seed(0)
    d = torch.randn(tokens.shape, generator=g)
    moved = copy.copy(cond)
    moved.style_feat = tokens + (d - d.mean(1, keepdim=True))  # the mean unchanged
    assert torch.allclose(model.style_condition(moved.style_feat), model.style_condition(tokens), atol=1e-5)
    x = vae.quantize.idx_to_teacher_input(model.generate(vae, cond, seed=0).tokens)
    assert (model(x, moved) - model(x, cond)).abs().max() > 1e-3


def test_every_part_learns_and_the_noise_is_training_only(clip_model):
    from stylevar.training.sft import TeacherForced

    model, vae = copy.deepcopy(clip_model)
    model.train()
    res = vae.config.resolution
    style, content = smooth_images(2, res, 3), smooth_images(2, res, 4)
    with torch.no_grad():
        s_cvae = vae.quantize.idx_to_condition(vae.img_to_idx(style))
        c_cvae = vae.quantize.idx_to_condition(vae.img_to_idx(content))
        gt = vae.img_to_idx(smooth_images(2, res, 5))
        x = vae.quantize.idx_to_teacher_input(gt)
    alpha = model.resolve_alpha(None, 0.0, 2)
    fwd = TeacherForced(model)
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(6):
        logits = fwd(style, content, s_cvae, c_cvae, x, alpha)
        loss = torch.nn.functional.cross_entropy(logits.flatten(0, 1), torch.cat(gt, 1).flatten())
        opt.zero_grad()
        loss.backward()
        if step == 0:
            grads = {
                "CLIP tower": model.style_encoder.clip.embeddings.patch_embedding.weight.grad,
                "resampler": model.style_encoder.resampler.latents.grad,
                "style attention": model.blocks[0].style_attn.q.weight.grad,
            }
            for name, grad in grads.items():
                assert grad is not None and grad.abs().max() > 0, name
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0] - 0.1, losses
    # StyleAR's token noise: on in training, off in evaluation
    noisy = TeacherForced(model, style_noise=0.5)
    with torch.no_grad():
        a, b = noisy(style, content, s_cvae, c_cvae, x, alpha), fwd(style, content, s_cvae, c_cvae, x, alpha)
        assert (a - b).abs().max() > 1e-3
        model.eval()
        a, b = noisy(style, content, s_cvae, c_cvae, x, alpha), fwd(style, content, s_cvae, c_cvae, x, alpha)
        assert torch.equal(a, b)


@torch.no_grad()
def test_regional_styles_route_the_tokens(clip_model):
    model, vae = clip_model
    cond = _cond(model, vae)
    res = vae.config.resolution
    feat, cvae = model.encode_style(vae, smooth_images(1, res, 9))
    plain = model.generate(vae, cond, seed=[1, 2], return_logits=True)
    empty = model.regions_from_features(feat[0:1], cvae[0:1], torch.zeros(1, res, res), batch_size=2)
    none = model.generate(vae, cond, seed=[1, 2], regions=empty, return_logits=True)
    assert all(torch.equal(a, b) for a, b in zip(none.logits, plain.logits))
    full = model.regions_from_features(feat[0:1], cvae[0:1], torch.ones(1, res, res), batch_size=2)
    got = model.generate(vae, cond, seed=[1, 2], regions=full, return_logits=True)
    as_b = copy.copy(cond)
    as_b.style_feat, as_b.style_cvae = feat.expand(2, -1, -1), cvae.expand(2, -1, -1)
    want = model.generate(vae, as_b, seed=[1, 2], return_logits=True)
    assert all(torch.equal(a, b) for a, b in zip(got.logits, want.logits))


def test_saving_keeps_the_encoder_and_a_bare_state_dict_is_refused(clip_model, tmp_path):
    from stylevar.io import load_pretrained, save_pretrained
    from stylevar.io.state import infer_stylevar_config

    model, vae = clip_model
    save_pretrained(tmp_path / "m", model, vae)
    saved = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "clip_resampler" in json.dumps(saved) and '"hidden_size": 32' in json.dumps(saved)
    back = load_pretrained(tmp_path / "m")
    assert back.model.config == model.config
    cond = _cond(model, vae)
    with torch.no_grad():
        a = model.generate(vae, cond, seed=3, return_logits=True)
        b = back.model.generate(back.vae, _cond(back.model, back.vae), seed=3, return_logits=True)
    # (1e-6: a loaded model's tensors sit at other addresses, and CPU kernels round by alignment; the
    # ResNet models do the same)
    assert max((x - y).abs().max().item() for x, y in zip(a.logits, b.logits)) < 1e-5
    with pytest.raises(CheckpointError, match="config.json"):
        infer_stylevar_config(model.state_dict())
    # a checkpoint written before the tower was cut (the whole tower's top layer and final LayerNorm in it)
    # loads, and the extra keys change nothing; a key the model needs is still missed loudly
    from safetensors.torch import load_file, save_file

    weights = tmp_path / "m" / "model.safetensors"
    sd = load_file(str(weights))
    top = {
        k.replace("encoder.layers.0.", "encoder.layers.1."): torch.randn(v.shape)
        for k, v in sd.items()
        if k.startswith("style_encoder.clip.encoder.layers.0.")
    }
    top.update({f"style_encoder.clip.post_layernorm.{n}": torch.randn(32) for n in ("weight", "bias")})
    save_file({**sd, **top}, str(weights))
    old = load_pretrained(tmp_path / "m")
    c = old.model.generate(old.vae, _cond(old.model, old.vae), seed=3, return_logits=True)
    assert max((x - y).abs().max().item() for x, y in zip(b.logits, c.logits)) < 1e-5
    del sd["style_encoder.clip.pre_layrnorm.weight"]
    save_file(sd, str(weights))
    with pytest.raises(CheckpointError, match="missing: style_encoder.clip.pre_layrnorm.weight"):
        load_pretrained(tmp_path / "m")


@torch.no_grad()
def test_the_styles_vq_tokens_join_the_style_tokens(tmp_path):
    """``style_vq_tokens``: the blocks attend to M resampler tokens + the style's L embedded VQ features;
    sampling still equals teacher forcing (eager and static runner), training's conditioning is the same,
    the VQ tokens reach the logits, and the flag survives saving; a ResNet model refuses it."""
    from stylevar.io import load_pretrained, save_pretrained

    model, vae = tiny_models(tag="clipvq", **CLIP_KW, style_vq_tokens=True)
    cond = _cond(model, vae)
    L = model.L
    assert cond.style_feat.shape == (2, 4 + L, model.C)
    vq = model.word_embed(cond.style_cvae) + model.lvl_embed(model.lvl_1L) + model.pos_1LC
    assert torch.allclose(cond.style_feat[:, 4:], vq, atol=1e-6)
    style, content = smooth_images(2, 64, 1), smooth_images(2, 64, 2)
    train = model.conditioning_from_features(style, content, cond.style_cvae, cond.content_cvae)
    assert torch.allclose(train.style_feat, cond.style_feat, atol=1e-6)
    out, teacher = _sampling_is_teacher_forcing(model, vae, cond)
    moved = copy.copy(cond)  # only the VQ tokens changed: other logits
    moved.style_feat = torch.cat((cond.style_feat[:, :4], cond.style_feat[:, 4:].flip(0)), dim=1)
    x = vae.quantize.idx_to_teacher_input(out.tokens)
    assert (model(x, moved) - teacher).abs().max() > 1e-3
    save_pretrained(tmp_path / "m", model, vae)
    back = load_pretrained(tmp_path / "m")
    assert back.model.config.style_vq_tokens
    again = back.model.generate(
        back.vae, _cond(back.model, back.vae), Sampling.plain(top_k=5), seed=[1, 2], return_logits=True
    )
    assert max((a - b).abs().max().item() for a, b in zip(again.logits, out.logits)) < 1e-5
    with pytest.raises(ConfigError, match="style_vq_tokens needs"):
        tiny_models(tag="bad", style_vq_tokens=True)


@torch.no_grad()
@pytest.mark.parametrize("layer", [-2, -1, 0, 1])
def test_the_cut_tower_gives_the_whole_towers_hidden_state(layer):
    """Only the layers below ``clip_layer`` are built; their output is transformers' hidden state ``layer``
    of the whole tower, and the whole tower's weights (a CLIP, an older checkpoint) load into it."""
    import transformers

    from stylevar.models.style_encoders import CLIPResamplerEncoder

    torch.manual_seed(0)
    enc = CLIPResamplerEncoder(CLIP, 16, num_tokens=4, depth=1, layer=layer).eval()
    assert len(enc.clip.encoder.layers) == layer % (CLIP["num_hidden_layers"] + 1)
    whole = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(**CLIP)).eval()
    whole_sd = getattr(whole, "vision_model", whole).state_dict()
    resampler = {f"resampler.{k}": v for k, v in enc.resampler.state_dict().items()}
    enc.load_state_dict({**{f"clip.{k}": v for k, v in whole_sd.items()}, **resampler})
    img = smooth_images(2, 32, 3)
    x = (img + 1) / 2
    x = (x - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
    want = whole(pixel_values=x, output_hidden_states=True).hidden_states[layer]
    torch.testing.assert_close(enc.features(img), want, rtol=1e-5, atol=1e-5)
    del whole_sd["embeddings.patch_embedding.weight"]  # what it does need is still checked
    with pytest.raises(RuntimeError, match="Missing key.*clip.embeddings.patch_embedding.weight"):
        enc.load_state_dict({**{f"clip.{k}": v for k, v in whole_sd.items()}, **resampler})


def test_clip_weights_come_from_a_folder_and_are_frozen(clip_dir, ours_dir):
    """--clip FOLDER: the tower takes the CLIP's sizes and vision weights (a tiny CLIPModel saved with
    save_pretrained) and stays fixed unless asked; contradicting flags fail in one line."""
    import transformers

    from stylevar.models.style_encoders import load_clip_vision
    from stylevar.training.jobs import SFTStart, build_sft_model, check_start

    start = SFTStart(depth=1, vae=str(ours_dir), style_encoder="clip_resampler", clip=str(clip_dir))
    model, _, how = build_sft_model(start, seed=0)
    assert "CLIP vision tower from" in how and "frozen" in how
    clip = transformers.CLIPModel.from_pretrained(str(clip_dir))
    assert model.config.clip_vision["hidden_size"] == 16 and model.config.clip_vision["image_size"] == 224
    theirs = clip.vision_model.state_dict()
    mine = model.style_encoder.clip.state_dict()
    # the tower below hidden state -2 of this two-layer CLIP: its first layer, without the final LayerNorm
    unbuilt = {k for k in theirs if k.startswith(("encoder.layers.1.", "post_layernorm."))}
    assert unbuilt and set(mine) == set(theirs) - unbuilt
    assert all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert not any(p.requires_grad for p in model.style_encoder.clip.parameters())
    assert all(p.requires_grad for p in model.style_encoder.resampler.parameters())
    trained, _, how = build_sft_model(
        SFTStart(
            depth=1, vae=str(ours_dir), style_encoder="clip_resampler", clip=str(clip_dir), freeze_clip=False
        ),
        seed=0,
    )
    assert "trained" in how and all(p.requires_grad for p in trained.style_encoder.clip.parameters())
    other, _ = tiny_models(tag="clip-other", **CLIP_KW)
    with pytest.raises(ConfigError, match="do not fit"):
        load_clip_vision(other, clip)
    for bad, match in [
        (
            SFTStart(depth=1, vae="v", clip=str(clip_dir)),
            "--clip, --style-tokens and --style-vq-tokens belong",
        ),
        (SFTStart(depth=1, vae="v", style_vq_tokens=True), "--style-vq-tokens belong"),
        (SFTStart(init="x", style_encoder="clip_resampler"), "build new models"),
        (SFTStart(init="x", style_vq_tokens=True), "build new models"),
        (
            SFTStart(depth=1, vae="v", style_encoder="clip_resampler", resnet_weights="r.pth"),
            "--resnet-weights",
        ),
    ]:
        with pytest.raises(ConfigError, match=match):
            check_start(bad)


def test_sft_cli_trains_a_clip_resampler_model_and_the_pipeline_uses_it(ours_dir, tmp_path):
    """``stylevar sft --depth 1 --style-encoder clip_resampler --style-vq-tokens`` on files: the final model is
    a clip_resampler model whose resampler moved; the pipeline stylizes with it, with a blend and with StyleAR's subtraction
    (an empty salient region subtracts nothing, bit for bit)."""
    from PIL import Image

    from stylevar.cli import main
    from stylevar.io import load_pretrained
    from stylevar.stylize.pipeline import StyleVARPipeline

    omni = tmp_path / "omni"
    for c in range(2):
        _png(omni / "content" / f"c{c}.png", c)
    for s in range(2):
        _png(omni / "style" / f"s{s}.jpg.png", 100 + s)
    for c in range(2):
        for s in range(2):
            _png(omni / "target" / f"c{c}.png&&s{s}.jpg.png.png", 200 + 10 * c + s)
    run = tmp_path / "run"
    args = ["sft", str(omni), "-o", str(run), "--depth", "1", "--vae", str(ours_dir), "--max-steps", "3"]
    args += ["--style-encoder", "clip_resampler", "--style-tokens", "4", "--style-vq-tokens"]
    args += ["--val-fraction", "0", *FAST]
    assert main(args) == 0
    ck = load_pretrained(run / "final")
    assert ck.model.config.style_encoder == "clip_resampler" and ck.model.config.style_tokens == 4
    assert ck.model.config.style_vq_tokens  # the blend and the subtraction below act on its VQ tokens too
    recorded = json.loads((run / "sft_args.json").read_text())
    assert "clip_resampler" in json.dumps(recorded)

    pipe = StyleVARPipeline(ck.model, ck.vae, device="cpu")
    c, s0, s1 = omni / "content" / "c0.png", omni / "style" / "s0.jpg.png", omni / "style" / "s1.jpg.png"
    plain = pipe(c, s0, seed=1, top_k=1, output_type="pt").images[0]
    blend = pipe(c, [s0, s1], style_weights=[0.5, 0.5], seed=1, top_k=1, output_type="pt").images[0]
    assert plain.shape == blend.shape
    black = tmp_path / "black.png"
    Image.new("L", (64, 64), 0).save(black)
    same = pipe(c, s0, seed=1, top_k=1, output_type="pt", leakage={"style_mask": black, "subtract": 0.0})
    assert torch.equal(same.images[0], plain)


@torch.no_grad()
def test_int8_runs_a_clip_resampler_model(clip_model):
    from stylevar.models.quantized import quantize_int8_

    model, vae = copy.deepcopy(clip_model)
    cond = _cond(model, vae)
    x = vae.quantize.idx_to_teacher_input(model.generate(vae, cond, seed=[1, 2]).tokens)
    ref = model(x, cond)
    quantize_int8_(model)
    assert model.blocks[0].style_attn.q.int8 is not None  # the style attention is quantized too
    q = model(x, cond)  # the same tokens: the int8 error alone, not a sampled path that diverged
    assert (q - ref).abs().max() < 0.05 * ref.abs().max()
    assert (q.argmax(-1) == ref.argmax(-1)).float().mean() > 0.9
    assert model.generate(vae, cond, seed=[1, 2]).images.shape[0] == 2


def test_grpo_steps_a_clip_resampler_model(tmp_path):
    """GRPO's rollouts, rewards and LoRA update run on a clip_resampler model (the style tokens ride along in
    Conditioning through rollouts, groups and the reference policy)."""
    from test_grpo import make_trainer

    tr = make_trainer(tiny_models(tag="clip-grpo", **CLIP_KW), tmp_path, max_steps=1)
    rec = tr.train_step(next(iter(tr._batches(0, 0))))
    assert rec["rollouts"] == 8 and rec["grad_norm"] > 0
    assert tr.train_step(next(iter(tr._batches(0, 1))))["kl_raw"] > 0
