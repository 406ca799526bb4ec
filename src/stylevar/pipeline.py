"""StyleVARPipeline: content and style images in, stylized images out.

    pipe = StyleVARPipeline.from_pretrained()                 # Hub: Senfier-LiqiJing/StyleVAR, GRPO weights
    out = pipe("photo.jpg", "painting.png", num_samples=4, seed=0)
    out.images[0].save("result.png"); print(out.seeds)

    for r in pipe.stylize_pairs(read_manifest("pairs.csv"), on_bad_file="skip"):   # any number of pairs
        r.image.save(...) if r.ok else print(r.error)

One loop serves both (``stylize_pairs``; ``__call__`` and ``iter_batches`` build pairs and call it):
the (pair, sample) jobs are taken a window of a few batches at a time; the window's images that are
not already encoded are read, resized and encoded (VQ tokens + ResNet feature, kept in a bounded
cache, so a style used by many pairs is encoded once); each batch is sampled scale by scale
(``StyleVAR.generate``), decoded and yielded. Memory does not grow with the number of pairs.
"""

from __future__ import annotations

import itertools
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageOps

from .config import SamplingConfig
from .controls import COLOUR_MODES, UPSAMPLERS, blend_weights
from .devices import bf16_decoder_, decode_dtype, resolve_device
from .errors import ConfigError, ImageError
from .images import (
    FITS,
    load_image,
    pil_from_tensor_input,
    to_rgb,
)
from .io import Checkpoint, load_pretrained, save_pretrained
from .models import VQVAE, Conditioning, StyleVAR
from .models.quantized import run_dtype
from .pairs import Blend, Pair, image_seed
from .regional import Regional, load_regional
from .stream import EncodedImages, Job, PairResult, as_pair, cancel_hook, image_key, postprocess

BAD_FILE_POLICIES = ("fail", "skip")

logger = logging.getLogger(__name__)

ImageInput = str | os.PathLike | Image.Image | torch.Tensor
ImagesInput = ImageInput | Sequence[ImageInput]


@dataclass
class StylizeOutput:
    """Results in job order: for each (content, style) pair, its ``num_samples`` samples."""

    images: list[Any]  #: PIL images, or (3, R, R) tensors in [0, 1] with ``output_type="pt"``
    seeds: list[int]  #: the seed of each image: pass it back with num_samples=1 to reproduce it
    pairs: list[tuple[int, int]] = field(default_factory=list)  #: (content index, style index) per image
    sample_indices: list[int] = field(default_factory=list)  #: which of the pair's samples each image is

    def __len__(self) -> int:
        return len(self.images)

    def __iter__(self) -> Iterator[Any]:
        return iter(self.images)

    def __getitem__(self, i: int) -> Any:
        return self.images[i]


def _as_list(x: ImagesInput) -> list[ImageInput]:
    if isinstance(x, (str, os.PathLike, Image.Image)):
        return [x]
    if torch.is_tensor(x):
        return [x] if x.ndim == 3 else list(x.unbind(0))
    return list(x)


