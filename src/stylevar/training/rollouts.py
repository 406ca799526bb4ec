"""GRPO's rollouts: sampled stylizations with one seed per rollout, batched; and VMR's split scale.

Every rollout's seed comes from (seed, step, dataset index, g) only (:func:`rollout_seed`), and every
row of a batch has its own generator, so a rollout's tokens do not depend on batching or on the
number of processes.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from ..config import Sampling
from ..models import VQVAE, Conditioning, StyleVAR


def middle_scale(patch_nums: Sequence[int]) -> int:
    """Default VMR split: the first scale whose side reaches half the last side (16 -> 8: index 6)."""
    half = patch_nums[-1] / 2
    return next(i for i, pn in enumerate(patch_nums) if pn >= half)


@dataclass
class Rollouts:
    """Sampled stylizations: tokens per scale (N, pn*pn) int64, images (N, 3, R, R) in [0, 1]."""

    tokens: list[torch.Tensor]
    images: torch.Tensor
    seeds: list[int]

    @property
    def flat(self) -> torch.Tensor:
        """All scales' tokens concatenated, (N, L)."""
        return torch.cat(self.tokens, dim=1)


def rollout_seed(seed: int, step: int, index: int, g: int) -> int:
    """Seed of rollout ``g`` of dataset item ``index`` at ``step``: independent of batching and ranks."""
    return (seed * 1_000_003 + step * 7_919_993 + index * 10_007 + g) % (2**31 - 1)


@torch.no_grad()
def generate_rollouts(
    model: StyleVAR,
    vae: VQVAE,
    cond: Conditioning,
    seeds: Sequence[int],
    sampling: Sampling | None = None,
    *,
    chunk: int = 0,
    serial: bool = False,
    prefix: Sequence[torch.Tensor] | None = None,
    num_scales: int | None = None,
) -> Rollouts:
    """Sample one rollout per row of ``cond`` (N rows: repeat a condition for a group) with ``seeds[i]``.

    Batched (default): ``generate`` runs on ``chunk`` rows at a time (0 = all N); every row has its
    own generator, so the tokens equal those of ``serial=True`` (one row per call, the published
    loop) up to float rounding. ``sampling`` (default: the paper's, top-k 900, top-p 0.96),
    ``prefix``/``num_scales``: see :meth:`StyleVAR.generate`.
    """
    sampling = sampling or Sampling()
    N = cond.batch_size
    if len(seeds) != N:
        raise ValueError(f"{len(seeds)} seeds for {N} rollouts")
    step = 1 if serial else (chunk or N)
    toks: list[list[torch.Tensor]] = []
    imgs: list[torch.Tensor] = []
    for a in range(0, N, step):
        rows = list(range(a, min(N, a + step)))
        sub = cond.index_select(rows) if len(rows) != N else cond
        out = model.generate(
            vae,
            sub,
            sampling,
            seed=[int(seeds[i]) for i in rows],
            prefix=None if prefix is None else [p[a : a + len(rows)] for p in prefix],
            num_scales=num_scales,
        )
        toks.append(out.tokens)
        imgs.append(out.images)
    tokens = [torch.cat([t[si] for t in toks]) for si in range(len(toks[0]))]
    return Rollouts(tokens, torch.cat(imgs), [int(s) for s in seeds])
