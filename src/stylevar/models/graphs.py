"""Sampling's transformer passes on static buffers, captured as one CUDA graph per scale.

Every scale has fixed shapes and fixed KV-cache offsets, so the 20-block pass of scale ``k``
(``depth`` blocks, the AdaLN head, the logits) is the same sequence of kernels on the same
addresses every time: it is captured once per (batch size, dtype) and replayed, which removes
the thousands of kernel launches that dominate small-batch GPU latency. Sampling, the quantizer
and the next scale's input stay outside the graphs (small, and sampling draws from per-sample
generators).

The runner holds, per configuration: the conditions (AdaLN parameters of every block, the
LayerNorm'ed guide tokens of every scale, alpha), one input buffer and one logits buffer per
scale, and full-length KV caches. With a reduced ``dtype`` it also holds a copy of the blocks in
that dtype (autocast's weight cache cannot be used inside a graph, and casting 0.7 B weights per
scale would cost more than the pass); :meth:`StaticRunner.refresh_weights` re-copies them after
the model's weights change (training, GRPO), in place, so captured graphs stay valid.

On devices without CUDA graphs the runner executes the same static-buffer steps eagerly, which
is how the tests check it against :meth:`StyleVAR.generate`.
"""

from __future__ import annotations

import contextlib
import copy
from typing import TYPE_CHECKING

import torch
from torch import nn

from .adapters import adapter_switches
from .blocks import KVCache

if TYPE_CHECKING:
    from .stylevar import StyleVAR


