"""Stylized video: frames streamed through the pipeline a batch at a time, written with PyAV.

    from stylevar.stylize.video import stylize_video
    stylize_video(pipe, "clip.mp4", "monet.jpg", "out.mp4", keep_scales=2, seed=0)

* **Containers**: MP4 / MOV / MKV (H.264), WebM (VP9), GIF; the size and the frame rate of the input are
  kept (results are resized back to the frame size, ``fit="squash"`` by default so the whole frame is
  stylized), the audio is copied packet for packet when the container takes its codec and the clip is
  not cut, re-encoded (AAC, Opus in WebM) otherwise; GIF has no audio. ``start``/``duration`` cut.
* **Memory** is flat in the video's length: frames are decoded, stylized and encoded ``batch_size`` at a
  time, and the audio follows the video in the output as it goes.
* **Temporal consistency**, VAR-native: every frame is sampled with the same seed, and each token of the
  first ``keep_scales`` scales (default: all) is taken from the previous frame's output wherever the
  content did not change under it (:class:`TokenKeeper`: the content's pixels over the token's area
  moved less than ``change_threshold``, or, the literal rule, the content's own token is unchanged);
  the rest is sampled as usual. A still background keeps its tokens at every scale while a moving
  figure is re-sampled where it moved. ``keep_scales=0``: independent frames (same seed).
  docs/video.md reports the measured flicker of each.
* The output is written to a temporary file beside it and renamed when complete: an interrupted or
  failed run never leaves a half-written video. An unreadable or unsupported input, or one with no
  frames, is one :class:`~stylevar.errors.VideoError` line naming the file.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

import torch
from PIL import Image

from ..config import Sampling
from ..errors import ConfigError, MissingDependencyError, VideoError
from ..files import same_file
from ..images import to_model_input
from ..models import Conditioning
from .pipeline import ImageInput, StyleVARPipeline
from .regional import load_regional
from .settings import Output, StylizeSettings, VideoOptions
from .stream import postprocess, read_input

logger = logging.getLogger(__name__)

#: output container by file extension: (PyAV format, video codec, audio codec or None)
CONTAINERS = {
    ".mp4": ("mp4", "libx264", "aac"),
    ".m4v": ("mp4", "libx264", "aac"),
    ".mov": ("mov", "libx264", "aac"),
    ".mkv": ("matroska", "libx264", "aac"),
    ".webm": ("webm", "libvpx-vp9", "libopus"),
    ".gif": ("gif", "gif", None),
}
#: audio codecs each container takes as they are (stream copy)
COPYABLE_AUDIO = {
    "mp4": {"aac", "mp3", "alac", "opus"},
    "mov": {"aac", "mp3", "alac", "pcm_s16le"},
    "matroska": {"aac", "mp3", "opus", "vorbis", "flac", "pcm_s16le", "ac3"},
    "webm": {"opus", "vorbis"},
}
VIDEO_EXTENSIONS = (".mp4", ".m4v", ".mov", ".mkv", ".webm", ".gif", ".avi")
#: FFmpeg's demuxers of still images: such a file is refused (``stylevar stylize`` is for images)
STILL_FORMATS = frozenset(
    {
        "image2",
        "png_pipe",
        "jpeg_pipe",
        "webp_pipe",
        "bmp_pipe",
        "tiff_pipe",
        "ppm_pipe",
        "pgm_pipe",
        "pam_pipe",
    }
)


def _av():
    try:
        import av
    except ImportError:
        raise MissingDependencyError(
            "video needs the optional package 'av' (PyAV); install it with: pip install \"stylevar[video]\""
        ) from None
    return av


@dataclass
class VideoInfo:
    path: Path
    width: int
    height: int
    rate: Fraction  #: frames per second
    frames: int | None  #: as the container states it (None: unknown)
    duration: float | None  #: seconds
    audio: str | None  #: the first audio stream's codec name, or None


def probe(path: str | os.PathLike) -> VideoInfo:
    """What :func:`stylize_video` needs to know about a video file; one-line :class:`VideoError` when it
    cannot be read."""
    av = _av()
    p = Path(path).expanduser()
    if not p.is_file():
        raise VideoError(f"video not found: {p}")
    try:
        with av.open(str(p)) as ic:
            if not ic.streams.video:
                raise VideoError(
                    f"{p}: no video stream in this file; give a video (mp4, webm, mov, gif, ...)"
                )
            vs = ic.streams.video[0]
            if ic.format.name in STILL_FORMATS or (vs.frames == 1 and ic.format.name != "gif"):
                raise VideoError(
                    f"{p} is a still image, not a video; stylize it with: stylevar stylize {p} STYLE -o OUT"
                )
            rate = vs.average_rate or vs.guessed_rate or Fraction(10)
            duration = None
            if vs.duration is not None and vs.time_base is not None:
                duration = float(vs.duration * vs.time_base)
            elif ic.duration is not None:
                duration = ic.duration / 1_000_000
            audio = ic.streams.audio[0].codec_context.name if ic.streams.audio else None
            return VideoInfo(
                p,
                vs.codec_context.width,
                vs.codec_context.height,
                Fraction(rate),
                vs.frames or None,
                duration,
                audio,
            )
    except VideoError:
        raise
    except Exception as e:  # PyAV's errors (invalid data, unknown format) are one line here
        raise VideoError(
            f"{p}: not a video this build of FFmpeg can read ({type(e).__name__}: {e})"
        ) from None


def read_frames(
    path: str | os.PathLike, start: float = 0.0, duration: float | None = None
) -> Iterator[tuple[float, Image.Image]]:
    """(time in seconds, RGB frame) for each frame in [start, start + duration), decoded as needed.

    A file that cannot be decoded from its start is a :class:`VideoError`; one whose data ends or breaks
    after some frames (a truncated download) ends there with a warning: the frames before it are good,
    and :func:`stylize_video` reports how many of the announced frames were read."""
    av = _av()
    p = Path(path).expanduser()
    n = 0
    try:
        with av.open(str(p)) as ic:
            vs = ic.streams.video[0]
            vs.thread_type = "AUTO"
            if start > 0 and vs.time_base is not None:
                ic.seek(int(start / vs.time_base), stream=vs, backward=True)
            end = None if duration is None else start + duration
            eps = 1e-6
            for frame in ic.decode(vs):
                t = float(frame.time) if frame.time is not None else 0.0
                if t < start - eps:
                    continue
                if end is not None and t >= end - eps:
                    break
                n += 1
                yield t, frame.to_image().convert("RGB")
    except Exception as e:
        if isinstance(e, (VideoError, GeneratorExit)):
            raise
        if n == 0 or not isinstance(e, av.error.FFmpegError):
            raise VideoError(f"{p}: decoding failed ({type(e).__name__}: {e})") from None
        logger.warning("%s: decoding stopped after %d frames (%s: %s)", p, n, type(e).__name__, e)


class TokenKeeper:
    """The ``keep_scales`` rule as a token hook: for scale ``si < keep_scales``, each frame's token is its
    predecessor's wherever the content did not change there; state carries over from one batch to the
    next (frames in order).

    What "did not change" means (``criterion``):

    * ``pixels`` (default): the mean absolute change of the content's pixels over the token's area (the
      model's input, [0, 1] units) is below ``threshold``. Local: a moving figure re-samples the tokens it
      covers, a still background keeps its own, compression noise stays under the threshold.
    * ``tokens``: the content's own VQ token at that scale and position is unchanged. VAR's residual
      quantizer makes those tokens non-local (a change anywhere moves the coarse tokens, hence every finer
      residual), so fewer tokens qualify; kept as the literal rule and measured against ``pixels``
      (docs/video.md).
    """

    def __init__(
        self, keep_scales: int, patch_nums: Sequence[int], criterion: str = "pixels", threshold: float = 0.02
    ):
        if criterion not in ("pixels", "tokens"):
            raise ConfigError(f"the keep criterion must be pixels or tokens, got {criterion!r}")
        self.keep_scales, self.patch_nums = keep_scales, tuple(patch_nums)
        self.criterion, self.threshold = criterion, threshold
        self.tokens: dict[int, torch.Tensor] = {}  # the previous frame's output tokens by scale
        self.prev_content: torch.Tensor | None = None  # the previous frame's model input (pixels)
        self.prev_idx: dict[int, torch.Tensor] = {}  # the previous frame's content tokens by scale
        self.kept = 0  # tokens taken from the previous frame, over the run
        self.total = 0  # tokens of the kept scales, over the run

    def _unchanged(self, x: torch.Tensor, content_idx: Sequence[torch.Tensor]) -> list[torch.Tensor | None]:
        """Per frame of the batch, (L,) bool: where it did not change since the frame before (None: first)."""
        from ..models import scale_maps

        out: list[torch.Tensor | None] = []
        prev, prev_idx = self.prev_content, dict(self.prev_idx)
        for t in range(x.shape[0]):
            if prev is None:
                out.append(None)
            elif self.criterion == "pixels":
                change = (x[t] - prev).abs().mean(0).div(2)  # [-1, 1] inputs -> [0, 1] units
                out.append(scale_maps(change.unsqueeze(0), self.patch_nums)[0] < self.threshold)
            else:
                out.append(
                    torch.cat([content_idx[si][t] == prev_idx[si] for si in range(len(self.patch_nums))])
                )
            prev = x[t]
            prev_idx = {si: content_idx[si][t] for si in range(len(self.patch_nums))}
        self.prev_content, self.prev_idx = prev, prev_idx
        return out

    def hook(
        self, x: torch.Tensor, content_idx: Sequence[torch.Tensor]
    ) -> Callable[[int, torch.Tensor], torch.Tensor]:
        """The token hook for one batch of frames: ``x`` their model inputs, ``content_idx`` their tokens."""
        unchanged = self._unchanged(x, content_idx) if self.keep_scales else []
        starts = [0]
        for pn in self.patch_nums:
            starts.append(starts[-1] + pn * pn)

        def keep(si: int, tokens: torch.Tensor) -> torch.Tensor:
            if si >= self.keep_scales:
                return tokens
            out = tokens.clone()
            for t in range(out.shape[0]):
                same = unchanged[t]
                if same is not None and si in self.tokens:
                    same = same[starts[si] : starts[si + 1]].to(out.device)
                    out[t] = torch.where(same, self.tokens[si], out[t])
                    self.kept += int(same.sum())
                self.total += out.shape[1]
                self.tokens[si] = out[t].clone()
            return out

        return keep


def flicker(frames: Sequence[torch.Tensor]) -> float:
    """Mean absolute difference between consecutive frames ((3, H, W) in [0, 1]), averaged over the clip."""
    if len(frames) < 2:
        raise ValueError("flicker needs at least two frames")
    return float(sum((b - a).abs().mean() for a, b in zip(frames, frames[1:])) / (len(frames) - 1))


@dataclass
class VideoResult:
    path: Path
    frames: int
    seconds: float
    width: int
    height: int
    rate: Fraction
    audio: str  #: "copied", "re-encoded (codec)", "none" or "dropped (gif)"
    kept_tokens: float  #: share of the kept scales' tokens taken from the previous frame (0 without)
    #: frames the container announced (None: it did not say); more than ``frames`` means a truncated file
    expected_frames: int | None = None


def stylize_video(
    pipe: StyleVARPipeline,
    video: str | os.PathLike,
    style: ImageInput | Sequence[ImageInput],
    out: str | os.PathLike,
    settings: StylizeSettings | None = None,
    *,
    options: VideoOptions | None = None,
    style_weights: Sequence[float] | None = None,
    progress: bool = False,
    on_frames: Callable[[list[Image.Image], list[Image.Image]], None] | None = None,
    **keywords: Any,
) -> VideoResult:
    """Stylize every frame of ``video`` with ``style`` into ``out`` (module doc). ``style`` may be a list
    with ``style_weights`` (a blend, as :meth:`StyleVARPipeline.iter_batches`). ``settings`` and
    ``keywords``: the pipeline's (:meth:`StyleVARPipeline.settings`; here ``fit`` defaults to ``squash``
    and ``seed``, the seed of every frame, to 0; results always take the frame's size; ``batch_size`` is
    frames at a time). ``options`` (or its fields as keywords: ``keep_scales``, ``keep_criterion``,
    ``change_threshold``, ``start``, ``duration``, ``crf``): :class:`~stylevar.stylize.settings.VideoOptions`.
    ``on_frames(inputs, outputs)`` sees each batch (benchmarks measure flicker)."""
    from .controls import blend_weights

    video_fields = {f.name for f in dataclasses.fields(VideoOptions)}
    opts = {k: keywords.pop(k) for k in list(keywords) if k in video_fields}
    options = dataclasses.replace(
        options or VideoOptions(), **{k: v for k, v in opts.items() if v is not None}
    )
    if settings is None:
        settings = pipe.settings(fit="squash", seed=0)
    settings = pipe.settings(settings, **keywords)
    if settings.sampling.seed is None:
        settings = settings.with_(seed=0)
    output = dataclasses.replace(settings.output, keep_size=True, output_type="pil")
    sampling, batch_size, fit = settings.sampling, settings.run.batch_size, output.fit
    start, duration, crf = options.start, options.duration, options.crf
    av = _av()
    out = Path(out).expanduser()
    if out.suffix.lower() not in CONTAINERS:
        raise ConfigError(
            f"{out}: write .mp4, .mov, .mkv, .webm or .gif (got {out.suffix or 'no extension'!r})"
        )
    if out.is_dir():
        raise ConfigError(
            f"{out} is a folder; give the output video's file name (e.g. {out / 'stylized.mp4'})"
        )
    if same_file(out, video):
        raise ConfigError(f"{out} is the input video; write the output to another file")
    n_scales = len(pipe.model.patch_nums)
    keep_scales = n_scales if options.keep_scales is None else options.keep_scales
    if keep_scales > n_scales:
        raise ConfigError(f"keep_scales must lie in [0, {n_scales}], got {keep_scales}")
    info = probe(video)
    fmt, vcodec, acodec = CONTAINERS[out.suffix.lower()]
    pipe.prepare_dtype(sampling.dtype)
    R = pipe.resolution

    # the style (a blend of several: their encodings' weighted sum), the mask and regions: once
    styles = list(style) if isinstance(style, (list, tuple)) else [style]
    w = blend_weights(style_weights, len(styles)) if style_weights is not None else [1.0] * len(styles)
    if style_weights is None and len(styles) > 1:
        raise ConfigError("several style images need style_weights (a blend)")
    x = torch.stack([to_model_input(read_input(st, "style"), R, fit) for st in styles])
    feat, cvae = pipe._encode(x, "style")
    wt = torch.tensor(w, device=feat.device, dtype=feat.dtype)
    style_feat = (wt.view(-1, *[1] * (feat.ndim - 1)) * feat).sum(0, keepdim=True)
    style_cvae = (wt.view(-1, 1, 1) * cvae).sum(0, keepdim=True)
    regional = load_regional(settings.regions, R, fit)
    keeper = TokenKeeper(keep_scales, pipe.model.patch_nums, options.keep_criterion, options.change_threshold)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.stem}.partial-{os.getpid()}{out.suffix}")
    W, H = info.width, info.height
    even = W % 2 == 0 and H % 2 == 0
    t0 = time.perf_counter()
    n_frames = 0
    audio_mode = "none" if info.audio is None else "dropped (gif)"
    expected = expected_frames(info, start, duration)
    bar = None
    if progress:
        from tqdm.auto import tqdm

        bar = tqdm(total=expected, unit="frame", desc="stylizing video")
    try:
        with av.open(str(tmp), "w", format=fmt) as oc:
            vs = oc.add_stream(vcodec, rate=info.rate)
            vs.width, vs.height = W, H
            if vcodec == "gif":
                vs.pix_fmt = "pal8"
            else:
                vs.pix_fmt = "yuv420p" if even else "yuv444p"  # 4:2:0 needs even sides
                vs.options = {"crf": str(crf)} if vcodec == "libx264" else {"crf": str(crf + 13), "b": "0"}
            gif = _GifPalette(av) if vcodec == "gif" else None
            audio = _AudioFollower(av, info, oc, acodec, fmt, start, duration)
            audio_mode = audio.mode if info.audio is not None else "none"
            batch: list[Image.Image] = []
            frames = read_frames(video, start, duration)

            def flush(batch: list[Image.Image]) -> None:
                nonlocal n_frames
                results = _stylize_frames(
                    pipe, batch, style_feat, style_cvae, keeper, regional, sampling, output
                )
                if on_frames is not None:
                    on_frames(batch, results)
                for img in results:
                    frame = gif.frame(img) if gif is not None else av.VideoFrame.from_image(img)
                    frame.pts = n_frames
                    for packet in vs.encode(frame):
                        oc.mux(packet)
                    n_frames += 1
                audio.until(n_frames / float(info.rate))
                if bar is not None:
                    bar.update(len(results))

            for _, img in frames:
                batch.append(img)
                if len(batch) == batch_size:
                    flush(batch)
                    batch = []
            if batch:
                flush(batch)
            if n_frames == 0:
                raise VideoError(
                    f"{info.path}: no frames"
                    + (f" from {start:g} s" if start else "")
                    + (f" in {duration:g} s" if duration else "")
                    + "; check --start/--duration against the video's length"
                )
            for packet in vs.encode():
                oc.mux(packet)
            audio.finish()
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    finally:
        if bar is not None:
            bar.close()
    share = keeper.kept / keeper.total if keeper.total else 0.0
    if expected is not None and n_frames < expected:
        logger.warning(
            "%s: %d of the %d frames the container announces were read", info.path, n_frames, expected
        )
    seconds = time.perf_counter() - t0
    return VideoResult(out, n_frames, seconds, W, H, info.rate, audio_mode, share, expected)


def expected_frames(info: VideoInfo, start: float = 0.0, duration: float | None = None) -> int | None:
    """The frames a whole read of ``info``'s clip (from ``start``, for ``duration``) should give, as the
    container announces them (its frame count, else its duration x rate); None when it says nothing."""
    if start == 0 and duration is None and info.frames:
        return int(info.frames)
    if info.duration is None:
        return None
    span = info.duration - start if duration is None else min(duration, info.duration - start)
    return max(0, round(span * float(info.rate)))


def _stylize_frames(
    pipe: StyleVARPipeline,
    frames: list[Image.Image],
    style_feat: torch.Tensor,
    style_cvae: torch.Tensor,
    keeper: TokenKeeper,
    regional: Any,
    sampling: Sampling,
    output: Output,
) -> list[Image.Image]:
    """One batch of frames (in order), each sampled with ``sampling.seed`` -> stylized frames at their own size."""
    B = len(frames)
    x = torch.stack([to_model_input(f, pipe.resolution, output.fit) for f in frames]).to(pipe.device)
    with torch.no_grad():
        c_feat, c_cvae, c_idx = pipe.model.encode_content_tokens(pipe.vae, x)
        cond = Conditioning(
            style_feat.expand(B, *style_feat.shape[1:]), c_feat, style_cvae.expand(B, -1, -1), c_cvae
        )
        seeds = [sampling.seed] * B
        out = pipe.generate_batch(cond, seeds, sampling, regional=regional, token_hook=keeper.hook(x, c_idx))
    return [postprocess(img, f, output) for img, f in zip(out.images, frames)]


class _GifPalette:
    """GIF frames in one 256-colour palette, made from the first batch (a palette per frame would flicker)."""

    def __init__(self, av):
        self.av = av
        self.palette: Image.Image | None = None

    def frame(self, img: Image.Image):
        import numpy as np

        if self.palette is None:
            self.palette = img.quantize(colors=256, method=Image.Quantize.MEDIANCUT)
        p = img.quantize(palette=self.palette, dither=Image.Dither.NONE)
        rgb = np.asarray(p.getpalette()[: 256 * 3] + [0] * (768 - len(p.getpalette()[: 256 * 3])), np.uint8)
        argb = np.concatenate([np.full((256, 1), 255, np.uint8), rgb.reshape(256, 3)], axis=1)
        return self.av.VideoFrame.from_ndarray((np.asarray(p, np.uint8), argb), format="pal8")


class _AudioFollower:
    """The input's audio in the output, written up to the video's time after each batch (so the muxer
    never buffers a whole track): copied packet for packet when the container takes the codec and the
    clip is not cut, decoded and re-encoded otherwise."""

    def __init__(
        self, av, info: VideoInfo, oc, acodec: str | None, fmt: str, start: float, duration: float | None
    ):
        self.av, self.oc = av, oc
        self.start, self.end = start, None if duration is None else start + duration
        self.mode = "none"
        self.ic = None
        if info.audio is None:
            return
        if acodec is None:
            self.mode = "dropped (gif)"
            return
        self.ic = av.open(str(info.path))
        ia = self.ic.streams.audio[0]
        self.copy = start == 0 and duration is None and info.audio in COPYABLE_AUDIO.get(fmt, ())
        if self.copy:
            self.stream = oc.add_stream_from_template(ia)
            self.packets = self.ic.demux(ia)
            self.mode = "copied"
        else:
            rate = ia.codec_context.sample_rate or 48000
            if acodec == "libopus":
                rate = 48000  # Opus encodes 48 kHz only
            self.stream = oc.add_stream(acodec, rate=rate)
            self.stream.layout = "stereo" if (ia.codec_context.channels or 2) > 1 else "mono"
            self.resampler = av.AudioResampler(
                format=self.stream.codec_context.format or "fltp", layout=self.stream.layout, rate=rate
            )
            if start > 0:
                self.ic.seek(int(start * 1_000_000), backward=True)
            self.frames = self.ic.decode(ia)
            self.mode = f"re-encoded ({acodec.removeprefix('lib')})"
            self.next_pts = 0
        self.done = False
        self.time = 0.0

    def until(self, t: float) -> None:
        """Write the audio up to output time ``t`` (seconds)."""
        if self.ic is None or self.done:
            return
        while self.time < t and not self.done:
            self._step()

    def finish(self) -> None:
        if self.ic is None:
            return
        while not self.done:
            self._step()
        if not self.copy:
            for packet in self.stream.encode(None):
                self.oc.mux(packet)
        self.ic.close()

    def _step(self) -> None:
        if self.copy:
            packet = next(self.packets, None)
            if packet is None:
                self.done = True
                return
            if packet.dts is None:  # the demuxer's flush packet
                return
            if packet.pts is not None and packet.time_base is not None:
                self.time = float(packet.pts * packet.time_base)
            packet.stream = self.stream
            self.oc.mux(packet)
            return
        frame = next(self.frames, None)
        if frame is None:
            self.done = True
            return
        t = float(frame.time) if frame.time is not None else self.time
        if t < self.start - 1e-6:
            return
        if self.end is not None and t >= self.end - 1e-6:
            self.done = True
            return
        self.time = t - self.start
        frame.pts = None
        for f in self.resampler.resample(frame):
            f.pts = self.next_pts
            self.next_pts += f.samples
            for packet in self.stream.encode(f):
                self.oc.mux(packet)
