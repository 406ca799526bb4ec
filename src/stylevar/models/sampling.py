"""Token sampling: temperature, top-k, top-p and seeded multinomial draws (VAR's rules)."""

from __future__ import annotations

from collections.abc import Sequence

import torch

Seed = int | Sequence[int] | torch.Generator | Sequence[torch.Generator] | None


def make_generators(
    seed: Seed, batch_size: int, device: torch.device
) -> list[torch.Generator] | torch.Generator | None:
    """Turn ``seed`` into what :func:`sample_tokens` takes.

    * ``None``: torch's global RNG.
    * an ``int`` or a ``Generator``: one generator for the whole batch (upstream's ``g_seed``:
      the draws of all samples come from one stream, so they depend on the batch composition).
    * a sequence of ints / generators, one per sample: each sample has its own stream, so a
      sample's tokens depend only on its own seed, whatever the batch size.
    """
    if seed is None or isinstance(seed, torch.Generator):
        return seed
    if isinstance(seed, int):
        return torch.Generator(device=device).manual_seed(seed)
    seeds = list(seed)
    if len(seeds) != batch_size:
        raise ValueError(f"got {len(seeds)} seeds for a batch of {batch_size}")
    out = []
    for s in seeds:
        out.append(
            s if isinstance(s, torch.Generator) else torch.Generator(device=device).manual_seed(int(s))
        )
    return out


def filter_logits_(logits_BlV: torch.Tensor, top_k: int = 0, top_p: float = 0.0) -> torch.Tensor:
    """Top-k then top-p filtering, in place (entries removed are set to -inf).

    top-k keeps logits >= the k-th largest (ties kept). top-p sorts ascending and removes the
    entries whose softmax cumulative sum is <= 1 - top_p, always keeping the largest; its softmax
    is taken over the already top-k-filtered logits.
    """
    V = logits_BlV.shape[-1]
    if 0 < top_k < V:
        kth = logits_BlV.topk(top_k, largest=True, sorted=False, dim=-1)[0].amin(dim=-1, keepdim=True)
        logits_BlV.masked_fill_(logits_BlV < kth, -torch.inf)
    if top_p > 0:
        sorted_logits, sorted_idx = logits_BlV.sort(dim=-1, descending=False)
        remove = sorted_logits.softmax(dim=-1).cumsum_(dim=-1) <= (1 - top_p)
        remove[..., -1:] = False
        logits_BlV.masked_fill_(remove.scatter(sorted_idx.ndim - 1, sorted_idx, remove), -torch.inf)
    return logits_BlV


def sample_tokens(
    logits_BlV: torch.Tensor,
    *,
    top_k: int = 0,
    top_p: float = 0.0,
    temperature: float = 1.0,
    generator: list[torch.Generator] | torch.Generator | None = None,
) -> torch.Tensor:
    """Sample one token per position from (B, l, V) logits -> (B, l) int64. Modifies ``logits_BlV``.

    ``generator`` comes from :func:`make_generators`: one for the batch (one multinomial call
    over all B*l rows, exactly upstream's draw) or one per sample.
    """
    B, n, V = logits_BlV.shape
    if temperature != 1.0:
        logits_BlV.div_(temperature)
    filter_logits_(logits_BlV, top_k, top_p)
    probs = logits_BlV.softmax(dim=-1)
    if isinstance(generator, list):
        rows = [
            torch.multinomial(probs[b], 1, replacement=True, generator=g) for b, g in enumerate(generator)
        ]
        return torch.stack(rows).view(B, n)
    return torch.multinomial(probs.view(-1, V), num_samples=1, replacement=True, generator=generator).view(
        B, n
    )
