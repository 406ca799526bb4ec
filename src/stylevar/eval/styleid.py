"""The StyleID protocol (Chung et al., "Style Injection in Diffusion", CVPR 2024), the evaluation most
recent style-transfer papers report: every one of 20 content images (MS-COCO) with every one of 40 style
images (WikiArt), 800 outputs, scored with ArtFID, its FID and LPIPS, and CFSD, computed the way
StyleID's ``evaluation/eval_artfid.py`` computes them:

* **FID** (the "FID" column): ArtFID's ``art_inception`` features of each output and of its style image
  (the style set holds one copy per output, as StyleID's ``copy_inputs.py`` makes it: 800 images, 40
  distinct), every image's shorter side resized to 512 first (torchvision ``Resize(512)``: PIL bilinear),
  raw [0, 1] pixels into the network. With 800 images FID is biased upwards (it shrinks as N grows;
  compare only at equal N). StyleID's default mode, "ArtFID-infinity", fits FID against 1/N for N from
  5000 down to the number of images: with 800 images every fit point is the FID of all 800, so its number
  is the plain FID at N = 800, which is what is computed here.
* **LPIPS**: LPIPS v0.1 with the AlexNet trunk between each output and its content image, both resized
  as above; **ArtFID** = (1 + LPIPS)(1 + FID).
* **CFSD**: :class:`stylevar.perceptual.CFSD` of each output and its content reference, both resized to
  ``size`` x ``size`` (an output's shorter side to ``size`` as above, then a non-square one squashed to the
  square). StyleID's code resizes nothing here: it reads each output and content file as saved (both
  512 x 512 in its data) and fails on a pair of two sizes. CFSD sums over feature positions, so only
  numbers at one size compare; ``cfsd_saved_size=True`` computes it as StyleID's code does instead, at
  each output's saved size (the content reference resized to that size).
* **FID (pytorch-fid)**: the FID the rest of the field uses, outputs vs their style images, each file as
  saved (pytorch-fid resizes to 299 inside its network).

Every file is read as those references read theirs, ``PIL.Image.open(p).convert("RGB")``
(:func:`stylevar.eval.data.open_rgb`): alpha is dropped, so a transparent pixel counts with the RGB stored
under it, where :func:`stylevar.images.load_image`, which feeds the methods, composites onto white; no EXIF
rotation. The content reference is the content image in the method's orientation (its EXIF rotation
applied, as the method saw it; a no-op without an orientation tag), its ``fit`` region (the whole image
squashed, or its centred square), resized to ``size`` x ``size``: StyleID's contents are already
512 x 512 squares. The outputs are whatever the method produced (StyleVAR's released model works at
256 x 256; the resize to 512 is the protocol's, not an upscaler).

Published numbers of peers (:data:`PUBLISHED`) are printed beside ours, marked as published.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from PIL import ImageOps

from .. import perceptual as P
from ..errors import CheckpointError, DataError
from ..files import atomic_write_text
from ..images import crop_box
from .data import Benchmark, Sample, find_images, open_rgb

NUM_CONTENTS = 20
NUM_STYLES = 40
SIZE = 512
NAME = "StyleID"
#: bumped when the protocol's numbers change for the same images (2: files read as PIL's convert("RGB"))
VERSION = 2

#: Peers' numbers as published in StyleID's Table 1 (Chung et al., CVPR 2024; 20 MS-COCO contents x
#: 40 WikiArt styles, 512 px). Transcribed without the paper at hand; every row satisfies
#: ArtFID = (1 + LPIPS)(1 + FID) to the printed precision (a test checks it). CFSD is not transcribed.
PUBLISHED: list[dict[str, Any]] = [
    {"method": "StyleID", "artfid": 28.801, "fid_art": 18.131, "lpips_alex": 0.5055},
    {"method": "StyTr2", "artfid": 30.720, "fid_art": 18.890, "lpips_alex": 0.5445},
    {"method": "CAST", "artfid": 34.685, "fid_art": 20.395, "lpips_alex": 0.6212},
    {"method": "InST", "artfid": 40.633, "fid_art": 21.571, "lpips_alex": 0.8002},
    {"method": "DiffuseIT", "artfid": 40.721, "fid_art": 23.065, "lpips_alex": 0.6921},
]
PUBLISHED_SOURCE = "Chung et al., Style Injection in Diffusion (StyleID), CVPR 2024, Table 1"

COLUMNS = [
    ("artfid", "ArtFID ↓"),
    ("fid_art", "FID ↓"),
    ("lpips_alex", "LPIPS ↓"),
    ("cfsd", "CFSD ↓"),
    ("fid", "FID (pytorch-fid) ↓"),
]


def grid_benchmark(
    content_root: str | Path,
    style_root: str | Path,
    *,
    num_contents: int = NUM_CONTENTS,
    num_styles: int = NUM_STYLES,
    seed: int = 42,
    name: str = NAME,
) -> Benchmark:
    """Every selected content with every selected style, content-major (StyleID's order and its
    ``<content>_stylized_<style>`` names as keys). A folder with more images than asked gives a seeded
    choice (``random.Random(seed)``, kept in file order); one with fewer gives all it has, and the report
    says the protocol was not followed."""
    if num_contents < 1 or num_styles < 1:
        raise DataError("--num-contents and --num-styles must be >= 1")
    croot, sroot = Path(content_root).expanduser(), Path(style_root).expanduser()
    cs, ss = find_images(croot, "content"), find_images(sroot, "style")

    def choose(files: list[Path], k: int, salt: str) -> list[Path]:
        if len(files) <= k:
            return files
        keep = sorted(random.Random(f"{seed}/{salt}").sample(range(len(files)), k))
        return [files[i] for i in keep]

    contents, styles = choose(cs, num_contents, "content"), choose(ss, num_styles, "style")
    samples = []
    for c in contents:
        for s in styles:
            samples.append(Sample(len(samples), f"{c.stem}_stylized_{s.stem}", c, s, None))
    keys = [s.key for s in samples]
    if len(set(keys)) != len(keys):
        raise DataError(
            f"two content or two style images share a file name in {croot} / {sroot}; rename them"
        )
    selection = {
        "rule": "StyleID protocol: every content x every style (seeded choice when a folder holds more)",
        "content_images": len(cs),
        "style_images": len(ss),
        "contents": len(contents),
        "styles": len(styles),
        "selected": len(samples),
        "as_published": len(contents) == NUM_CONTENTS and len(styles) == NUM_STYLES,
    }
    return Benchmark(name, samples, paired=False, source=f"{croot} x {sroot}", selection=selection)


def resize_shorter(img, size: int):
    """torchvision's ``Resize(size)`` on a PIL image (shorter side to ``size``, bilinear): StyleID's."""
    from torchvision.transforms import functional as TF

    return TF.resize(img, size)


def _tensor(img) -> torch.Tensor:
    from torchvision.transforms import functional as TF

    return TF.to_tensor(img).unsqueeze(0)


@dataclass
class ProtocolWeights:
    """Where the protocol's networks come from (None: their caches; see each class)."""

    art_inception: str | None = None
    fid_inception: str | None = None
    alexnet: str | None = None
    vgg: str | None = None
    download: bool = False