class StaticRunner:
    """Per-scale transformer passes of :class:`StyleVAR` sampling for one batch size and dtype."""

    def __init__(
        self,
        model: StyleVAR,
        batch_size: int,
        device: torch.device,
        dtype: torch.dtype | None = None,
        use_graphs: bool | None = None,
    ):
        self.model = model
        self.B = B = batch_size
        self.device = device
        self.dtype = dtype
        self.use_graphs = (device.type == "cuda") if use_graphs is None else use_graphs
        C = model.C
        if dtype is None:
            self.blocks: nn.ModuleList = model.blocks
        else:
            self.blocks = copy.deepcopy(model.blocks).to(dtype)
        # AdaLN parameters in the dtype the blocks compute them in (autocast's, or bf16 weights' own)
        ada_dtype = (dtype or self.blocks[0].ada_lin[-1].weight.dtype) if len(self.blocks) else torch.float32
        self.ada = [torch.zeros(B, 1, 6, C, device=device, dtype=ada_dtype) for _ in self.blocks]
        self.head_ada = torch.zeros(B, 1, 2, C, device=device)
        self.cond_BD = torch.zeros(B, C, device=device)
        ns = [pn * pn for pn in model.patch_nums]
        self.guides = [torch.zeros(B, 2 * n, C, device=device) for n in ns]
        self.alpha = [torch.zeros(B, 1, 1, device=device) for _ in ns]
        self.x_in = [torch.zeros(B, n, C, device=device) for n in ns]
        self.caches = [KVCache(model.L) for _ in self.blocks]
        #: the style tokens' keys and values per block (``clip_resampler`` models), written by :meth:`bind`
        self.style_kv: list[tuple[torch.Tensor, torch.Tensor]] | None = None
        self.logits: list[torch.Tensor | None] = [None] * len(ns)
        self.graphs: list[torch.cuda.CUDAGraph] = []
        self._ready = False
        self._switches = adapter_switches(model.blocks)

    def _reset(self) -> None:
        """Forget the captured state (the model's adapters were switched since): re-copy and re-capture."""
        if self.dtype is not None:
            self.blocks = copy.deepcopy(self.model.blocks).to(self.dtype)
        self.graphs = []
        self.logits = [None] * len(self.x_in)
        self._ready = False
        self._switches = adapter_switches(self.model.blocks)

    # ------------------------------------------------------------------ weights
    @torch.no_grad()
    def refresh_weights(self) -> None:
        """Copy the model's block weights into the reduced-precision copy (in place; graphs stay valid)."""
        if self.dtype is None:
            return
        for mine, theirs in zip(self.blocks.parameters(), self.model.blocks.parameters()):
            mine.copy_(theirs)

    # ------------------------------------------------------------------ one scale
    def _autocast(self):
        if self.dtype is None:
            return contextlib.nullcontext()
        return torch.autocast(self.device.type, dtype=self.dtype, cache_enabled=False)

    def _pass(self, si: int) -> torch.Tensor:
        bg, _ = self.model.begin_ends[si]
        for cache in self.caches:
            cache.length = bg  # static offsets: scale si writes keys [bg, ed) and reads [0, ed)
        x = self.x_in[si]
        with self._autocast():
            kvs = self.style_kv or [None] * len(self.caches)
            for block, cache, ada, kv in zip(self.blocks, self.caches, self.ada, kvs):
                x = block(
                    x,
                    self.guides[si],
                    self.cond_BD,
                    self.alpha[si],
                    attn_bias=None,
                    cache=cache,
                    ada=ada,
                    style_kv=kv,
                )
        return self.model._logits(x, self.cond_BD, self.head_ada)

    @torch.no_grad()
    def _prepare(self) -> None:
        """Allocate the caches (first pass) and, on CUDA, capture one graph per scale."""
        if not self.use_graphs:
            for si in range(len(self.x_in)):
                self._pass(si)  # allocates the caches
            self._ready = True
            return
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            for _ in range(2):  # warm-up outside capture (cuBLAS/cuDNN workspaces, cache allocation)
                for si in range(len(self.x_in)):
                    self._pass(si)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        pool = None
        for si in range(len(self.x_in)):
            g = torch.cuda.CUDAGraph()
            with torch.cuda.graph(g, pool=pool):
                self.logits[si] = self._pass(si)
            pool = g.pool()
            self.graphs.append(g)
        self._ready = True

    # ------------------------------------------------------------------ sampling API
    @torch.no_grad()
    def bind(
        self,
        cond_BD: torch.Tensor,
        style_BLC: torch.Tensor,
        content_BLC: torch.Tensor,
        alphas: torch.Tensor,
        style_tokens: torch.Tensor | None = None,
    ) -> None:
        """Write one batch's conditions into the static buffers (``style_tokens``: a ``clip_resampler``
        model's (B, M, C))."""
        m = self.model
        if adapter_switches(m.blocks) != self._switches:  # adapters switched on/off since the capture
            self._reset()
        self.cond_BD.copy_(cond_BD)
        with self._autocast():
            for buf, block in zip(self.ada, self.blocks):
                buf.copy_(block.adaln(cond_BD))
            if style_tokens is not None:
                kvs = [block.style_attn.keys_values(style_tokens) for block in self.blocks]
                if self.style_kv is None:  # first bind: allocate (fixed shapes for this batch size)
                    self.style_kv = [(k.clone(), v.clone()) for k, v in kvs]
                else:
                    for (kb, vb), (k, v) in zip(self.style_kv, kvs):
                        kb.copy_(k)
                        vb.copy_(v)
        self.head_ada.copy_(m.head_nm.adaln(cond_BD.float()))
        for si, (bg, ed) in enumerate(m.begin_ends):
            self.guides[si].copy_(m._guides_ln(style_BLC[:, bg:ed], content_BLC[:, bg:ed]))
            self.alpha[si].copy_(alphas[:, si].view(-1, 1, 1))
        if not self._ready:
            self._prepare()

    def step(self, si: int, x: torch.Tensor) -> torch.Tensor:
        """Logits (B, n, V) fp32 of scale ``si`` for its input ``x`` (B, n, C); a view of a static buffer."""
        self.x_in[si].copy_(x)
        if self.use_graphs:
            self.graphs[si].replay()
            out = self.logits[si]
            assert out is not None
            return out
        return self._pass(si)
