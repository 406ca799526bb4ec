"""The style image's salient region from SAM (transformers' SamModel, tiny random weights saved here): the
selection rule, SAM's preprocessing and output size, the pipeline and CLI taking a segmenter instead of a
mask (the same subtraction as the mask it finds, bit for bit), and one-line errors."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from helpers import write_smooth_pngs
from stylevar.errors import ConfigError, MissingWeightsError
from stylevar.perceptual import SalientRegion, select_salient


@pytest.fixture(scope="module")
def sam_dir(tmp_path_factory):
    """A tiny SamModel (128-px input, 32-wide), saved with save_pretrained."""
    transformers = pytest.importorskip("transformers")
    config = transformers.SamConfig(
        vision_config=dict(
            hidden_size=32, output_channels=32, num_hidden_layers=2, num_attention_heads=2, image_size=128,
            patch_size=16, window_size=4, global_attn_indexes=[1], num_pos_feats=16, mlp_dim=64,
        ),
        prompt_encoder_config=dict(hidden_size=32, image_size=128, patch_size=16, mask_input_channels=4),
        mask_decoder_config=dict(
            hidden_size=32, mlp_dim=64, num_hidden_layers=2, num_attention_heads=2, iou_head_hidden_dim=32
        ),
    )  # fmt: skip
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("sam") / "tiny-sam"
    transformers.SamModel(config).save_pretrained(str(d))
    return d


def test_selection_keeps_confident_objects_and_drops_background_and_specks():
    H = W = 20
    masks = torch.zeros(4, 3, H, W, dtype=torch.bool)
    masks[0, 1, 2:8, 2:8] = True  # an object (9 %), its best mask
    masks[0, 0, :, :] = True  # the same prompt's whole-canvas mask, scored lower
    masks[1, 2, 10:16, 10:16] = True  # another object, but SAM is not confident
    masks[2, 0, :, :15] = True  # background: 75 % of the image
    masks[3, 0, 0, 0] = True  # a speck (0.25 %)
    scores = torch.tensor([[0.5, 0.95, 0.1], [0.2, 0.1, 0.6], [0.99, 0.0, 0.0], [0.99, 0.0, 0.0]])
    got = select_salient(masks, scores, iou_threshold=0.8, min_area=0.01, max_area=0.5)
    assert torch.equal(got, masks[0, 1])
    loose = select_salient(masks, scores, iou_threshold=0.5, min_area=0.0, max_area=0.5)
    assert torch.equal(loose, masks[0, 1] | masks[1, 2] | masks[3, 0])
    assert not select_salient(masks, scores, 1.1, 0.0, 1.0).any()


def test_sam_regions_come_back_at_the_image_size(sam_dir):
    region = SalientRegion(sam_dir, iou_threshold=-1e9, min_area=0.0, max_area=1.0)
    img = torch.rand(2, 3, 40, 60, generator=torch.Generator().manual_seed(0))
    out = region(img)
    assert out.shape == (2, 40, 60) and set(out.unique().tolist()) <= {0.0, 1.0}
    x, h, w = region._prepare(img[0])
    assert x.shape == (1, 3, 128, 128) and (h, w) == (85, 128)  # the longer side to 128, then padded
    assert torch.all(x[..., h:, :] == 0)
    # SAM's grid prompts land inside the resized image; with the defaults the union is a subset of this one
    strict = SalientRegion(sam_dir)(img)
    assert torch.all(strict <= out)


def test_the_pipeline_and_cli_take_a_segmenter(pipe, sam_dir, ours_dir, tmp_path):
    from stylevar.cli import main

    c, s = write_smooth_pngs(tmp_path, [(64, 64), (64, 64)], seed=51)
    half = np.zeros((64, 64), np.uint8)
    half[:, :32] = 255
    Image.fromarray(half).save(tmp_path / "half.png")
    found = torch.from_numpy(half / 255.0).float()

    def run(**knobs):
        return pipe(c, s, seed=3, top_k=8, output_type="pt", leakage=knobs)[0]

    calls = []

    def segmenter(images):
        calls.append(tuple(images.shape))
        return found.expand(images.shape[0], -1, -1)

    by_mask = run(style_mask=tmp_path / "half.png", subtract=0.0)
    by_segmenter = run(segmenter=segmenter, subtract=0.0)
    assert torch.equal(by_segmenter, by_mask) and calls == [(1, 3, 64, 64)]
    assert run(segmenter=sam_dir, subtract=0.5).shape == by_mask.shape  # a SAM folder, loaded by the call
    with pytest.raises(ConfigError, match="not both"):
        run(style_mask=tmp_path / "half.png", segmenter=segmenter, subtract=0.0)
    with pytest.raises(MissingWeightsError, match="does not exist"):
        run(segmenter=tmp_path / "no-sam", subtract=0.0)
    out = tmp_path / "out.png"
    args = ["stylize", str(c), str(s), "--checkpoint", str(ours_dir), "-o", str(out)]
    assert main([*args, "--style-segmenter", str(sam_dir), "--subtract", "0"]) == 0
    assert Image.open(out).size == (64, 64)
