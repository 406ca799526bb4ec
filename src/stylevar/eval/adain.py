"""The AdaIN style-transfer baseline (Huang & Belongie, ICCV 2017), done as its released decoder expects.

Upstream's baseline (docs/upstream.md §7.3, B15) encodes with torchvision's ImageNet
VGG-19 (zero padding) on unnormalised [0, 1] images, while the decoder it loads (naoto0804/pytorch-AdaIN)
was trained on the ``vgg_normalised`` encoder, so its AdaIN numbers are unreliable. :class:`AdaIN` here
uses the encoder the decoder was trained with:

* ``vgg_normalised``: the original Torch/Lua AdaIN's VGG-19 "normalised" network as naoto0804 converted
  it: a 1×1 conv 3→3 that holds the input preprocessing (so it takes [0, 1] RGB, as naoto0804's
  ``test.py`` feeds ``ToTensor`` output), then reflection-padded 3×3 convs with ReLUs and ceil-mode 2×2
  max pools. Indices of the released ``nn.Sequential`` (its state-dict keys are ``'<index>.weight'`` /
  ``'<index>.bias'``): conv1_1 = 2, relu1_1 = 3, relu2_1 = 10, relu3_1 = 17, relu4_1 = 30 (of 53 layers);
  AdaIN uses the layers up to relu4_1 (``[:31]``).
* the decoder: naoto0804's mirror of it (reflection-padded 3×3 convs, ReLUs, three nearest ×2 upsamplings,
  no final activation), 29 layers, convs at indices 1, 5, 8, 11, 14, 18, 21, 25, 28.

Weights (https://github.com/naoto0804/pytorch-AdaIN/releases/tag/v0.0.0): ``vgg_normalised.pth`` and
``decoder.pth``, in ``resolve_cache_dir('adain')`` by default; nothing is downloaded unless
``download=True``.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn

from ..errors import CheckpointError, ConfigError, MissingWeightsError
from ..io.safe import load_strict, read_state_dict, why
from ..perceptual.common import Frozen, PathLike, check_images, resolve_cache_dir
from ..stylize.controls import coral

RELEASE_URL = "https://github.com/naoto0804/pytorch-AdaIN/releases/download/v0.0.0"
ENCODER_FILE = "vgg_normalised.pth"
DECODER_FILE = "decoder.pth"
ENCODER_URL = f"{RELEASE_URL}/{ENCODER_FILE}"
DECODER_URL = f"{RELEASE_URL}/{DECODER_FILE}"
RELU4_1 = 30  # index of relu4_1 in the released vgg_normalised Sequential
MIN_SIZE = 9  # ceil(H / 8) >= 2: the reflection padding at 1/8 scale needs two rows

__all__ = [
    "DECODER_FILE",
    "DECODER_URL",
    "ENCODER_FILE",
    "ENCODER_URL",
    "AdaIN",
    "adain_decoder",
    "adaptive_instance_norm",
    "channel_mean_std",
    "coral",
    "vgg_normalised",
]

# 3x3 conv widths ('M': ceil-mode 2x2 max pool; 'U': nearest 2x upsampling)
_ENCODER_PLAN = (
    64,
    64,
    "M",
    128,
    128,
    "M",
    256,
    256,
    256,
    256,
    "M",
    512,
    512,
    512,
    512,
    "M",
    512,
    512,
    512,
    512,
)
_DECODER_PLAN = (256, "U", 256, 256, 256, 128, "U", 128, 64, "U", 64, 3)


def vgg_normalised() -> nn.Sequential:
    """The full 53-layer ``vgg_normalised`` network in the released file's layout (relu4_1 = index 30)."""
    layers: list[nn.Module] = [nn.Conv2d(3, 3, 1)]
    cin = 3
    for v in _ENCODER_PLAN:
        if v == "M":
            layers.append(nn.MaxPool2d(2, 2, 0, ceil_mode=True))
        else:
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(cin, v, 3), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers)


def adain_decoder() -> nn.Sequential:
    """naoto0804's AdaIN decoder (relu4_1 features, 512 channels → RGB at 8× the size), 29 layers."""
    layers: list[nn.Module] = []
    cin = 512
    for v in _DECODER_PLAN:
        if v == "U":
            layers.append(nn.Upsample(scale_factor=2, mode="nearest"))
        else:
            layers += [nn.ReflectionPad2d(1), nn.Conv2d(cin, v, 3), nn.ReLU()]
            cin = v
    return nn.Sequential(*layers[:-1])  # no activation after the last conv