class StyleIDScorer:
    """The protocol's networks, built once (missing weights fail here, before any generation).

    ``cfsd_saved_size``: CFSD as StyleID's code computes it, at each output's saved size (its content
    reference resized to that size), instead of at ``size`` x ``size`` (module doc)."""

    def __init__(
        self,
        weights: ProtocolWeights | None = None,
        *,
        device="cpu",
        size: int = SIZE,
        cfsd_saved_size: bool = False,
    ):
        w = weights or ProtocolWeights()
        self.device = torch.device(device)
        self.size = size
        self.cfsd_saved_size = cfsd_saved_size
        dl = w.download
        self.art = P.ArtInceptionFeatures(w.art_inception, device=self.device, download=dl)
        try:
            self.fid = P.FIDInceptionFeatures(w.fid_inception, device=self.device, download=dl)
        except CheckpointError as e:  # say which column refuses: the protocol's pytorch-fid FID
            raise CheckpointError(
                f"the protocol's FID (pytorch-fid) column uses pytorch-fid's network: {e}"
            ) from None
        self.lpips = P.LPIPSDistance("alex", device=self.device, backbone_weights=w.alexnet, download=dl)
        self.cfsd = P.CFSD(w.vgg, device=self.device, download=dl)
        self._style_cache: dict[Path, tuple[torch.Tensor, torch.Tensor]] = {}

    def _content_ref(self, path: Path, fit: str, size: tuple[int, int]):
        """The content file read as the references do, in the method's orientation, its ``fit`` region
        resized to ``size`` (w, h), PIL bilinear."""
        img = ImageOps.exif_transpose(open_rgb(path, role="content"))
        return img.crop(crop_box(img.size, fit)).resize(size, _bilinear())

    @torch.no_grad()
    def _style_features(self, path: Path) -> tuple[torch.Tensor, torch.Tensor]:
        if path not in self._style_cache:
            img = open_rgb(path, role="style")
            art = self.art(_tensor(resize_shorter(img, self.size)).to(self.device)).double().cpu()
            fid = self.fid(_tensor(img).to(self.device)).double().cpu()
            self._style_cache[path] = (art, fid)
        return self._style_cache[path]

    @torch.no_grad()
    def score(
        self,
        outputs: Sequence[Path],
        samples: Sequence[Sample],
        *,
        fit: str = "squash",
        progress: Callable[[int], None] | None = None,
    ) -> dict[str, Any]:
        """The protocol's numbers for one method: ``outputs[i]`` is the image made for ``samples[i]``."""
        if len(outputs) != len(samples):
            raise ValueError(f"{len(outputs)} outputs for {len(samples)} samples")
        art_out, art_sty, fid_out, fid_sty, lp, cf = [], [], [], [], [], []
        square = (self.size, self.size)
        for path, s in zip(outputs, samples, strict=True):
            out = open_rgb(path, role="output")
            out_r = resize_shorter(out, self.size)
            content_ref = self._content_ref(s.content, fit, square)
            x_out = _tensor(out_r).to(self.device)
            art_out.append(self.art(x_out).double().cpu())
            fid_out.append(self.fid(_tensor(out).to(self.device)).double().cpu())
            a, f = self._style_features(s.style)
            art_sty.append(a)
            fid_sty.append(f)
            x_content = _tensor(content_ref).to(self.device)
            if x_out.shape != x_content.shape:  # a non-square output: compare at the content's square
                x_out = _tensor(out.resize(square, _bilinear())).to(self.device)
            lp.append(float(self.lpips(x_out, x_content)))
            if self.cfsd_saved_size:  # StyleID's code: the files as saved, no resize
                x_out = _tensor(out).to(self.device)
                x_content = _tensor(self._content_ref(s.content, fit, out.size)).to(self.device)
            cf.append(float(self.cfsd(x_out, x_content)))
            if progress is not None:
                progress(1)
        n = len(outputs)
        fid_art = float(P.frechet_distance(torch.cat(art_out), torch.cat(art_sty))) if n >= 2 else None
        fid = float(P.frechet_distance(torch.cat(fid_out), torch.cat(fid_sty))) if n >= 2 else None
        lpips = sum(lp) / n if n else None
        return {
            "n": n,
            "artfid": None if fid_art is None else (1 + lpips) * (1 + fid_art),
            "fid_art": fid_art,
            "lpips_alex": lpips,
            "cfsd": sum(cf) / n if n else None,
            "fid": fid,
            "size": self.size,
            "cfsd_size": "saved" if self.cfsd_saved_size else f"{self.size}x{self.size}",
        }


