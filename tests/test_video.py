"""``stylevar video`` (stylevar/video.py): real clips made here with PyAV (H.264 + AAC), the tiny model."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest
import torch
from PIL import Image

from stylevar.cli import main
from stylevar.errors import ConfigError, VideoError

av = pytest.importorskip("av")

from stylevar.stylize.video import TokenKeeper, probe, read_frames, stylize_video  # noqa: E402


def make_clip(path, *, frames=12, w=80, h=60, rate=10, audio=True, moving=True):
    """A clip: a light background with a block moving right (or still), and a 440 Hz tone."""
    with av.open(str(path), "w") as oc:
        vs = oc.add_stream("libx264", rate=rate)
        vs.width, vs.height, vs.pix_fmt = w, h, "yuv444p"
        vs.options = {"crf": "0"}  # lossless: still pixels decode identically in every frame
        if audio:
            a = oc.add_stream("aac", rate=16000)
            a.layout = "mono"
        for i in range(frames):
            img = np.full((h, w, 3), 200, np.uint8)
            x = 10 + (3 * i if moving else 0)
            img[20:40, x : x + 15] = (30, 60, 200)
            f = av.VideoFrame.from_ndarray(img, format="rgb24")
            f.pts = i
            for p in vs.encode(f):
                oc.mux(p)
        for p in vs.encode():
            oc.mux(p)
        if audio:
            sr = 16000
            t = np.arange(int(sr * frames / rate)) / sr
            samples = (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32)
            for k in range(0, len(samples), 1024):
                fr = av.AudioFrame.from_ndarray(samples[None, k : k + 1024], format="flt", layout="mono")
                fr.sample_rate, fr.pts = sr, k
                for p in a.encode(fr):
                    oc.mux(p)
            for p in a.encode():
                oc.mux(p)
    return path


def audio_seconds(path) -> float:
    with av.open(str(path)) as ic:
        s = ic.streams.audio[0]
        return sum(f.samples for f in ic.decode(s)) / s.codec_context.sample_rate


@pytest.fixture(scope="module")
def clip(tmp_path_factory):
    return make_clip(tmp_path_factory.mktemp("video") / "clip.mp4")


@pytest.fixture(scope="module")
def style(tmp_path_factory):
    path = tmp_path_factory.mktemp("video_style") / "style.png"
    Image.new("RGB", (64, 64), (250, 100, 30)).save(path)
    return path


def test_round_trip_keeps_size_rate_frames_and_audio(pipe, clip, style, tmp_path):
    src = probe(clip)
    assert (src.width, src.height, src.rate, src.frames, src.audio) == (80, 60, Fraction(10), 12, "aac")
    r = stylize_video(pipe, clip, style, tmp_path / "out.mp4", top_k=8, batch_size=5)
    out = probe(r.path)
    assert (out.width, out.height, out.rate, out.frames) == (80, 60, Fraction(10), 12) and r.frames == 12
    assert r.audio == "copied" and out.audio == "aac"
    assert audio_seconds(r.path) == pytest.approx(audio_seconds(clip), abs=0.07)
    frames = [f for _, f in read_frames(r.path)]
    assert len(frames) == 12 and frames[0].size == (80, 60)
    # the frames are stylized: far from the input's grey background
    assert np.abs(np.asarray(frames[0], float) - 200).mean() > 10
    # WebM re-encodes the AAC track as Opus; GIF has no audio; odd sizes are fine (4:4:4)
    w = stylize_video(pipe, clip, style, tmp_path / "out.webm", top_k=8)
    assert w.audio == "re-encoded (opus)" and probe(w.path).audio == "opus"
    assert audio_seconds(w.path) == pytest.approx(1.2, abs=0.1)
    g = stylize_video(pipe, clip, style, tmp_path / "out.gif", top_k=8)
    assert g.audio == "dropped (gif)" and len(list(read_frames(g.path))) == 12 and probe(g.path).audio is None
    odd = make_clip(tmp_path / "odd.mp4", w=81, h=61, frames=3, audio=False)
    assert probe(stylize_video(pipe, odd, style, tmp_path / "odd_out.mp4", top_k=8).path).width == 81


def test_cut_with_start_and_duration(pipe, clip, style, tmp_path):
    r = stylize_video(pipe, clip, style, tmp_path / "cut.mp4", start=0.3, duration=0.5, top_k=8)
    assert r.frames == 5 and probe(r.path).frames == 5
    assert r.audio == "re-encoded (aac)"
    assert audio_seconds(r.path) == pytest.approx(0.5, abs=0.08)


def test_same_seed_and_kept_tokens_make_still_frames_identical(pipe, style, tmp_path):
    still = make_clip(tmp_path / "still.mp4", frames=6, moving=False, audio=False)
    outs = []
    r = stylize_video(
        pipe, still, style, tmp_path / "s.mp4", top_k=0, top_p=0.0, batch_size=4,
        on_frames=lambda _i, o: outs.extend(np.asarray(x) for x in o),
    )  # fmt: skip
    assert r.kept_tokens == pytest.approx(5 / 6)  # every token of every frame after the first
    assert all(np.array_equal(outs[0], o) for o in outs[1:])


def test_token_keeper_keeps_where_the_content_did_not_change():
    pn = (1, 2, 4)
    keeper = TokenKeeper(3, pn, "pixels", 0.02)
    x = torch.zeros(3, 3, 16, 16)
    x[1, :, :4, :4] = 1.0  # frame 1: the top-left corner changes (a quarter of the 2x2 token's area)
    x[2] = x[1]  # frame 2: nothing changes
    idx = [torch.zeros(3, p * p, dtype=torch.long) for p in pn]
    hook = keeper.hook(x, idx)
    sampled = [torch.arange(3 * p * p).view(3, p * p) + 100 * si for si, p in enumerate(pn)]
    got = [hook(si, t) for si, t in enumerate(sampled)]
    # frame 0: its own tokens; frame 1: the previous frame's except where the corner changed
    assert torch.equal(got[2][0], sampled[2][0])
    changed = torch.zeros(16, dtype=torch.bool)
    changed[0] = True  # the 4x4 grid's top-left token
    assert torch.equal(got[2][1], torch.where(changed, sampled[2][1], got[2][0]))
    assert torch.equal(got[1][1][1:], got[1][0][1:]) and got[1][1][0] == sampled[1][1][0]
    assert torch.equal(got[0][1], sampled[0][1])  # the whole-image token: mean change 0.031 > 0.02
    assert torch.equal(got[2][2], got[2][1])  # frame 2 = frame 1: everything kept
    # across batches: the next batch's first frame compares with this batch's last
    hook2 = keeper.hook(x[2:3], [i[2:3] for i in idx])
    assert torch.equal(hook2(2, torch.full((1, 16), -1)), got[2][2:3])
    # the literal rule: the content's tokens
    tk = TokenKeeper(1, pn, "tokens")
    idx2 = [torch.tensor([[5], [5], [6]]), *idx[1:]]
    out = tk.hook(x, idx2)(0, torch.tensor([[1], [2], [3]]))
    assert out.flatten().tolist() == [1, 1, 3]


def test_bad_inputs_fail_in_one_line_and_leave_no_partial_file(pipe, clip, style, tmp_path, capsys):
    bad = tmp_path / "bad.mp4"
    bad.write_text("not a video")
    with pytest.raises(VideoError, match="bad.mp4") as e:
        stylize_video(pipe, bad, style, tmp_path / "o.mp4")
    assert "\n" not in str(e.value)
    with pytest.raises(VideoError, match="no frames from 50 s"):
        stylize_video(pipe, clip, style, tmp_path / "o.mp4", start=50)
    with pytest.raises(ConfigError, match=r"\.mp4, \.mov"):
        stylize_video(pipe, clip, style, tmp_path / "o.avi2")

    def boom(_i, _o):
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        stylize_video(pipe, clip, style, tmp_path / "o.mp4", on_frames=boom)
    assert list(tmp_path.glob("*o.*")) == [] and list(tmp_path.glob(".o.partial*")) == []
    with pytest.raises(VideoError, match="not found"):
        stylize_video(pipe, tmp_path / "missing.mp4", style, tmp_path / "o.mp4")


def test_cli(ours_dir, clip, style, tmp_path, capsys):
    out = tmp_path / "cli.mp4"
    argv = ["video", str(clip), str(style), "-o", str(out), "--checkpoint", str(ours_dir), "--device", "cpu",
            "-q", "--top-k", "8", "--duration", "0.5", "--keep-scales", "2"]  # fmt: skip
    assert main(argv) == 0
    printed = capsys.readouterr().out
    assert "5 frames, 80x60 at 10 fps, audio re-encoded (aac)" in printed and probe(out).frames == 5
    assert main(["video", str(tmp_path / "nope.mp4"), str(style), "-o", str(out), "--checkpoint",
                 str(ours_dir), "-q"]) == 1  # fmt: skip
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.mp4" in err


def test_video_inputs_and_outputs_are_checked(pipe, clip, style, tmp_path, caplog):
    """A still image is refused with a pointer to stylize; the output may not be the input, nor a folder;
    a truncated video (the container announces more frames than can be read) warns with both counts."""
    still = tmp_path / "photo.png"
    Image.new("RGB", (40, 30), (10, 200, 30)).save(still)
    with pytest.raises(
        VideoError, match=r"photo.png is a still image, not a video; stylize it with: stylevar stylize"
    ):
        stylize_video(pipe, still, style, tmp_path / "o.mp4")
    copy = tmp_path / "in.mp4"
    copy.write_bytes(clip.read_bytes())
    with pytest.raises(ConfigError, match="is the input video"):
        stylize_video(pipe, copy, style, copy)
    assert copy.read_bytes() == clip.read_bytes()
    (tmp_path / "folder.mp4").mkdir()
    with pytest.raises(ConfigError, match="is a folder"):
        stylize_video(pipe, clip, style, tmp_path / "folder.mp4")
    # moov first (faststart), then cut the media data half-way: 16 frames announced, 7 decodable
    rng = np.random.default_rng(0)
    with av.open(str(tmp_path / "whole.mp4"), "w", options={"movflags": "faststart"}) as oc:
        vs = oc.add_stream("libx264", rate=10)
        vs.width = vs.height = 64
        vs.pix_fmt, vs.options = "yuv444p", {"crf": "0"}  # lossless noise: frames of similar size
        for i in range(16):
            f = av.VideoFrame.from_ndarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8), format="rgb24")
            f.pts = i
            for packet in vs.encode(f):
                oc.mux(packet)
        for packet in vs.encode():
            oc.mux(packet)
    data = (tmp_path / "whole.mp4").read_bytes()
    cut = tmp_path / "cut.mp4"
    cut.write_bytes(data[: len(data) // 2])
    assert probe(cut).frames == 16
    with caplog.at_level("WARNING", logger="stylevar.stylize.video"):
        r = stylize_video(pipe, cut, style, tmp_path / "cut_out.mp4", top_k=8, keep_scales=0)
    assert r.expected_frames == 16 and 0 < r.frames < 16
    assert f"{r.frames} of the 16 frames the container announces were read" in caplog.text
