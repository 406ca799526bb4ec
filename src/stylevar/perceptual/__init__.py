"""Image comparison for the GRPO rewards and the evaluation metrics alike (one implementation of each).

* weight-free measures (:mod:`~stylevar.perceptual.metrics`): the paper's SSIM, PSNR, L1, colour
  histograms, the Fréchet distance;
* pretrained networks, weights from paths or caches, never downloaded unless asked:
  :class:`VGGFeatures` with :func:`gram_style_loss` / :func:`content_loss` (VGG-19) and
  :class:`VGGPerceptualLoss` (VGG16), :class:`LPIPSDistance`, :class:`ClipSimilarity`,
  :class:`DreamSimDistance`, the Inception-v3 variants (:class:`FIDInceptionFeatures`: pytorch-fid's FID
  network; :class:`ArtInceptionFeatures`: ArtFID's; :class:`InceptionFeatures`: torchvision's) and
  :class:`CFSD` (StyleID's content structure distance).

Images are (N, 3, H, W) tensors in [0, 1] everywhere (the tokenizer's :class:`VGGPerceptualLoss` takes
[-1, 1], like the images it trains on); results are per image, (N,).
"""

from ..config import IMAGENET_MEAN, IMAGENET_STD
from .cfsd import CFSD, patch_similarity_kl
from .clip_similarity import CLIP_MEAN, CLIP_STD, DEFAULT_CLIP_MODEL, ClipSimilarity, load_clip_model
from .common import EXTRA_HINT, Frozen, resolve_cache_dir
from .dreamsim_distance import DreamSimDistance
from .inception import ArtInceptionFeatures, FIDInceptionFeatures, InceptionFeatures
from .lpips_distance import LPIPSDistance
from .metrics import (
    colour_histogram_distance,
    edge_correlation,
    frechet_distance,
    mean_abs_error,
    psnr,
    ssim,
)
from .salient import SalientRegion, select_salient
from .vgg import (
    StyleContentLoss,
    VGGFeatures,
    VGGPerceptualLoss,
    content_loss,
    gram_matrix,
    gram_style_loss,
)

__all__ = [
    "CFSD",
    "ArtInceptionFeatures",
    "FIDInceptionFeatures",
    "patch_similarity_kl",
    "CLIP_MEAN",
    "CLIP_STD",
    "DEFAULT_CLIP_MODEL",
    "EXTRA_HINT",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ClipSimilarity",
    "load_clip_model",
    "SalientRegion",
    "select_salient",
    "DreamSimDistance",
    "Frozen",
    "InceptionFeatures",
    "LPIPSDistance",
    "StyleContentLoss",
    "VGGFeatures",
    "VGGPerceptualLoss",
    "colour_histogram_distance",
    "content_loss",
    "edge_correlation",
    "frechet_distance",
    "gram_matrix",
    "gram_style_loss",
    "mean_abs_error",
    "psnr",
    "resolve_cache_dir",
    "ssim",
]
