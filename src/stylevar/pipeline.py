"""StyleVARPipeline: content and style images in, stylized images out.

    pipe = StyleVARPipeline.from_pretrained()                 # Hub: Senfier-LiqiJing/StyleVAR, GRPO weights
    out = pipe("photo.jpg", "painting.png", num_samples=4, seed=0)
    out.images[0].save("result.png"); print(out.seeds)

The whole loop is visible in ``__call__``: read and resize the images, encode every distinct
content and style image once (VQ tokens + ResNet feature), then for each batch of
(pair, sample) jobs sample the tokens scale by scale (``StyleVAR.generate``) and decode.
"""

from __future__ import annotations

import logging
import os
import secrets
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from PIL import Image, ImageOps

from .config import SamplingConfig
from .controls import COLOUR_MODES, UPSAMPLERS, blend_weights, guided_upsample, preserve_colour
from .devices import resolve_device
from .errors import ConfigError, ImageError
from .images import (
    FITS,
    crop_box,
    load_image,
    pil_from_tensor_input,
    pil_to_unit_tensor,
    tensor_to_pil,
    to_model_input,
    to_rgb,
)
from .io import Checkpoint, load_pretrained, save_pretrained
from .models import VQVAE, Conditioning, StyleVAR
from .models.ops import parse_dtype

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

    @torch.no_grad()
    def _encode(self, batch: torch.Tensor, role: str) -> tuple[torch.Tensor, torch.Tensor]:
        fn = self.model.encode_style if role == "style" else self.model.encode_content
        return fn(self.vae, batch.to(self.device))

    def _encode_all(
        self, tensors: torch.Tensor, role: str, batch_size: int
    ) -> tuple[torch.Tensor, torch.Tensor]:
        feats, cvaes = [], []
        for i in range(0, tensors.shape[0], batch_size):
            f, c = self._encode(tensors[i : i + batch_size], role)
            feats.append(f)
            cvaes.append(c)
        return torch.cat(feats), torch.cat(cvaes)

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
        """
        s = self.sampling
        top_k = s.top_k if top_k is None else top_k
        top_p = s.top_p if top_p is None else top_p
        temperature = s.temperature if temperature is None else temperature
        style_strength = s.style_strength if style_strength is None else style_strength
        SamplingConfig(
            top_k=top_k, top_p=top_p, temperature=temperature, style_strength=style_strength
        )  # validates
        if fit not in FITS:
            raise ConfigError(f"fit must be one of {FITS}, got {fit!r}")
        if num_samples < 1 or batch_size < 1:
            raise ConfigError("num_samples and batch_size must be >= 1")
        if output_type not in ("pil", "pt"):
            raise ConfigError("output_type must be 'pil' or 'pt'")
        if preserve_color not in COLOUR_MODES:
            raise ConfigError(f"preserve_color must be one of {COLOUR_MODES}, got {preserve_color!r}")
        if upscale not in UPSAMPLERS:
            raise ConfigError(f"upscale must be one of {UPSAMPLERS}, got {upscale!r}")
        dtype = parse_dtype(dtype)
        if alpha is not None:
            try:
                self.model.resolve_alpha(alpha)
            except ValueError as e:
                raise ConfigError(str(e)) from None

        # 1. read every image first: a bad file fails before anything is computed or written
        contents = self.load_images(content, "content")
        styles = self.load_images(style, "style")
        blend = None if style_weights is None else blend_weights(style_weights, len(styles))
        pairs = _make_pairs(len(contents), 1 if blend else len(styles), pairing)
        base = secrets.randbelow(2**31) if seed is None else int(seed)
        jobs = [
            (p, k, base + p * num_samples + k)
            for p in range(len(pairs))
            for k in range(num_samples)
            if skip is None or not skip(pairs[p][0], pairs[p][1], k)
        ]
        if not jobs:
            return

        # 2. encode each distinct image once (VQ-VAE tokens -> condition features, ResNet feature)
        R = self.resolution
        used_c = sorted({pairs[p][0] for p, _, _ in jobs})
        used_s = sorted({pairs[p][1] for p, _, _ in jobs})
        c_feat, c_cvae = self._encode_all(
            torch.stack([to_model_input(contents[i], R, fit) for i in used_c]), "content", batch_size
        )
        if blend:  # every style image encoded, then one weighted style (exact for weights like (1, 0))
            f, c = self._encode_all(
                torch.stack([to_model_input(im, R, fit) for im in styles]), "style", batch_size
            )
            w = torch.tensor(blend, device=f.device, dtype=f.dtype)
            s_feat = (w.view(-1, 1) * f).sum(0, keepdim=True)
            s_cvae = (w.view(-1, 1, 1).to(c.dtype) * c).sum(0, keepdim=True)
        else:
            s_feat, s_cvae = self._encode_all(
                torch.stack([to_model_input(styles[i], R, fit) for i in used_s]), "style", batch_size
            )
        c_row = {c: r for r, c in enumerate(used_c)}
        s_row = {st: r for r, st in enumerate(used_s)}

        # 3. sample the (pair, sample) jobs in batches, each image with its own seed
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(jobs), unit="img", desc="stylizing")
        try:
            for start in range(0, len(jobs), batch_size):
                chunk = jobs[start : start + batch_size]
                ci = torch.tensor([c_row[pairs[p][0]] for p, _, _ in chunk], device=self.device)
                si = torch.tensor([s_row[pairs[p][1]] for p, _, _ in chunk], device=self.device)
                cond = Conditioning(s_feat[si], c_feat[ci], s_cvae[si], c_cvae[ci])
                out = self.model.generate(
                    self.vae,
                    cond,
                    seed=[sd for _, _, sd in chunk],
                    top_k=top_k,
                    top_p=top_p,
                    temperature=temperature,
                    alpha=alpha,
                    style_strength=style_strength,
                    legacy_kv_cache=legacy_kv_cache,
                    dtype=dtype,
                    cuda_graphs=cuda_graphs,
                )
                yield StylizeOutput(
                    images=[
                        self._postprocess(
                            img, contents[pairs[p][0]], fit, keep_size, output_type, preserve_color, upscale
                        )
                        for (p, _, _), img in zip(chunk, out.images)
                    ],
                    seeds=[sd for _, _, sd in chunk],
                    pairs=[pairs[p] for p, _, _ in chunk],
                    sample_indices=[k for _, k, _ in chunk],
                )
                if bar is not None:
                    bar.update(len(chunk))
        finally:
            if bar is not None:
                bar.close()

    @staticmethod
    def _postprocess(
        img: torch.Tensor,
        content: Image.Image,
        fit: str,
        keep_size: bool,
        output_type: str,
        preserve_color: str = "none",
        upscale: str = "lanczos",
    ) -> Any:
        """A (3, R, R) result -> the output: at the content region's size with ``keep_size`` (LANCZOS or
        guided upsampling), then colour preservation against the content region at that size."""
        x = img.detach().float().cpu().clamp(0, 1).unsqueeze(0)
        region = None
        if keep_size or preserve_color != "none":
            region = content.crop(crop_box(content.size, fit))
        if keep_size and region.size != (x.shape[-1], x.shape[-2]):
            if upscale == "guided":
                x = guided_upsample(x, pil_to_unit_tensor(region))
            else:
                x = pil_to_unit_tensor(tensor_to_pil(x[0]).resize(region.size, Image.Resampling.LANCZOS))
        if preserve_color != "none":
            ref = (
                region
                if region.size == (x.shape[-1], x.shape[-2])
                else region.resize((x.shape[-1], x.shape[-2]), Image.Resampling.LANCZOS)
            )
            x = preserve_colour(x, pil_to_unit_tensor(ref), preserve_color)
        if output_type == "pt":
            return x[0]
        return tensor_to_pil(x[0])


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