def channel_mean_std(
    feat: torch.Tensor, *, eps: float = 1e-5, unbiased: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-image, per-channel mean and sqrt(variance + eps) over H·W of (N, C, H, W) features, each
    (N, C, 1, 1). ``unbiased=True`` divides by H·W − 1 (torch's ``.var`` default, which naoto0804's
    ``calc_mean_std`` uses)."""
    n, c = feat.shape[:2]
    flat = feat.reshape(n, c, -1)
    var = flat.var(dim=2, correction=1 if unbiased else 0) + eps
    return flat.mean(dim=2).view(n, c, 1, 1), var.sqrt().view(n, c, 1, 1)


def adaptive_instance_norm(
    content_feat: torch.Tensor, style_feat: torch.Tensor, *, eps: float = 1e-5, unbiased: bool = True
) -> torch.Tensor:
    """AdaIN: the content features normalised per channel and given the style features' channel mean
    and std (:func:`channel_mean_std`). The two may differ in H, W; a style batch of 1 broadcasts."""
    if content_feat.shape[1] != style_feat.shape[1] or style_feat.shape[0] not in (1, content_feat.shape[0]):
        raise ValueError(
            f"AdaIN: expected (N, C, ...) content and (N or 1, C, ...) style features, got "
            f"{tuple(content_feat.shape)} and {tuple(style_feat.shape)}"
        )
    c_mean, c_std = channel_mean_std(content_feat, eps=eps, unbiased=unbiased)
    s_mean, s_std = channel_mean_std(style_feat, eps=eps, unbiased=unbiased)
    return (content_feat - c_mean) / c_std * s_std + s_mean


# ---------------------------------------------------------------------------------------------------
# Weights


def _index(key: str) -> int | None:
    head = key.split(".", 1)[0]
    return int(head) if head.isdigit() else None


def _weights_source(
    override: PathLike | Mapping[str, torch.Tensor] | None, folder: Path, fname: str
) -> Mapping[str, torch.Tensor] | Path:
    """A state dict as given, or the file path to read (maybe not existing yet)."""
    if isinstance(override, Mapping):
        return override
    if override is None:
        return folder / fname
    p = Path(override).expanduser()
    return p / fname if p.is_dir() else p


def _fetch(url: str, dst: Path) -> None:
    try:
        dst.parent.mkdir(parents=True, exist_ok=True)
        torch.hub.download_url_to_file(url, str(dst), progress=False)
    except Exception as e:
        raise MissingWeightsError(
            f"cannot download {url} into {dst.parent} ({why(e)}); fetch it on a connected machine and put it there"
        ) from None


class AdaIN(Frozen):
    """AdaIN style transfer with naoto0804's released weights (``vgg_normalised.pth`` + ``decoder.pth``).

    ``AdaIN(...)(content, style)``: both [0, 1] images (N, 3, H, W); the style batch may be 1 (broadcast)
    and of another size. Steps (naoto0804's ``test.py``): relu4_1 features of both; AdaIN
    (:func:`adaptive_instance_norm`, per-channel mean/std over H·W, eps 1e-5 added to the variance);
    t = α·AdaIN + (1 − α)·content features; decode; clamp to [0, 1].

    Sizes: the encoder's three ceil-mode pools give features of ceil(H/8) × ceil(W/8) and the decoder
    upsamples 8×, so for H, W multiples of 8 the output has the input's size; otherwise the decoder's
    8·ceil(H/8) × 8·ceil(W/8) output is cropped to its top-left H × W (feature row i summarises input
    rows 8i … 8i + 7 and is upsampled back onto output rows 8i … 8i + 7, so the crop stays aligned; only
    the partial last block is cut). Images must be at least 9 × 9 (reflection padding at 1/8 scale).

    Args:
        weights_dir: folder holding ``vgg_normalised.pth`` and ``decoder.pth`` (default
            ``resolve_cache_dir('adain')``: ``$STYLEVAR_CACHE/adain`` or ``~/.cache/stylevar/adain``).
        encoder, decoder: a file (or folder holding the file) or a state dict, overriding the folder for
            that part. The encoder may be the full released 53-layer state dict (layers after relu4_1
            are checked for layout and ignored) or only its first 31 layers; the decoder loads strictly.
        unbiased: variance over H·W with 1/(H·W − 1) (True, the default: naoto0804's ``calc_mean_std``,
            torch's ``.var`` default, and upstream's ``adain.py``) or 1/(H·W) (False: upstream's
            ``eval_grpo.py`` baseline).
        eps: added to the variance (1e-5, as naoto0804).
        download: fetch missing files from the v0.0.0 release into ``weights_dir`` (not for paths given
            as ``encoder``/``decoder``).
    """

    def __init__(
        self,
        weights_dir: PathLike | None = None,
        *,
        encoder: PathLike | Mapping[str, torch.Tensor] | None = None,
        decoder: PathLike | Mapping[str, torch.Tensor] | None = None,
        device: str | torch.device = "cpu",
        unbiased: bool = True,
        eps: float = 1e-5,
        download: bool = False,
    ):
        super().__init__()
        folder = Path(weights_dir).expanduser() if weights_dir is not None else resolve_cache_dir("adain")
        parts = (
            ("encoder", encoder, ENCODER_FILE, ENCODER_URL),
            ("decoder", decoder, DECODER_FILE, DECODER_URL),
        )
        sources = {name: _weights_source(o, folder, f) for name, o, f, _ in parts}
        if download:
            for name, override, _, url in parts:
                src = sources[name]
                if override is None and isinstance(src, Path) and not src.is_file():
                    _fetch(url, src)
        missing = [src for src in sources.values() if isinstance(src, Path) and not src.is_file()]
        if missing:
            raise MissingWeightsError(
                f"AdaIN needs {ENCODER_FILE} ({ENCODER_URL}) and {DECODER_FILE} ({DECODER_URL}); not found: "
                f"{', '.join(str(p) for p in missing)}; download them on a connected machine and put them in "
                f"{folder} (or pass encoder=/decoder= paths, or allow downloading: download=True)"
            )
        sds = {n: dict(s) if isinstance(s, Mapping) else read_state_dict(s) for n, s in sources.items()}
        self.encoder = self._build_encoder(sds["encoder"])
        with torch.device("meta"):
            dec = adain_decoder()
        dec = dec.to_empty(device="cpu")
        load_strict(
            dec, sds["decoder"], f"the AdaIN decoder weights do not fit naoto0804's decoder ({DECODER_FILE})"
        )
        self.decoder = dec
        self.unbiased = unbiased
        self.eps = eps
        self._freeze()
        self.to(device)

    @staticmethod
    def _build_encoder(sd: Mapping[str, torch.Tensor]) -> nn.Sequential:
        what = f"the AdaIN encoder weights do not fit vgg_normalised ({ENCODER_FILE})"
        with torch.device("meta"):
            full = vgg_normalised()
        layout = {k: tuple(v.shape) for k, v in full.state_dict().items()}
        head = {k: v for k, v in sd.items() if (i := _index(k)) is not None and i <= RELU4_1}
        tail = [k for k in sd if k not in head]
        bad = [k for k in tail if layout.get(k) != tuple(sd[k].shape)]
        if bad:
            more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
            raise CheckpointError(f"{what}: unexpected or mis-shaped: {', '.join(bad[:3])}{more}")
        enc = full[: RELU4_1 + 1].to_empty(device="cpu")
        load_strict(enc, head, what)
        return enc

    def encode(self, images: torch.Tensor) -> torch.Tensor:
        """relu4_1 features, (N, 512, ceil(H/8), ceil(W/8)), of [0, 1] images (or CORAL-shifted ones)."""
        x = check_images(images)
        if min(x.shape[-2:]) < MIN_SIZE:
            raise ValueError(
                f"AdaIN needs images of at least {MIN_SIZE}x{MIN_SIZE} pixels, got {tuple(x.shape)}"
            )
        return self.encoder(x.to(self.decoder[1].weight.device))

    def decode(self, features: torch.Tensor) -> torch.Tensor:
        """The decoder's raw output, (N, 3, 8h, 8w), not cropped or clamped."""
        return self.decoder(features)

    def forward(
        self, content: torch.Tensor, style: torch.Tensor, *, alpha: float = 1.0, preserve_color: bool = False
    ) -> torch.Tensor:
        """Stylised content, (N, 3, H, W) in [0, 1]. ``alpha`` in [0, 1] blends the AdaIN target with the
        content features (0: decoder(encoder(content))). ``preserve_color``: the style image's colours
        are first matched to the content image's by :func:`coral` (one style per content image)."""
        content, style = check_images(content, "content images"), check_images(style, "style images")
        n, (h, w) = content.shape[0], content.shape[-2:]
        if style.shape[0] not in (1, n):
            raise ValueError(
                f"AdaIN: {n} content images but {style.shape[0]} style images (expected {n} or 1)"
            )
        if not 0.0 <= alpha <= 1.0:
            raise ConfigError(f"AdaIN alpha must be in [0, 1], got {alpha}")
        if preserve_color:
            style = coral(style.expand(n, -1, -1, -1), content.to(style.device))
        cf = self.encode(content)
        t = adaptive_instance_norm(cf, self.encode(style), eps=self.eps, unbiased=self.unbiased)
        t = alpha * t + (1 - alpha) * cf
        return self.decode(t)[..., :h, :w].clamp(0, 1)
