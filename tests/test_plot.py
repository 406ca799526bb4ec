"""`stylevar plot`: curves of a run's metrics.jsonl to a PNG; one-line errors otherwise."""

from __future__ import annotations

import importlib.util
import json
import sys

import numpy as np
import pytest
from PIL import Image

from stylevar.cli import main
from stylevar.errors import DataError, StyleVARError
from stylevar.training.plot import figure_size, group_metrics, plot_run, read_metrics

needs_matplotlib = pytest.mark.skipif(
    importlib.util.find_spec("matplotlib") is None, reason="matplotlib not installed (stylevar[train])"
)


def _run(tmp_path, records, extra_lines=()):
    run = tmp_path / "run"
    run.mkdir(parents=True, exist_ok=True)
    lines = [json.dumps(r) for r in records] + list(extra_lines)
    (run / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return run


def _sft_and_tokenizer_records():
    recs = []
    for step in range(1, 41):
        recs.append(
            {
                "step": step,
                "epoch": step // 10,
                "loss": 5.0 * 0.95**step,
                "lr": 1e-4 * min(1, step / 5),
                "grad_norm": 1.0 + 0.1 * np.sin(step),
                "imgs_per_s": 30.0 + step % 3,
                "recon": 0.5 * 0.97**step,
                "vq": 0.05,
                "usage": min(1.0, 0.1 + step / 50),
                "perplexity": 10.0 + step,
            }
        )
        if step % 10 == 0:
            recs.append(
                {
                    "step": step,
                    "epoch": step // 10,
                    "val_loss": 5.2 * 0.95**step,
                    "val_tail_loss": 6.0 * 0.95**step,
                    "val_acc": 0.1 + step / 100,
                    "val_psnr": 12.0 + step / 10,
                    "val_acc_per_scale": [0.1, 0.2],  # lists are not drawn
                }
            )
    return recs


@needs_matplotlib
def test_plot_draws_one_panel_per_family(tmp_path):
    run = _run(tmp_path, _sft_and_tokenizer_records(), extra_lines=['{"step": 41, "loss": 0.'])  # cut short
    series = read_metrics(run / "metrics.jsonl")
    assert "val_acc_per_scale" not in series and "epoch" not in series and max(series["loss"]) == 40
    panels = group_metrics(list(series))
    assert [t for t, _ in panels] == [
        "losses",
        "accuracy",
        "codebook usage (fraction)",
        "codebook perplexity",
        "image quality (dB)",
        "learning rate",
        "gradient norm",
        "throughput (images/s)",
    ]
    assert dict(panels)["losses"] == ["loss", "recon", "val_loss", "val_tail_loss", "vq"]
    out = plot_run(run)
    assert out == run / "curves.png"
    img = Image.open(out)
    assert img.format == "PNG" and img.size == figure_size(8) == (1200, 1440)
    a = np.asarray(img.convert("L"), dtype=np.float32)
    assert a.std() > 10 and (a < 128).mean() > 0.005  # curves, axes and text, not a blank sheet


@needs_matplotlib
def test_later_records_win_and_small_runs_plot(tmp_path):
    # a resumed run may log a step twice: the later value is the one drawn
    run = _run(tmp_path, [{"step": 1, "loss": 2.0}, {"step": 2, "loss": 1.0}, {"step": 2, "loss": 0.5}])
    assert read_metrics(run / "metrics.jsonl")["loss"] == {1: 2.0, 2: 0.5}
    out = plot_run(run, tmp_path / "plots" / "mine.png")
    assert Image.open(out).size == figure_size(1) == (600, 360)
    assert not list((tmp_path / "plots").glob(".*tmp*"))  # written atomically


@needs_matplotlib
def test_cli_plot_and_one_line_errors(tmp_path, capsys):
    run = _run(tmp_path, _sft_and_tokenizer_records())
    assert main(["plot", str(run), "-o", str(tmp_path / "c.png")]) == 0
    assert str(tmp_path / "c.png") in capsys.readouterr().out and (tmp_path / "c.png").exists()

    (tmp_path / "empty").mkdir()
    assert main(["plot", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "no metrics file" in err and "metrics.jsonl" in err
    with pytest.raises(DataError, match="run directory not found"):
        plot_run(tmp_path / "missing")
    (tmp_path / "empty" / "metrics.jsonl").write_text('{"step": 1, "note": "x"}\n\n')
    with pytest.raises(DataError, match="no numeric metrics"):
        plot_run(tmp_path / "empty")


def test_missing_matplotlib_names_the_extra(tmp_path, monkeypatch):
    run = _run(tmp_path, [{"step": 1, "loss": 1.0}])
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib -> ImportError
    with pytest.raises(StyleVARError, match=r'pip install "stylevar\[train\]"'):
        plot_run(run)