def _bilinear():
    from PIL import Image

    return Image.Resampling.BILINEAR


def _fmt(v: float | None, digits: int) -> str:
    return "–" if v is None else f"{v:.{digits}f}"


def report_markdown(
    rows: list[dict[str, Any]],
    bench: Benchmark,
    size: int,
    extra: Sequence[str] = (),
    *,
    cfsd_saved_size: bool = False,
) -> str:
    """The protocol's table: our methods (measured here) and the published peers (marked)."""
    head = ["Method", "source", *(label for _, label in COLUMNS)]
    lines = ["# StyleID protocol", "", "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    digits = {"artfid": 3, "fid_art": 3, "lpips_alex": 4, "cfsd": 4, "fid": 3}
    for r in rows:
        name = f"*{r['method']}*" if r.get("reference_method") else r["method"]
        cells = [name, f"measured here (n={r['n']})"]
        cells += [_fmt(r.get(k), digits[k]) for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    for p in PUBLISHED:
        cells = [p["method"], "published, not re-run"]
        cells += [_fmt(p.get(k), digits[k]) for k, _ in COLUMNS]
        lines.append("| " + " | ".join(cells) + " |")
    sel = bench.selection
    notes = [
        f"{sel['contents']} contents x {sel['styles']} styles = {sel['selected']} outputs per method"
        + ("" if sel.get("as_published") else " (NOT the published 20 x 40: compare with care)")
        + f"; images resized to {size} on the shorter side"
        + ("" if size == SIZE else f" (NOT the published {SIZE}: the numbers are not comparable)")
        + ".",
        "FID: ArtFID's art_inception features, outputs vs their style images (one copy per output); "
        f"at n={sel['selected']} FID is biased upwards, compare only at equal n. LPIPS: AlexNet trunk, vs "
        "the content; ArtFID = (1 + LPIPS)(1 + FID). CFSD: StyleID's, VGG-19 relu3_1, vs the content, "
        + (
            "at each output's saved size (as StyleID's code; numbers at other sizes do not compare)."
            if cfsd_saved_size
            else f"both resized to {size} x {size}."
        ),
        "Images read as pytorch-fid and art-fid read them (PIL convert('RGB'): alpha dropped, not composited).",
        "FID (pytorch-fid): the TF FID Inception of pytorch-fid, the FID of the generation literature; "
        "not the FID column of style-transfer tables.",
        f"Published rows: {PUBLISHED_SOURCE}; their numbers, their images, not re-run here.",
        *extra,
    ]
    lines += ["", *[f"- {n}" for n in notes]]
    return "\n".join(lines) + "\n"


def run_protocol(ev, scorer: StyleIDScorer, *, say=print, progress: bool = True) -> dict[str, Any]:
    """Score every method of a finished :class:`~stylevar.eval.benchmark.Evaluation` on its StyleID
    benchmark, cache each method's numbers beside its records (recomputed when its images change), and
    write ``styleid.json`` and ``styleid.md`` into the evaluation's folder."""
    bench = ev.benchmarks[0]
    rows = []
    for m in ev.methods:
        done = ev.done_records(bench, m.name)
        if not done:
            continue
        idx = sorted(done)
        by_index = {s.index: s for s in bench.samples}
        paths = [ev.image_path(bench, m.name, i) for i in idx]
        stamp = [[i, p.stat().st_size, p.stat().st_mtime_ns] for i, p in zip(idx, paths, strict=True)]
        cache = ev.out / "records" / bench.slug / f"{_slug(m.name)}.styleid.json"
        result = None
        key = {"version": VERSION, "size": scorer.size, "cfsd_saved_size": scorer.cfsd_saved_size}
        if cache.is_file():
            try:
                old = json.loads(cache.read_text())
                if old.get("stamp") == stamp and all(old.get(k) == v for k, v in key.items()):
                    result = old["result"]
            except (OSError, ValueError, KeyError):
                result = None
        if result is None:
            bar = None
            if progress:
                from tqdm.auto import tqdm

                bar = tqdm(total=len(idx), unit="img", desc=f"StyleID protocol: {m.name}")
            try:
                result = scorer.score(
                    paths,
                    [by_index[i] for i in idx],
                    fit=ev.settings.fit,
                    progress=bar.update if bar is not None else None,
                )
            finally:
                if bar is not None:
                    bar.close()
            atomic_write_text(cache, json.dumps({"stamp": stamp, **key, "result": result}))
        rows.append({"method": m.name, "reference_method": m.reference, **result})
    doc = {
        "protocol": "styleid",
        "benchmark": bench.name,
        "selection": bench.selection,
        "size": scorer.size,
        "results": rows,
        "published": {"source": PUBLISHED_SOURCE, "rows": PUBLISHED},
    }
    atomic_write_text(ev.out / "styleid.json", json.dumps(doc, indent=1))
    md = report_markdown(rows, bench, scorer.size, cfsd_saved_size=scorer.cfsd_saved_size)
    atomic_write_text(ev.out / "styleid.md", md)
    for r in rows:
        say(
            f"StyleID protocol, {r['method']}: ArtFID {_fmt(r['artfid'], 3)}, FID {_fmt(r['fid_art'], 3)}, "
            f"LPIPS {_fmt(r['lpips_alex'], 4)}, CFSD {_fmt(r['cfsd'], 4)} (n={r['n']})"
        )
    return doc


def _slug(name: str) -> str:
    from .data import slugify

    return slugify(name)
