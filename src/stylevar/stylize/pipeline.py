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

import dataclasses
import itertools
import logging
import os
import secrets
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageOps

from ..config import Sampling
from ..devices import bf16_convolutions_, decode_dtype, resolve_device, resolve_dtype
from ..errors import ConfigError, ImageError
from ..images import load_image, pil_from_tensor_input, to_rgb
from ..io import Checkpoint, load_pretrained, save_pretrained
from ..models import VQVAE, Conditioning, StyleVAR
from ..models.quantized import run_dtype
from .controls import blend_weights
from .pairs import Blend, Pair, filters_of, image_seed, pair_sampling
from .regional import Regional, load_regional
from .settings import StylizeSettings
from .stream import EncodedImages, Job, PairResult, as_pair, cancel_hook, image_key, postprocess

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
        sampling: Sampling | None = None,
        *,
        device: str | torch.device | None = "cpu",
        info: dict[str, Any] | None = None,
    ):
        model.config.check_vqvae(vae.config)
        self.device = resolve_device(device)
        self.model = model.eval().requires_grad_(False).to(self.device)
        self.vae = vae.eval().requires_grad_(False).to(self.device)
        self.sampling = sampling or Sampling()  #: the checkpoint's sampling defaults
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
        """Make the weights fit a run's ``dtype``; returns the autocast dtype ``generate`` will use (None: none).

        ``auto`` is resolved for the device (:func:`~stylevar.devices.resolve_dtype`: bf16 where it computes
        bf16 natively, else fp32; a pipeline already converted keeps its arithmetic). ``bf16`` on the CPU
        stores the weights in bf16 once, in place, and runs without autocast; ``int8`` quantizes the
        transformer in place (:func:`~stylevar.models.quantized.run_dtype`). Either conversion releases the
        fp32 weights: this pipeline then refuses fp32 (and the other arithmetic) with a
        :class:`~stylevar.errors.ConfigError` -- load it again for that. On a GPU bf16 and fp16 run under
        autocast and change nothing."""
        name = dtype if not isinstance(dtype, str) else resolve_dtype(dtype.lower(), self.device, self.model)
        if name != dtype:
            logger.info("dtype %s: %s on %s", dtype, name, self.device)
        out = run_dtype(self.model, self.device, name, vae=self.vae)
        bf16_convolutions_(self.vae, self.model, self.device)  # int8 on an AMX CPU: the convolutions in bf16
        return out

    @torch.no_grad()
    def _encode(self, batch: torch.Tensor, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        fn = self.model.encode_style if role == "style" else self.model.encode_content
        return fn(self.vae, batch.to(self.device))

    # ------------------------------------------------------------------ settings
    def settings(self, settings: StylizeSettings | None = None, **keywords: Any) -> StylizeSettings:
        """The run's :class:`~stylevar.stylize.settings.StylizeSettings`: ``settings`` (default: the defaults with
        this checkpoint's sampling defaults) with ``keywords`` applied by field name (``top_k=1``,
        ``keep_size=True``, ``mask=...``; None leaves a field as it is). One validation, one-line
        :class:`~stylevar.errors.ConfigError`s; an unknown keyword is refused with the closest name."""
        if settings is None:
            settings = StylizeSettings(sampling=Sampling(**self.sampling.stored()))
        elif not isinstance(settings, StylizeSettings):
            raise ConfigError(f"settings must be a StylizeSettings, got {type(settings).__name__}")
        out = settings.with_(**keywords)
        if out.sampling.alpha is not None:
            try:
                self.model.resolve_alpha(out.sampling.alpha)
            except ValueError as e:
                raise ConfigError(str(e)) from None
        return out

    # ------------------------------------------------------------------ main entry
    def __call__(
        self,
        content: ImagesInput,
        style: ImagesInput,
        settings: StylizeSettings | None = None,
        **keywords: Any,
    ) -> StylizeOutput:
        """Stylize content image(s) with style image(s); all results at once.

        Args:
            content, style: a path, PIL image or tensor in [0, 1] ((3, H, W) or (B, 3, H, W)), or a list.
            settings: a :class:`~stylevar.stylize.settings.StylizeSettings` (default: the checkpoint's sampling
                defaults and the defaults of every other field).
            keywords: any field of the settings by name, overriding ``settings`` -- sampling (``top_k``,
                ``top_p``, ``temperature``, ``style_strength``, ``alpha``, ``seed``: image k
                (pair-major) gets ``seed + k``, None a random base reported in ``seeds``; ``dtype``,
                ``cuda_graphs``, ``legacy_kv_cache``), output (``fit``, ``keep_size``, ``upscale``,
                ``preserve_color``, ``output_type``), regional style (``mask``, ``regions``, ``leakage``)
                and the run (``num_samples``, ``batch_size``, ``window``, ``on_bad_file``) -- and the
                call's own ``pairing``, ``style_weights``, ``skip``, ``progress``: see
                :meth:`iter_batches`.
        """
        out = StylizeOutput(images=[], seeds=[])
        for batch in self.iter_batches(content, style, settings, **keywords):
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
        settings: StylizeSettings | None = None,
        *,
        pairing: str = "zip",
        style_weights: Sequence[float] | None = None,
        skip: Callable[[int, int, int], bool] | None = None,
        progress: bool = False,
        **keywords: Any,
    ) -> Iterator[StylizeOutput]:
        """Like ``__call__`` (same arguments) but yields each batch's results as soon as it is done,
        so a caller can save them as it goes.

        ``pairing``: ``zip`` (i-th content with i-th style; a single image pairs with all) or ``product``
        (every content with every style). ``skip(content_index, style_index, sample_index)`` returning
        True leaves that image out (for resuming a folder run); the seeds of the others do not change.
        ``style_weights``: one weight per style image; the style images are blended into one style
        inside the model's conditioning (AdaLN condition and style queries: the weighted sum of each
        image's ResNet feature and VQ condition features), weights normalised to sum 1. Results are
        then those of a single style (style index 0).

        The settings (:mod:`stylevar.stylize.settings`; controls in :mod:`stylevar.stylize.controls`):

        * ``preserve_color``: ``luminance`` (the result's luma, the content's chroma) or ``stats`` (the
          result's colour mean/covariance matched to the content's); ``none`` (default).
        * ``upscale``: with ``keep_size``, ``lanczos`` (default) or ``guided`` (bicubic, then a guided
          filter with the full-resolution content as guide: the content's fine detail at full size).
        * ``mask``: a grey-level map of style strength over the content (give it the content's aspect
          ratio; it is cropped with ``fit`` and area-averaged to every scale's tokens). White keeps the
          model's alpha, black moves it to the content end (0.01, where ``style_strength`` clamps), grey
          in between: alpha becomes per token. An all-white mask gives the plain result bit for bit.
        * ``regions``: ``[(mask, style), ...]``: inside each mask, tokens take their style queries and
          AdaLN condition from that style instead of the pair's; soft edges blend; overlapping masks
          share (weights scaled to sum 1). A region covering the whole image with style B gives what
          stylizing with B gives. Masks and regions run the eager sampler (not with ``cuda_graphs``).
        * ``leakage``: StyleAR's knobs against the style image's own objects showing up, a
          :class:`~stylevar.stylize.settings.Leakage` or ``{"style_mask": salient region of the style image,
          "subtract": alpha, "style_noise": gamma}`` (:meth:`stylevar.stylize.regional.Regional.edit_styles`).
        """
        settings = self.settings(settings, **keywords)
        contents, styles = _as_list(content), _as_list(style)
        for role, items in (("content", contents), ("style", styles)):
            if not items:
                raise ImageError(f"no {role} images given")
        blend = None if style_weights is None else blend_weights(style_weights, len(styles))
        index = _make_pairs(len(contents), 1 if blend else len(styles), pairing)
        blended = Blend(tuple(styles), tuple(blend)) if blend else None
        pairs = [Pair(contents[c], blended if blended is not None else styles[st]) for c, st in index]
        keep = None if skip is None else (lambda i, _pair, k: skip(index[i][0], index[i][1], k))
        total = len(pairs) * settings.run.num_samples
        for results in self._stream(pairs, settings, skip=keep, progress=progress, total=total):
            yield StylizeOutput(
                images=[r.image for r in results],
                seeds=[r.seed for r in results],
                pairs=[index[r.index] for r in results],
                sample_indices=[r.sample for r in results],
            )

    def stylize_pairs(
        self,
        pairs: Iterable[Pair | tuple[ImageInput, Any]],
        settings: StylizeSettings | None = None,
        *,
        skip: Callable[[int, Pair, int], bool] | None = None,
        progress: bool = False,
        total: int | None = None,
        **keywords: Any,
    ) -> Iterator[PairResult]:
        """Stylize any number of pairs, streaming: yields one :class:`PairResult` per image, in order.

        ``pairs``: an iterable (a generator is fine: it is consumed a window at a time) of
        :class:`~stylevar.stylize.pairs.Pair` or ``(content, style)`` tuples; sources are in
        :mod:`stylevar.stylize.pairs` (folders, CSV/JSON-lines manifests). A pair's own settings (seed,
        style strength, colour preservation, top-k/top-p/temperature) override the run's.
        ``settings`` and ``keywords``: as :meth:`__call__`.

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
        """
        settings = self.settings(settings, **keywords)
        if total is None and hasattr(pairs, "__len__"):
            total = len(pairs) * settings.run.num_samples  # type: ignore[arg-type]
        for results in self._stream(pairs, settings, skip=skip, progress=progress, total=total):
            yield from results

    # ------------------------------------------------------------------ the streaming loop
    @torch.no_grad()
    def _stream(
        self,
        pairs: Iterable[Any],
        settings: StylizeSettings,
        *,
        skip: Callable[[int, Pair, int], bool] | None = None,
        progress: bool = False,
        total: int | None = None,
    ) -> Iterator[list[PairResult]]:
        """The loop behind every entry point: yields each batch's results (a bad pair: a list of its own)."""
        sampling, output, run = settings.sampling, settings.output, settings.run
        self.prepare_dtype(sampling.dtype)
        base = secrets.randbelow(2**31) if sampling.seed is None else sampling.seed
        # a bad mask or region file fails before any work
        regional = load_regional(settings.regions, self.resolution, output.fit, sampling.cuda_graphs)
        num_samples, batch_size = run.num_samples, run.batch_size
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

        encoded = EncodedImages(self._encode, self.resolution, output.fit, run.cache_size, run.on_bad_file)
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=total, unit="img", desc="stylizing")
        job_iter = jobs()
        pad_batches = run.pad_batches

        def flush(batch: list[Job], full: dict[tuple, Image.Image], pad_to: int) -> list[PairResult]:
            results = self._run_batch(batch, encoded, full, settings, pad_to, regional)
            if bar is not None:
                bar.update(len(batch))
            return results

        try:
            while True:
                win = list(itertools.islice(job_iter, batch_size * run.window))
                if not win:
                    return
                if pad_batches is None:  # decided once, on the first window: a run of >= 1 batch pads
                    full_window = len(win) == batch_size * run.window
                    pad_batches = full_window or considered >= batch_size
                pad_to = batch_size if pad_batches else 0
                full = encoded.prepare(win, output=output, batch_size=batch_size, pad_to=pad_to)
                batch: list[Job] = []
                batch_key = None  # the filters one generate call shares
                for job in win:
                    error = encoded.error(job[1])
                    key = filters_of(sampling, job[1])
                    if batch and (error or len(batch) == batch_size or key != batch_key):
                        yield flush(batch, full, pad_to)
                        batch = []
                    batch_key = key if not batch else batch_key
                    if error:
                        yield [PairResult(job[0], job[2], job[3], job[1], error=error)]
                        if bar is not None:
                            bar.update(1)
                    else:
                        batch.append(job)
                if batch:
                    yield flush(batch, full, pad_to)
        finally:
            if bar is not None:
                bar.close()

    def _run_batch(
        self,
        batch: list[Job],
        encoded: EncodedImages,
        full: dict[tuple, Image.Image],
        settings: StylizeSettings,
        pad_to: int = 0,
        regional: Regional | None = None,
    ) -> list[PairResult]:
        """Sample and decode one batch of jobs whose inputs are encoded (``regional``: the run's mask and
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
        seeds = [sd for *_, sd in batch]
        if regional is not None and regional.edits_style:  # StyleAR's subtraction and noise
            styles = [encoded.style_input(p) for _, p, _, _ in batch]
            s_feat, s_cvae = regional.edit_styles(s_feat, s_cvae, styles, seeds, self._encode, max(1, pad_to))
        cond = Conditioning(
            s_feat, torch.stack([e[0] for e in c_enc]), s_cvae, torch.stack([e[1] for e in c_enc])
        )
        sampling = pair_sampling(settings.sampling, batch[0][1])
        alphas = None
        if any(p.style_strength is not None for _, p, _, _ in batch):  # per-pair strength: alpha per sample
            alphas = torch.cat(
                [
                    self.model.resolve_alpha(sampling.alpha, pair_sampling(sampling, p).style_strength, 1)
                    for _, p, _, _ in batch
                ]
            )
            sampling = dataclasses.replace(sampling, style_strength=0.0)
        out = self.generate_batch(
            cond, seeds, sampling, alpha=alphas, regional=regional, encoder_rows=max(1, pad_to)
        )
        results = []
        for (i, pair, k, sd), img in zip(batch[:n], out.images[:n]):
            content = full.get(image_key(pair.content))
            image = postprocess(img, content, settings.output, pair.preserve_color)
            results.append(PairResult(i, k, sd, pair, image))
        return results

    # ------------------------------------------------------------------ one batch, regional style
    def generate_batch(
        self,
        cond: Conditioning,
        seeds: Sequence[int],
        sampling: Sampling,
        *,
        alpha: torch.Tensor | None = None,
        regional: Regional | None = None,
        encoder_rows: int = 1,
        token_hook: Callable[[int, torch.Tensor], torch.Tensor] | None = None,
    ):
        """``StyleVAR.generate`` for one batch of encoded pairs, with the run's mask (per-token alpha:
        white keeps the model's alpha, black the content end) and region styles (encoded once, each in
        a batch of ``encoder_rows``, the size the pairs' styles are encoded at: the same bytes).
        ``alpha``: a per-sample alpha computed by the caller (then ``sampling.style_strength`` is 0)."""
        regions, token_hook = None, cancel_hook(token_hook)  # a web request's Stop: at a scale boundary
        if regional is not None:
            given = sampling.alpha if alpha is None else alpha
            alpha, strength = regional.alpha(self.model, given, sampling.style_strength, cond.batch_size)
            sampling = dataclasses.replace(sampling, style_strength=strength)
            regions = regional.regions(self.model, self._encode, encoder_rows, cond.batch_size)
        return self.model.generate(
            self.vae,
            cond,
            sampling,
            seed=list(seeds),
            alpha=alpha,
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
