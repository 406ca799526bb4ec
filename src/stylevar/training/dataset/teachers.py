"""The networks that make the targets of ``stylevar triplets`` (docs/triplets.md, "Teachers").

Every teacher reads the saved content and style crops (PNG, so a rerun sees the bytes the first run
wrote) and yields one (3, R, R) target in [0, 1] per planned triplet, in order:

* ``arbitrary`` (:class:`ArbitraryTeacher`): Magenta's arbitrary-style network, the style crop -> a style
  vector (computed once per style crop) -> the content in that style, at ``strength``.
* ``multistyle26`` (:class:`MultiStyleTeacher`): the 26-style network; it also renders each style
  reference (another content crop in the same built-in style, StyleAR's same-style pairs).
* ``stylevar:CHECKPOINT`` (:class:`StyleVARTeacher`): self-distillation through
  :class:`~stylevar.stylize.pipeline.StyleVARPipeline`, streaming the pairs in batches; each triplet's
  sampling seed comes from the build's seed and its key, so a resumed run makes the same images.

``identity()`` names what makes the images (the network files' hashes, or the checkpoint) for the
resume check.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from ...images import load_image, pil_to_unit_tensor
from ...perceptual.magenta import MagentaArbitrary, MultiStyle26
from .config import ARBITRARY, MULTISTYLE, TripletBuildConfig
from .sources import PlannedTriplet, Reference


def read_unit(path: Path) -> torch.Tensor:
    """A saved image as a (1, 3, H, W) tensor in [0, 1]."""
    return pil_to_unit_tensor(load_image(path))


def _file_hash(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def resize_to(x: torch.Tensor, size: int) -> torch.Tensor:
    """(N, 3, H, W) in [0, 1] -> (N, 3, size, size): bilinear, antialiased."""
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True).clamp_(
        0, 1
    )


class ArbitraryTeacher:
    """Magenta's arbitrary-style network as a teacher (and the style measure of the filter's report)."""

    name = ARBITRARY

    def __init__(self, cfg: TripletBuildConfig):
        self.net = MagentaArbitrary(cfg.models)
        self.strength = cfg.strength
        self._vectors: dict[str, torch.Tensor] = {}  # style file -> (1, 100)

    def identity(self) -> dict[str, Any]:
        return {
            "teacher": self.name,
            "networks": [_file_hash(self.net.predict.path), _file_hash(self.net.transform.path)],
        }

    def targets(
        self, root: Path, triplets: Iterable[PlannedTriplet]
    ) -> Iterator[tuple[PlannedTriplet, torch.Tensor]]:
        for t in triplets:
            vec = self._vectors.get(t.style.file)
            if vec is None:
                vec = self._vectors[t.style.file] = self.net.style_vector(read_unit(root / t.style.file))
            out = self.net.stylize(read_unit(root / t.content.file), style_vector=vec, strength=self.strength)
            yield t, out[0]


class MultiStyleTeacher:
    """The 26-style network as a teacher: targets and the style references."""

    name = MULTISTYLE

    def __init__(self, cfg: TripletBuildConfig):
        self.net = MultiStyle26(cfg.models)

    def identity(self) -> dict[str, Any]:
        return {"teacher": self.name, "networks": [_file_hash(self.net.network.path)]}

    def reference(self, root: Path, ref: Reference) -> torch.Tensor:
        """The style image of ``ref``: its content crop in its built-in style, (3, R, R) in [0, 1]."""
        return self.net.stylize(read_unit(root / ref.crop.file), ref.builtin)[0]

    def targets(
        self, root: Path, triplets: Iterable[PlannedTriplet]
    ) -> Iterator[tuple[PlannedTriplet, torch.Tensor]]:
        for t in triplets:
            assert isinstance(t.style, Reference)
            yield t, self.net.stylize(read_unit(root / t.content.file), t.style.builtin)[0]


class StyleVARTeacher:
    """A StyleVAR checkpoint as the teacher (self-distillation): the pipeline's streaming loop, its
    checkpoint's sampling defaults, one seed per triplet, outputs resized to the build's resolution."""

    def __init__(self, cfg: TripletBuildConfig):
        from ...stylize.pipeline import StyleVARPipeline

        self.checkpoint = cfg.spec.checkpoint
        self.name = str(cfg.spec)
        self.pipe = StyleVARPipeline.from_pretrained(self.checkpoint, device=cfg.device)
        self.batch_size = cfg.batch_size
        self.resolution = cfg.resolution

    def identity(self) -> dict[str, Any]:
        return {"teacher": self.name, "sampling": self.pipe.settings().sampling.to_dict()}

    def targets(
        self, root: Path, triplets: Iterable[PlannedTriplet]
    ) -> Iterator[tuple[PlannedTriplet, torch.Tensor]]:
        from ...stylize.pairs import Pair

        todo = list(triplets)
        pairs = [Pair(root / t.content.file, root / t.style.file, seed=t.seed) for t in todo]
        results = self.pipe.stylize_pairs(
            pairs, fit="squash", output_type="pt", batch_size=self.batch_size, num_samples=1
        )
        for r in results:
            img = r.image.float().unsqueeze(0).cpu()
            yield todo[r.index], resize_to(img, self.resolution)[0]


def make_teacher(cfg: TripletBuildConfig):
    """The teacher ``cfg.teacher`` names, its networks loaded (a missing extra or file fails here)."""
    if cfg.spec.kind == ARBITRARY:
        return ArbitraryTeacher(cfg)
    if cfg.spec.kind == MULTISTYLE:
        return MultiStyleTeacher(cfg)
    return StyleVARTeacher(cfg)


def timed(
    items: Iterator[tuple[PlannedTriplet, torch.Tensor]],
) -> Iterator[tuple[PlannedTriplet, torch.Tensor, float]]:
    """Each item with the seconds the teacher took to produce it (the wait between two items)."""
    t0 = time.perf_counter()
    for t, img in items:
        t1 = time.perf_counter()
        yield t, img, t1 - t0
        t0 = time.perf_counter()
