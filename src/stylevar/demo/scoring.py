"""Scores of the synthetic task, where the truth is known: is the content's figure in the output, in the
style's colours (:func:`figure_scores`), and does the style image's layout leak into it
(:func:`leakage_scores`)? :func:`heldout_truth` regenerates the truth of a synthetic set from its names.
Public: the demo and the benchmarks (``benchmarks/bench_leakage.py``) score with them."""

from __future__ import annotations

import torch


def figure_pixels(images: torch.Tensor, palettes: torch.Tensor) -> torch.Tensor:
    """(B, H, W) bool: the pixels of ``images`` nearer (L1 in RGB) to one of the style's two figure colours
    than to both of its background colours (``palettes`` (B, 4, 3), :meth:`StyleSpec.palette` order)."""
    dist = (images.float().unsqueeze(1) - palettes.float()[:, :, :, None, None]).abs().sum(2)  # (B, 4, H, W)
    return dist[:, :2].amin(1) < dist[:, 2:].amin(1)


def figure_scores(
    images: torch.Tensor, targets: torch.Tensor, masks: torch.Tensor, palettes: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Does the content's figure come through in the style's colours? Per image, ``(IoU (B,), MAE (B, 3))``.

    ``images``/``targets`` (B, 3, H, W) in [0, 1]; ``masks`` (B, H, W) bool, the content's figure;
    ``palettes`` (B, 4, 3), the style's colours (:meth:`~stylevar.data.synthetic.StyleSpec.palette`:
    figure plain and textured, background plain and textured). A pixel of ``images`` belongs to its
    figure when it is nearer (L1 in RGB) to one of the figure's two colours than to both background
    colours; IoU compares that figure with ``masks``. MAE is the mean absolute error against the
    target inside ``masks``, per channel, in levels of 255.
    """
    figure = figure_pixels(images, palettes)
    inter = (figure & masks).flatten(1).sum(1).float()
    union = (figure | masks).flatten(1).sum(1).float().clamp_min(1)
    m = masks.unsqueeze(1).float()
    mae = ((images.float() - targets.float()).abs() * m).sum((2, 3)) / m.sum((2, 3)).clamp_min(1) * 255
    return inter / union, mae


def leakage_scores(
    images: torch.Tensor, masks: torch.Tensor, palettes: torch.Tensor, style_masks: torch.Tensor
) -> torch.Tensor:
    """Content leakage on the synthetic task, where the truth is known, per image (B,): how much of the
    style image's layout (its blobs) reappears in the output. Outside the content's figure the target is
    plain background; there, the share of the style image's blob pixels that the output paints in the
    figure's colours (as :func:`figure_scores` classifies them), minus the same share on the other
    background pixels. 0: the output ignores where the style image's blobs are; 1: it copies them (the
    style image itself scores 1)."""
    figure = figure_pixels(images, palettes)
    background = ~masks
    blob, rest = style_masks & background, ~style_masks & background

    def share(region: torch.Tensor) -> torch.Tensor:
        return (figure & region).flatten(1).sum(1).float() / region.flatten(1).sum(1).clamp_min(1).float()

    return share(blob) - share(rest)


def heldout_truth(
    held_set, seed: int, size: int, period: int
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The held-out pairs' content figures (B, H, W), style palettes (B, 4, 3) and style-image blobs
    (B, H, W), regenerated from their names (``seed``, ``size``, ``period``: the held-out set's, as
    :func:`~stylevar.data.synthetic.make_synthetic` drew it; the demo's held-out seed is its seed + 1)."""
    import numpy as np

    from ..data.synthetic import parse_ids, synthetic_triplet

    masks, palettes, blobs = [], [], []
    for t in held_set.triplets:
        ci, si = parse_ids(t.content, t.style)
        truth = synthetic_triplet(ci, si, seed=seed, size=size, period=period)
        masks.append(truth.mask)
        palettes.append(truth.spec.palette())
        blobs.append(truth.style_mask)
    return tuple(torch.from_numpy(np.stack(x)) for x in (masks, palettes, blobs))