class StyleVARPipeline:
    def __init__(
        self,
        model: StyleVAR,
        vae: VQVAE,
        sampling: SamplingConfig | None = None,
        *,
        device: str | torch.device | None = "cpu",
        info: dict[str, Any] | None = None,
    ):
        model.config.check_vqvae(vae.config)
        self.device = resolve_device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.vae = vae.eval().requires_grad_(False).to(self.device)
        self.sampling = sampling or SamplingConfig()
        self.info = info or {}

    # ------------------------------------------------------------------ loading / saving
    @classmethod
    def from_pretrained(
        cls,
        pretrained: str | os.PathLike | None = None,
        *,
        variant: str | None = None,
        vae: str | os.PathLike | None = None,
        device: str | torch.device | None = "cpu",
        alpha: Any = None,
        revision: str | None = None,
        cache_dir: str | os.PathLike | None = None,
        local_files_only: bool = False,
        allow_pickle: bool = False,
        base: str | os.PathLike | None = None,
    ) -> StyleVARPipeline:
        """Load from our format, upstream files or a Hub repo (see :func:`stylevar.io.load_pretrained`)."""
        ckpt: Checkpoint = load_pretrained(
            pretrained,
            vae=vae,
            variant=variant,
            alpha=alpha,
            revision=revision,
            cache_dir=cache_dir,
            local_files_only=local_files_only,
            allow_pickle=allow_pickle,
            base=base,
        )
        return cls(ckpt.model, ckpt.vae, ckpt.sampling, device=device, info=ckpt.info)

    def save_pretrained(self, out_dir: str | os.PathLike, dtype: torch.dtype | None = None) -> None:
        save_pretrained(out_dir, self.model, self.vae, sampling=self.sampling, info=self.info, dtype=dtype)

    def to(self, device: str | torch.device) -> StyleVARPipeline:
        """Move the models to ``device`` (``auto`` picks CUDA when available)."""
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.vae.to(self.device)
        return self

    @property
    def resolution(self) -> int:
        return self.vae.config.resolution

    # ------------------------------------------------------------------ inputs
    def load_images(self, images: ImagesInput, role: str) -> list[Image.Image]:
        """Paths / PIL images / tensors in [0, 1] -> RGB PIL images (all read before any work starts)."""
        out: list[Image.Image] = []
        for item in _as_list(images):
            if isinstance(item, Image.Image):
                out.append(to_rgb(ImageOps.exif_transpose(item) or item))
            elif torch.is_tensor(item):
                out.extend(pil_from_tensor_input(item, role))
            elif isinstance(item, (str, os.PathLike)):
                out.append(load_image(item, role=role))
            else:
                raise ImageError(f"{role} must be a path, a PIL image or a tensor, got {type(item).__name__}")
        if not out:
            raise ImageError(f"no {role} images given")
        return out

    def prepare_dtype(self, dtype: torch.dtype | str | None) -> torch.dtype | None:
        """The autocast dtype of ``dtype`` for ``generate`` (``"int8"``: see :func:`~stylevar.models.quantized.run_dtype`)."""
        out = run_dtype(self.model, self.device, dtype)
        bf16_decoder_(self.vae, self.model, self.device)  # int8 on an AMX CPU: the decoder's weights in bf16
        return out

    @torch.no_grad()
    def _encode(self, batch: torch.Tensor, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        fn = self.model.encode_style if role == "style" else self.model.encode_content
        return fn(self.vae, batch.to(self.device))

    # ------------------------------------------------------------------ main entry
    def __call__(self, content: ImagesInput, style: ImagesInput, **kwargs: Any) -> StylizeOutput:
        """Stylize content image(s) with style image(s); all results at once.

        Args:
            content, style: a path, PIL image or tensor in [0, 1] ((3, H, W) or (B, 3, H, W)), or a list.
            num_samples: images per pair, each with its own seed.
            seed: base seed; image k (pair-major) gets ``seed + k``, so each image is reproducible
                whatever the batch size. None draws a random base seed (reported in ``seeds``).
            top_k, top_p, temperature, style_strength: sampling controls (default: the checkpoint's).
            alpha: explicit per-scale alpha (one value per scale), overriding the checkpoint's.
            pairing: ``zip`` (i-th content with i-th style; a single image pairs with all) or
                ``product`` (every content with every style).
            batch_size: images generated at once.
            fit, keep_size: resize policy (see :mod:`stylevar.images`).
            legacy_kv_cache: reproduce the published sampler token for token.
            dtype: ``torch.bfloat16``/``torch.float16`` (or ``"bf16"``/``"fp16"``) for the fast
                reduced-precision path (see :meth:`StyleVAR.generate`); default fp32.
            cuda_graphs: replay each scale's transformer pass as a CUDA graph (captured on the
                first batch of each size); on CPU the same static path runs eagerly.
            output_type: ``pil`` or ``pt`` ((3, H, W) tensors in [0, 1]).
            style_weights, preserve_color, upscale: creative controls; see :meth:`iter_batches`.
            mask, regions: where the style goes (regional style); see :meth:`iter_batches`.
            progress: show a progress bar.
        """
        out = StylizeOutput(images=[], seeds=[])
        for batch in self.iter_batches(content, style, **kwargs):
            out.images.extend(batch.images)
            out.seeds.extend(batch.seeds)
            out.pairs.extend(batch.pairs)
            out.sample_indices.extend(batch.sample_indices)
        return out

    @torch.no_grad()
    def iter_batches(
        self,
        content: ImagesInput,
        style: ImagesInput,
        *,
        num_samples: int = 1,
        seed: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        style_strength: float | None = None,
        alpha: Sequence[float] | None = None,
        pairing: str = "zip",
        batch_size: int = 4,
        fit: str = "crop",
        keep_size: bool = False,
        legacy_kv_cache: bool = False,
        dtype: torch.dtype | str | None = None,
        cuda_graphs: bool = False,
        output_type: str = "pil",
        progress: bool = False,
        skip: Callable[[int, int, int], bool] | None = None,
        style_weights: Sequence[float] | None = None,
        preserve_color: str = "none",
        upscale: str = "lanczos",
        mask: ImageInput | None = None,
        regions: Sequence[tuple[ImageInput, ImageInput]] | None = None,
        leakage: dict[str, Any] | None = None,
    ) -> Iterator[StylizeOutput]:
        """Like ``__call__`` (same arguments) but yields each batch's results as soon as it is done,
        so a caller can save them as it goes.

        ``skip(content_index, style_index, sample_index)`` returning True leaves that image out (for
        resuming a folder run); the seeds of the others do not change.

        Creative controls (:mod:`stylevar.controls`):

        * ``style_weights``: one weight per style image; the style images are blended into one style
          inside the model's conditioning (AdaLN condition and style queries: the weighted sum of each
          image's ResNet feature and VQ condition features), weights normalised to sum 1. Results are
          then those of a single style (style index 0).
        * ``preserve_color``: ``luminance`` (the result's luma, the content's chroma) or ``stats`` (the
          result's colour mean/covariance matched to the content's); ``none`` (default).
        * ``upscale``: with ``keep_size``, ``lanczos`` (default) or ``guided`` (bicubic, then a guided
          filter with the full-resolution content as guide: the content's fine detail at full size).

        Regional style (the same for every pair of the call; a mask covers the content image, so give it
        the content's aspect ratio; it is cropped with ``fit`` and area-averaged to every scale's tokens):

        * ``mask``: a grey-level map of style strength. White keeps the model's alpha, black moves it to
          the content end (0.01, where ``style_strength`` clamps), grey in between: alpha becomes per
          token. An all-white mask gives the plain result bit for bit.
        * ``regions``: ``[(mask, style), ...]``: inside each mask, tokens take their style queries and
          AdaLN condition from that style instead of the pair's; soft edges blend; overlapping masks
          share (weights scaled to sum 1). A region covering the whole image with style B gives what
          stylizing with B gives. Both run the eager sampler (not with ``cuda_graphs``).
        * ``leakage``: StyleAR's knobs against the style image's own objects showing up, ``{"style_mask":
          salient region of the style image, "subtract": alpha, "style_noise": gamma}``
          (:meth:`stylevar.regional.Regional.edit_styles`).
        """
        contents, styles = _as_list(content), _as_list(style)
        for role, items in (("content", contents), ("style", styles)):
            if not items:
                raise ImageError(f"no {role} images given")
        blend = None if style_weights is None else blend_weights(style_weights, len(styles))
        index = _make_pairs(len(contents), 1 if blend else len(styles), pairing)
        blended = Blend(tuple(styles), tuple(blend)) if blend else None
        pairs = [Pair(contents[c], blended if blended is not None else styles[st]) for c, st in index]
        keep = None if skip is None else (lambda i, _pair, k: skip(index[i][0], index[i][1], k))
        for results in self._stream(
            pairs,
            num_samples=num_samples,
            seed=seed,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            style_strength=style_strength,
            alpha=alpha,
            batch_size=batch_size,
            fit=fit,
            keep_size=keep_size,
            legacy_kv_cache=legacy_kv_cache,
            dtype=dtype,
            cuda_graphs=cuda_graphs,
            output_type=output_type,
            preserve_color=preserve_color,
            upscale=upscale,
            skip=keep,
            progress=progress,
            mask=mask,
            regions=regions,
            leakage=leakage,
        ):
            yield StylizeOutput(
                images=[r.image for r in results],
                seeds=[r.seed for r in results],
                pairs=[index[r.index] for r in results],
                sample_indices=[r.sample for r in results],
            )

    def stylize_pairs(
        self,
        pairs: Iterable[Pair | tuple[Any, Any]],
        *,
        num_samples: int = 1,
        seed: int | None = None,
        top_k: int | None = None,
        top_p: float | None = None,
        temperature: float | None = None,
        style_strength: float | None = None,
        alpha: Sequence[float] | None = None,
        batch_size: int = 4,
        window: int = 4,
        cache_size: int = 256,
        fit: str = "crop",
        keep_size: bool = False,
        legacy_kv_cache: bool = False,
        dtype: torch.dtype | str | None = None,
        cuda_graphs: bool = False,
        output_type: str = "pil",
        preserve_color: str = "none",
        upscale: str = "lanczos",
        on_bad_file: str = "fail",
        skip: Callable[[int, Pair, int], bool] | None = None,
        progress: bool = False,
        total: int | None = None,
        pad_batches: bool | None = None,
        mask: ImageInput | None = None,
        regions: Sequence[tuple[ImageInput, ImageInput]] | None = None,
        leakage: dict[str, Any] | None = None,
    ) -> Iterator[PairResult]:
        """Stylize any number of pairs, streaming: yields one :class:`PairResult` per image, in order.

        ``pairs``: an iterable (a generator is fine: it is consumed a window at a time) of
        :class:`~stylevar.pairs.Pair` or ``(content, style)`` tuples; sources are in
        :mod:`stylevar.pairs` (folders, CSV/JSON-lines manifests). A pair's own settings (seed,
        style strength, colour preservation, top-k/top-p/temperature) override the arguments here.

        Seeds: pair ``i``'s sample ``k`` gets ``pair.seed + k``, or ``seed + i * num_samples + k``
        when the pair has none (``seed`` None: a random base). Each image depends only on its inputs,
        settings and seed, not on the batch it lands in.

        Memory: the images of ``window`` batches are read at a time; encoded images (VQ condition
        features and ResNet feature, some kB each) are kept in an LRU cache of ``cache_size`` per role,
        so a style shared by many pairs is read and encoded once. Full-resolution contents are kept
        only within a window, and only for ``keep_size`` / colour preservation.

        ``on_bad_file``: ``fail`` raises :class:`~stylevar.errors.ImageError` at the first input that
        cannot be read (results before it have been yielded); ``skip`` yields a result with
        ``error`` set for each image of a pair with an unreadable input and goes on.
        ``skip(index, pair, sample)`` returning True leaves that image out without reading anything
        (resuming); the other images' seeds do not change.

        Same bytes wherever an image is made: a run of at least ``batch_size`` images (skipped ones
        included) computes every batch at full size, padding a short one (``pad_batches`` None: so
        decided; True/False force it). Kernels round differently at different batch sizes, so
        without it an image could move by one 8-bit level between a folder run, a manifest and a
        Ray worker. A run smaller than one batch is not padded (one image costs one image).
        Other arguments (``mask``, ``regions`` included): see :meth:`__call__` and :meth:`iter_batches`.
        """
        if total is None and hasattr(pairs, "__len__"):
            total = len(pairs) * num_samples  # type: ignore[arg-type]
        for results in self._stream(
            pairs,
            num_samples=num_samples,
            seed=seed,
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            style_strength=style_strength,
            alpha=alpha,
            batch_size=batch_size,
            window=window,
            cache_size=cache_size,
            fit=fit,
            keep_size=keep_size,
            legacy_kv_cache=legacy_kv_cache,
            dtype=dtype,
            cuda_graphs=cuda_graphs,
            output_type=output_type,
            preserve_color=preserve_color,
            upscale=upscale,
            on_bad_file=on_bad_file,
            skip=skip,
            progress=progress,
            total=total,
            pad_batches=pad_batches,
            mask=mask,
            regions=regions,
            leakage=leakage,
        ):
            yield from results

    # ------------------------------------------------------------------ the streaming loop
    @torch.no_grad()
    def _stream(
        self,
        pairs: Iterable[Any],
        *,
        num_samples: int,
        seed: int | None,
        top_k: int | None,
        top_p: float | None,
        temperature: float | None,
        style_strength: float | None,
        alpha: Sequence[float] | None,
        batch_size: int,
        fit: str,
        keep_size: bool,
        legacy_kv_cache: bool,
        dtype: torch.dtype | str | None,
        cuda_graphs: bool,
        output_type: str,
        preserve_color: str,
        upscale: str,
        skip: Callable[[int, Pair, int], bool] | None,
        progress: bool,
        window: int = 4,
        cache_size: int = 256,
        on_bad_file: str = "fail",
        total: int | None = None,
        pad_batches: bool | None = None,
        mask: ImageInput | None = None,
        regions: Sequence[tuple[ImageInput, ImageInput]] | None = None,
        leakage: dict[str, Any] | None = None,
    ) -> Iterator[list[PairResult]]:
        """The loop behind every entry point: yields each batch's results (a bad pair: a list of its own)."""
        s = self.sampling
        defaults = {
            "top_k": s.top_k if top_k is None else top_k,
            "top_p": s.top_p if top_p is None else top_p,
            "temperature": s.temperature if temperature is None else temperature,
            "style_strength": s.style_strength if style_strength is None else style_strength,
        }
        SamplingConfig(**defaults)  # validates
        if fit not in FITS:
            raise ConfigError(f"fit must be one of {FITS}, got {fit!r}")
        if num_samples < 1 or batch_size < 1 or window < 1:
            raise ConfigError("num_samples, batch_size and window must be >= 1")
        if output_type not in ("pil", "pt"):
            raise ConfigError("output_type must be 'pil' or 'pt'")
        if preserve_color not in COLOUR_MODES:
            raise ConfigError(f"preserve_color must be one of {COLOUR_MODES}, got {preserve_color!r}")
        if upscale not in UPSAMPLERS:
            raise ConfigError(f"upscale must be one of {UPSAMPLERS}, got {upscale!r}")
        if on_bad_file not in BAD_FILE_POLICIES:
            raise ConfigError(f"on_bad_file must be one of {BAD_FILE_POLICIES}, got {on_bad_file!r}")
        dtype = self.prepare_dtype(dtype)
        if alpha is not None:
            try:
                self.model.resolve_alpha(alpha)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        base = secrets.randbelow(2**31) if seed is None else int(seed)
        # a bad mask or region file fails before any work
        regional = load_regional(mask, regions, self.resolution, fit, cuda_graphs, **(leakage or {}))

        considered = 0  # images of the run so far, skipped ones included

        def jobs() -> Iterator[Job]:
            nonlocal considered
            for i, item in enumerate(pairs):
                pair = as_pair(item)
                for k in range(num_samples):
                    considered += 1
                    if skip is not None and skip(i, pair, k):
                        if bar is not None:  # a resumed run's bar starts where the last one stopped
                            bar.update(1)
                        continue
                    yield i, pair, k, image_seed(pair, i, k, num_samples, base)

        encoded = EncodedImages(self._encode, self.resolution, fit, cache_size, on_bad_file)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="img", desc="stylizing")
        job_iter = jobs()
        pad_to = 0  # batches are padded to this many rows (0: as they are)

        def run(batch: list[Job]) -> list[PairResult]:
            results = self._run_batch(
                batch, encoded, full, defaults, alpha, fit, keep_size, legacy_kv_cache, dtype,
                cuda_graphs, output_type, preserve_color, upscale, pad_to, regional,
            )  # fmt: skip
            if bar is not None:
                bar.update(len(batch))
            return results

        try:
            while True:
                win = list(itertools.islice(job_iter, batch_size * window))
                if not win:
                    return
                if pad_batches is None:  # decided once, on the first window: a run of >= 1 batch pads
                    full_window = len(win) == batch_size * window
                    pad_batches = full_window or considered >= batch_size
                pad_to = batch_size if pad_batches else 0
                full = encoded.prepare(
                    win,
                    keep_size=keep_size,
                    preserve_color=preserve_color,
                    batch_size=batch_size,
                    pad_to=pad_to,
                )
                batch: list[Job] = []
                for job in win:
                    error = encoded.error(job[1])
                    key = self._sampling_key(job[1], defaults)
                    if batch and (
                        error or len(batch) == batch_size or key != self._sampling_key(batch[0][1], defaults)
                    ):
                        yield run(batch)
                        batch = []
                    if error:
                        yield [PairResult(job[0], job[2], job[3], job[1], error=error)]
                        if bar is not None:
                            bar.update(1)
                    else:
                        batch.append(job)
                if batch:
                    yield run(batch)
        finally:
            if bar is not None:
                bar.close()

    @staticmethod
    def _sampling_key(pair: Pair, defaults: dict[str, Any]) -> tuple:
        """Settings that one ``generate`` call shares: a batch holds pairs that agree on them."""
        return tuple(
            defaults[k] if getattr(pair, k) is None else getattr(pair, k)
            for k in ("top_k", "top_p", "temperature")
        )

    def _run_batch(
        self,
        batch: list[Job],
        encoded: EncodedImages,
        full: dict[tuple, Image.Image],
        defaults: dict[str, Any],
        alpha: Sequence[float] | None,
        fit: str,
        keep_size: bool,
        legacy_kv_cache: bool,
        dtype: torch.dtype | None,
        cuda_graphs: bool,
        output_type: str,
        preserve_color: str,
        upscale: str,
        pad_to: int = 0,
        regional: Regional | None = None,
    ) -> list[PairResult]:
        """Sample and decode one batch of jobs whose inputs are encoded (``regional``: the call's mask and
        region styles, see :meth:`iter_batches`).

        With ``pad_to``, a shorter batch is padded with copies of its last job (their images are
        dropped): every image of the run is then computed in a batch of the same size, and CPU and
        GPU kernels, whose rounding depends on the batch size but not on the other rows, give it the
        same bytes wherever it falls -- in a folder run, a manifest, the API or a Ray worker.
        """
        n = len(batch)
        batch = batch + batch[-1:] * max(0, pad_to - n)
        c_enc = [encoded.content(p) for _, p, _, _ in batch]
        s_enc = [encoded.style(p) for _, p, _, _ in batch]
        s_feat, s_cvae = torch.stack([e[0] for e in s_enc]), torch.stack([e[1] for e in s_enc])
        if regional is not None and regional.edits_style:  # StyleAR's subtraction and noise
            s_feat, s_cvae = regional.edit_styles(
                s_feat, s_cvae, [encoded.style_input(p) for _, p, _, _ in batch], [sd for *_, sd in batch],
                self._encode, max(1, pad_to),
            )  # fmt: skip
        cond = Conditioning(
            s_feat, torch.stack([e[0] for e in c_enc]), s_cvae, torch.stack([e[1] for e in c_enc])
        )
        first = batch[0][1]
        top_k, top_p, temperature = self._sampling_key(first, defaults)
        strength, alphas = defaults["style_strength"], alpha
        if any(p.style_strength is not None for _, p, _, _ in batch):  # per-pair strength: alpha per sample
            alphas = torch.cat(
                [
                    self.model.resolve_alpha(
                        alpha, defaults["style_strength"] if p.style_strength is None else p.style_strength, 1
                    )
                    for _, p, _, _ in batch
                ]
            )
            strength = 0.0
        out = self.generate_batch(
            cond,
            [sd for _, _, _, sd in batch],
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            alpha=alphas,
            style_strength=strength,
            legacy_kv_cache=legacy_kv_cache,
            dtype=dtype,
            cuda_graphs=cuda_graphs,
            regional=regional,
            encoder_rows=max(1, pad_to),
        )
        results = []
        for (i, pair, k, sd), img in zip(batch[:n], out.images[:n]):
            colour = pair.preserve_color or preserve_color
            content = full.get(image_key(pair.content))
            results.append(
                PairResult(
                    i,
                    k,
                    sd,
                    pair,
                    postprocess(img, content, fit, keep_size, output_type, colour, upscale),
                )
            )
        return results

    # ------------------------------------------------------------------ one batch, regional style
    def generate_batch(
        self,
        cond: Conditioning,
        seeds: Sequence[int],
        *,
        top_k: int,
        top_p: float,
        temperature: float,
        alpha: Any = None,
        style_strength: float = 0.0,
        legacy_kv_cache: bool = False,
        dtype: torch.dtype | None = None,
        cuda_graphs: bool = False,
        regional: Regional | None = None,
        encoder_rows: int = 1,
        token_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ):
        """``StyleVAR.generate`` for one batch of encoded pairs, with the call's mask (per-token alpha:
        white keeps the model's alpha, black the content end) and region styles (encoded once, each in
        a batch of ``encoder_rows``, the size the pairs' styles are encoded at: the same bytes)."""
        regions, token_hook = None, cancel_hook(token_hook)  # a web request's Stop: at a scale boundary
        if regional is not None:
            alpha, style_strength = regional.alpha(self.model, alpha, style_strength, cond.batch_size)
            regions = regional.regions(self.model, self._encode, encoder_rows, cond.batch_size)
        return self.model.generate(
            self.vae,
            cond,
            seed=list(seeds),
            top_k=top_k,
            top_p=top_p,
            temperature=temperature,
            alpha=alpha,
            style_strength=style_strength,
            legacy_kv_cache=legacy_kv_cache,
            dtype=dtype,
            cuda_graphs=cuda_graphs,
            regions=regions,
            token_hook=token_hook,
            decode_dtype=decode_dtype(self.model, self.device),
        )


def _make_pairs(n_content: int, n_style: int, pairing: str) -> list[tuple[int, int]]:
    if pairing == "product":
        return [(c, s) for c in range(n_content) for s in range(n_style)]
    if pairing != "zip":
        raise ConfigError(f"pairing must be 'zip' or 'product', got {pairing!r}")
    if n_content == n_style:
        return [(i, i) for i in range(n_content)]
    if n_style == 1:
        return [(i, 0) for i in range(n_content)]
    if n_content == 1:
        return [(0, i) for i in range(n_style)]
    raise ConfigError(
        f"{n_content} content and {n_style} style images cannot be zipped; give equal counts, one of either, "
        "or pairing='product'"
    )
