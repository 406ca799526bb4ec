"""Inception-v3 pool features for a Fréchet distance, in the three variants found in papers.
Conventions: :mod:`stylevar.perceptual.common`.

* :class:`FIDInceptionFeatures`: **the** FID network: the TensorFlow FID Inception as ``pytorch-fid``
  defines it (its patched blocks, ``pt_inception-2015-12-05-6726825d.pth``). Every FID in the image
  generation literature (and clean-fid's legacy mode) is computed with it.
* :class:`ArtInceptionFeatures`: ArtFID's network (Wright & Ommer 2022, the ``art-fid`` package):
  torchvision's Inception-v3 architecture with weights fine-tuned on art (``art_inception.pth``), fed raw
  [0, 1] pixels at their own size; StyleID and its successors report its FID as "FID".
* :class:`InceptionFeatures`: torchvision's ImageNet Inception-v3: comparable only with itself.

docs/evaluation.md compares the three and says which preprocessing each number implies.

The three share torchvision's trunk key layout, so any of their files loads into any of the networks;
only the classifier heads tell them apart (:func:`inception_layout`), and each class refuses a file whose
heads name another network (pytorch-fid's FID weights have an ``fc`` of 1008 rows, torchvision's 1000):
without that check ``--inception-weights`` could hand ImageNet weights to the column labelled pytorch-fid.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from ..errors import CheckpointError
from ..io.safe import load_strict
from .common import (
    Frozen,
    PathLike,
    check_images,
    hub_checkpoints_dir,
    locate_weights,
    require,
    resolve_cache_dir,
    torchvision_state_dict,
)

FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
FID_URL = f"https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/{FID_FILE}"
ART_FILE = "art_inception.pth"
ART_REPO = "matthias-wright/art_inception"
ART_URL = f"https://huggingface.co/{ART_REPO}/resolve/main/{ART_FILE}"
#: classifier heads: torchvision's (fc, AuxLogits), ArtFID's two (fc1/fc2, AuxLogits1/AuxLogits2)
_HEADS = re.compile(r"^(fc\d*|AuxLogits\d*)\.")
#: rows of ``fc``: the TF FID graph's 1008 classes (pytorch-fid's file), ImageNet's 1000 (torchvision's)
FID_CLASSES = 1008
IMAGENET_CLASSES = 1000

_LOOKS = {
    "pytorch-fid": f"pytorch-fid's FID Inception (fc of {FID_CLASSES} rows, no AuxLogits)",
    "torchvision": f"torchvision's ImageNet Inception-v3 (fc of {IMAGENET_CLASSES} rows)",
    "art": "ArtFID's art_inception (fc1/fc2 heads)",
    "other": "an Inception-v3 with an fc of {rows} rows",
    "trunk": "an Inception-v3 trunk without its fc layer",
}
_FITS = {
    "pytorch-fid": "pass it as --inception-weights with --fid-inception pytorch-fid (FIDInceptionFeatures)",
    "torchvision": "pass it as --inception-weights with --fid-inception torchvision (InceptionFeatures)",
    "art": "pass it as --art-inception-weights (ArtInceptionFeatures)",
    "other": "only --fid-inception torchvision (InceptionFeatures) takes other Inception-v3 weights",
    "trunk": "only --fid-inception torchvision (InceptionFeatures) takes a bare trunk",
}


def inception_layout(sd: Mapping[str, torch.Tensor]) -> str:
    """Which Inception-v3 checkpoint a state dict is, from its classifier heads (the trunks share one key
    layout): ``"pytorch-fid"`` (``fc`` of 1008 rows and no ``AuxLogits``: pytorch-fid's
    ``pt_inception-2015-12-05-6726825d.pth``), ``"torchvision"`` (``fc`` of 1000 rows, with or without
    ``AuxLogits``: ``inception_v3_google-0cc3c7bd.pth``), ``"art"`` (ArtFID's ``fc1``/``fc2``), ``"other"``
    (an ``fc`` of another size) or ``"trunk"`` (no ``fc``). A DataParallel ``module.`` prefix is ignored."""
    keys = {k.removeprefix("module."): v for k, v in sd.items()}
    if any(k.startswith(("fc1.", "fc2.")) for k in keys):
        return "art"
    fc = keys.get("fc.weight")
    if fc is None:
        return "trunk"
    aux = any(k.startswith("AuxLogits.") for k in keys)
    if fc.shape[0] == FID_CLASSES and not aux:
        return "pytorch-fid"
    return "torchvision" if fc.shape[0] == IMAGENET_CLASSES else "other"


def _where(fname: str, weights: PathLike | Mapping | None, search: list[Path]) -> str:
    """The file :func:`~stylevar.perceptual.common.locate_weights` reads for these arguments, for messages."""
    if isinstance(weights, Mapping):
        return "the state dict given"
    if weights is not None:
        p = Path(weights).expanduser()
        return str(p / fname if p.is_dir() else p)
    hit = next((d / fname for d in search if (d / fname).is_file()), None)
    return str(hit) if hit is not None else f"the downloaded {fname}"


def _check_layout(sd: Mapping[str, torch.Tensor], accept: tuple[str, ...], network: str, where: str) -> None:
    """A one-line :class:`~stylevar.errors.CheckpointError` unless :func:`inception_layout` of ``sd`` is one
    of ``accept``: it names the file (``where``), what the file looks like and which choice it fits."""
    found = inception_layout(sd)
    if found in accept:
        return
    fc = {k.removeprefix("module."): v for k, v in sd.items()}.get("fc.weight")
    looks = _LOOKS[found].format(rows=None if fc is None else fc.shape[0])
    raise CheckpointError(f"{where} looks like {looks}, not {network}: {_FITS[found]}")


def _trunk(sd: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """The convolutional trunk of an Inception-v3 state dict (classifier heads dropped, a DataParallel
    ``module.`` prefix removed)."""
    out = {}
    for k, v in sd.items():
        k = k[len("module.") :] if k.startswith("module.") else k
        if not _HEADS.match(k):
            out[k] = v
    return out


def _inception_trunk(blocks: Mapping[str, nn.Module] | None = None) -> nn.Module:
    """torchvision's Inception3 on the meta device without heads (``fc`` = identity, no aux logits), with
    the named blocks replaced (pytorch-fid's FID blocks)."""
    from torchvision.models import inception_v3

    with torch.device("meta"):  # skip the (truncated-normal) random init
        model = inception_v3(weights=None, aux_logits=False, transform_input=False, init_weights=False)
        for name, build in (blocks or {}).items():
            setattr(model, name, build())
    model.fc = nn.Identity()  # the pooled features, not the logits
    return model.to_empty(device="cpu")


class _Trunk(Frozen):
    """An Inception-v3 trunk with its weights: loaded strictly (heads dropped), frozen, on ``device``."""

    def _install(self, model: nn.Module, sd: Mapping[str, torch.Tensor], what: str, device) -> None:
        load_strict(model, _trunk(sd), what)
        self.model = model
        self._freeze()
        self.to(device)


class _Inception299(_Trunk):
    """A trunk fed as the TF/torchvision FID networks are: bilinear resize to 299x299 (no antialiasing,
    skipped at 299) and ``2x - 1``."""

    SIZE = 299
    DIM = 2048

    def preprocess(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 3, 299, 299) network input in [-1, 1] from [0, 1] images."""
        x = check_images(images).to(next(self.model.parameters()).device)
        if x.shape[-2:] != (self.SIZE, self.SIZE):
            x = F.interpolate(
                x, size=(self.SIZE, self.SIZE), mode="bilinear", align_corners=False, antialias=False
            )
        return x * 2 - 1

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2048) float32 pool features (after ``avgpool``, before dropout and ``fc``)."""
        return self.model(self.preprocess(images)).float()


class InceptionFeatures(_Inception299):
    """torchvision Inception-v3 (IMAGENET1K_V1, ``inception_v3_google-0cc3c7bd.pth``): the 2048-d
    average-pooled ``Mixed_7c`` features, (N, 2048) float32, of [0, 1] images; feed two sets of them to
    :func:`stylevar.perceptual.metrics.frechet_distance` for a Fréchet Inception Distance.

    Preprocessing: bilinear resize to 299×299 (``align_corners=False``, no antialias; skipped when the
    images are already 299×299), then ``2x − 1``: exactly what torchvision's ``transform_input=True``
    makes of ImageNet-normalised input, the input these weights were trained on.

    Which FID: these are torchvision's ImageNet weights, so the number is **not** the TF-Inception FID of
    ``pytorch-fid`` / ``clean-fid`` (another network and other weights), nor ArtFID's FID (Wright & Ommer
    2022), which uses its own Inception checkpoint
    https://huggingface.co/matthias-wright/art_inception/resolve/main/art_inception.pth.
    Compare numbers only between runs of this class. Other Inception-v3 weights can be used by passing a
    state dict (or file) in torchvision's ``Inception3`` key layout (``Conv2d_1a_3x3.conv.weight``, …,
    ``Mixed_7c.branch_pool.bn.running_var``); this class checks that layout and refuses the two files it
    can tell apart by their heads (:func:`inception_layout`): pytorch-fid's FID weights (``fc`` of 1008
    rows, for :class:`FIDInceptionFeatures`) and ArtFID's (``fc1``/``fc2``).

    Args:
        weights: a state dict file (``.pth``/``.safetensors``) or a folder holding
            ``inception_v3_google-0cc3c7bd.pth``, a state dict, or None for torch hub's checkpoint cache.
            ``fc.*`` and ``AuxLogits.*`` keys are not loaded; every other key of torchvision's Inception3 is
            required (a :class:`~stylevar.errors.CheckpointError` otherwise).
        download: fetch the torchvision weights into torch hub's cache when they are not there.
    """

    def __init__(
        self,
        weights: PathLike | Mapping[str, torch.Tensor] | None = None,
        *,
        device: str | torch.device = "cpu",
        download: bool = False,
    ):
        super().__init__()
        from torchvision.models import Inception_V3_Weights

        enum = Inception_V3_Weights.IMAGENET1K_V1
        sd = torchvision_state_dict(enum, weights, download=download, what="Inception-v3 features (FID)")
        where = _where(enum.url.rsplit("/", 1)[-1], weights, [hub_checkpoints_dir()])
        _check_layout(sd, ("torchvision", "other", "trunk"), "torchvision's Inception-v3", where)
        self._install(
            _inception_trunk(), sd, "the Inception-v3 weights do not fit torchvision's Inception3", device
        )


class FIDInceptionFeatures(_Inception299):
    """The FID Inception of ``pytorch-fid`` (the TensorFlow FID network ported to PyTorch): 2048-d pool
    features, (N, 2048) float32, of [0, 1] images. FID = :func:`~stylevar.perceptual.metrics.frechet_distance`
    of two such feature sets, the number published as "FID" for image generators.

    The architecture is ``pytorch-fid``'s own (its ``FIDInceptionA/C/E_1/E_2`` blocks: average pooling
    without the padded zeros, a max-pooled branch in the last block, 1008 classes), assembled without its
    download. Preprocessing as ``pytorch-fid`` does it: bilinear resize to 299x299 (``align_corners=False``,
    no antialiasing) and ``2x - 1``. ``pytorch-fid`` reads each image file with ``ToTensor`` at its own
    size and resizes inside the network, so to reproduce its numbers pass the images at the size they
    were saved.

    Args:
        weights: ``pt_inception-2015-12-05-6726825d.pth`` (a file, a folder holding it, or a state dict);
            None: torch hub's checkpoint cache, where ``pytorch-fid`` itself keeps it. Its trunk has
            torchvision's key layout, so only its ``fc`` (1008 rows, no ``AuxLogits``) tells it from
            torchvision's ImageNet weights: a file without that ``fc`` is refused
            (:class:`~stylevar.errors.CheckpointError`, naming the file and the ``--fid-inception`` it fits).
        download: fetch it there from pytorch-fid's GitHub release when it is missing.
    """

    def __init__(
        self,
        weights: PathLike | Mapping[str, torch.Tensor] | None = None,
        *,
        device: str | torch.device = "cpu",
        download: bool = False,
    ):
        super().__init__()
        fid = require(
            "pytorch_fid.inception", "FID (pytorch-fid's Inception)", 'pip install "stylevar[eval]"'
        )

        def fetch():
            return torch.hub.load_state_dict_from_url(FID_URL, progress=False, weights_only=True)

        sd = locate_weights(
            FID_FILE,
            FID_URL,
            weights,
            search=[hub_checkpoints_dir()],
            what="FID (pytorch-fid's Inception)",
            download=fetch if download else None,
        )
        where = _where(FID_FILE, weights, [hub_checkpoints_dir()])
        _check_layout(sd, ("pytorch-fid",), f"pytorch-fid's FID Inception ({FID_FILE})", where)
        model = _inception_trunk(
            {
                "Mixed_5b": lambda: fid.FIDInceptionA(192, pool_features=32),
                "Mixed_5c": lambda: fid.FIDInceptionA(256, pool_features=64),
                "Mixed_5d": lambda: fid.FIDInceptionA(288, pool_features=64),
                "Mixed_6b": lambda: fid.FIDInceptionC(768, channels_7x7=128),
                "Mixed_6c": lambda: fid.FIDInceptionC(768, channels_7x7=160),
                "Mixed_6d": lambda: fid.FIDInceptionC(768, channels_7x7=160),
                "Mixed_6e": lambda: fid.FIDInceptionC(768, channels_7x7=192),
                "Mixed_7b": lambda: fid.FIDInceptionE_1(1280),
                "Mixed_7c": lambda: fid.FIDInceptionE_2(2048),
            }
        )
        self._install(model, sd, "the weights do not fit pytorch-fid's FID Inception", device)


def art_inception_dirs() -> list[Path]:
    """Where :class:`ArtInceptionFeatures` looks for ``art_inception.pth``: stylevar's cache, the folder
    the ``art-fid`` package downloads to (``<tmp>/art_fid``), torch hub's checkpoints and the Hugging Face
    cache of ``matthias-wright/art_inception``."""
    dirs = [resolve_cache_dir("art_fid"), Path(tempfile.gettempdir()) / "art_fid", hub_checkpoints_dir()]
    try:
        from huggingface_hub import try_to_load_from_cache

        hit = try_to_load_from_cache(ART_REPO, ART_FILE)
        if isinstance(hit, str):
            dirs.append(Path(hit).parent)
    except Exception:  # an unreadable cache is only one place fewer to look
        pass
    return dirs


class ArtInceptionFeatures(_Trunk):
    """ArtFID's Inception (Wright & Ommer 2022; the ``art-fid`` package, also vendored by StyleID):
    2048-d pool features, (N, 2048) float32, of [0, 1] images.

    The network is torchvision's Inception-v3 architecture (the ``art-fid`` package's ``inception.py`` is a
    copy with two classifier heads, ``fc1``/``fc2`` and ``AuxLogits1``/``AuxLogits2``, which the features
    do not use) with its weights trained on art. Preprocessing as ``art-fid`` does it: **none** -- the
    [0, 1] pixels go in as they are, at their own size (no resize to 299, no normalisation); StyleID's
    evaluation resizes every image's shorter side to 512 first (:func:`stylevar.eval.styleid`).

    Args:
        weights: ``art_inception.pth`` (a file, a folder holding it, or a state dict); None: the folders of
            :func:`art_inception_dirs`. Head keys are not loaded, every trunk key is required; a file with
            pytorch-fid's or torchvision's ImageNet head (:func:`inception_layout`) is refused.
        download: fetch it from the Hugging Face Hub (``matthias-wright/art_inception``) when missing.
    """

    DIM = 2048

    def __init__(
        self,
        weights: PathLike | Mapping[str, torch.Tensor] | None = None,
        *,
        device: str | torch.device = "cpu",
        download: bool = False,
    ):
        super().__init__()

        def fetch():
            from huggingface_hub import hf_hub_download

            return hf_hub_download(ART_REPO, ART_FILE)

        search = art_inception_dirs()
        sd = locate_weights(
            ART_FILE,
            ART_URL,
            weights,
            search=search,
            what="ArtFID (art_inception)",
            download=fetch if download else None,
        )
        where = _where(ART_FILE, weights, search)
        _check_layout(sd, ("art", "other", "trunk"), "ArtFID's art_inception", where)
        self._install(_inception_trunk(), sd, "the weights do not fit ArtFID's Inception", device)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """(N, 2048) float32 pool features of [0, 1] images at their own size (at least 75x75)."""
        x = check_images(images).to(next(self.model.parameters()).device)
        if min(x.shape[-2:]) < 75:
            raise ValueError(
                f"ArtFID's Inception needs images of at least 75x75 pixels, got {tuple(x.shape)}"
            )
        return self.model(x).float()
