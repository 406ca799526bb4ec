"""``stylevar app``: the request handler on the tiny model, and the running server driven by a real headless
Chromium (Debian's ``chromium`` + ``chromium-driver``, via Selenium): upload two images, stylize, find the
result; an oversized upload shows its message. The server is started and stopped by the test.

Needs the ``app`` extra (gradio), selenium and Chromium; skipped with the reason otherwise. Set
``STYLEVAR_APP_SCREENSHOT=path.png`` to keep the page's screenshot (the README's comes from here).
"""

from __future__ import annotations

import copy
import importlib.util
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from helpers import write_smooth_pngs
from stylevar.errors import ConfigError, ImageError

HAS_GRADIO = importlib.util.find_spec("gradio") is not None
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
CHROMEDRIVER = shutil.which("chromedriver")
EXAMPLES = Path(__file__).resolve().parents[1] / "examples"


@pytest.fixture(scope="module")
def pics(tmp_path_factory):
    return write_smooth_pngs(tmp_path_factory.mktemp("app"), [(120, 90), (80, 80), (600, 600)], seed=60)


def test_request_handler(tiny, pics):
    from stylevar.app import example_pairs, stylize_request
    from stylevar.pipeline import StyleVARPipeline

    pipe = StyleVARPipeline(*copy.deepcopy(tiny))  # the pipeline freezes its model: not the shared one
    calls = []
    imgs, info = stylize_request(
        pipe, str(pics[0]), str(pics[1]), str(pics[0]), 0.3, 0.5, "stats", True, 3, 11, "",
        progress=lambda f, desc="": calls.append(f),
    )  # fmt: skip
    assert [c for _, c in imgs] == ["seed 11", "seed 12", "seed 13"] and "11, 12, 13" in info
    assert all(im.size == (120, 90) for im, _ in imgs)  # full resolution: the content's size
    assert calls[0] == 0 and calls[-1] == 1
    # the same image from the pipeline with the same controls (what the CLI would make)
    again = pipe(
        pics[0], [pics[1], pics[0]], style_weights=[0.7, 0.3], seed=12, style_strength=0.5, preserve_color="stats",
        keep_size=True, upscale="guided", fit="squash",
    )[0]  # fmt: skip
    assert np.abs(np.asarray(again, dtype=int) - np.asarray(imgs[1][0], dtype=int)).max() <= 1
    random_seed = stylize_request(pipe, str(pics[0]), str(pics[1]), seed=-1)[0]
    assert random_seed[0][1].startswith("seed ")
    with pytest.raises(ImageError, match=r"too large: 600x600 \(0.4 MP\); the limit here is 0.1 MP"):
        stylize_request(pipe, str(pics[2]), str(pics[1]), max_pixels=100_000)
    with pytest.raises(ConfigError, match="add a content image"):
        stylize_request(pipe, None, str(pics[1]))
    with pytest.raises(ConfigError, match="one number per scale"):
        stylize_request(pipe, str(pics[0]), str(pics[1]), alpha="a, b")
    assert len(example_pairs()) >= 4 and all(Path(p).is_file() for pair in example_pairs() for p in pair)


def test_request_handler_masks(tiny, pics, tmp_path):
    """The page's masks: an upload (path), an image editor's drawing (RGBA composite: strokes on nothing),
    an empty canvas (no mask); the results are the pipeline's."""
    from PIL import Image

    from stylevar.app import stylize_request
    from stylevar.pipeline import StyleVARPipeline

    pipe = StyleVARPipeline(*copy.deepcopy(tiny))
    plain = stylize_request(pipe, str(pics[0]), str(pics[1]), seed=4)[0][0][0]
    white = tmp_path / "white.png"
    Image.new("L", (120, 90), 255).save(white)
    assert np.array_equal(
        np.asarray(stylize_request(pipe, str(pics[0]), str(pics[1]), seed=4, mask=str(white))[0][0][0]),
        np.asarray(plain),
    )
    empty = {"background": None, "layers": [], "composite": Image.new("RGBA", (120, 90), (0, 0, 0, 0))}
    assert np.array_equal(
        np.asarray(stylize_request(pipe, str(pics[0]), str(pics[1]), seed=4, mask=empty)[0][0][0]),
        np.asarray(plain),
    )
    # a region drawn over the whole canvas in white with the first style: that style's image
    drawn = {"composite": Image.new("RGBA", (120, 90), (255, 255, 255, 255))}
    as_region = stylize_request(
        pipe, str(pics[0]), str(pics[0]), seed=4, region_mask=drawn, region_style=str(pics[1])
    )[0][0][0]
    assert np.array_equal(np.asarray(as_region), np.asarray(plain))
    # half drawn: strokes on the left, nothing on the right -> neither style's image
    half = Image.new("RGBA", (120, 90), (0, 0, 0, 0))
    half.paste((255, 255, 255, 255), (0, 0, 60, 90))
    mixed = stylize_request(
        pipe, str(pics[0]), str(pics[0]), seed=4, region_mask={"composite": half}, region_style=str(pics[1])
    )[0][0][0]
    assert not np.array_equal(np.asarray(mixed), np.asarray(plain))
    with pytest.raises(ConfigError, match="needs a region mask"):
        stylize_request(pipe, str(pics[0]), str(pics[1]), region_style=str(pics[1]))
    with pytest.raises(ImageError, match="not a picture"):
        bad = tmp_path / "bad.png"
        bad.write_text("no")
        stylize_request(pipe, str(pics[0]), str(pics[1]), mask=str(bad))


SERVER_PID: dict[str, int] = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_log(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("server") / "server.log"


@pytest.fixture(scope="module")
def server(ours_dir, server_log):
    if not HAS_GRADIO:
        pytest.skip("gradio not installed (pip install -e '.[app]')")
    port = _free_port()
    log = server_log
    cmd = [sys.executable, "-m", "stylevar", "app", "--checkpoint", str(ours_dir), "--device", "cpu",
           "--port", str(port), "--max-pixels", "200000", "--max-upload-mb", "2", "--queue-size", "4"]  # fmt: skip
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost"}
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.time() > deadline:
                    raise RuntimeError(f"the app did not start:\n{log.read_text()[-3000:]}") from None
                time.sleep(0.5)
        SERVER_PID[url] = proc.pid
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture(scope="module")
def browser():
    if importlib.util.find_spec("selenium") is None:
        pytest.skip("selenium not installed (pip install -e '.[dev]')")
    if not (CHROMIUM and CHROMEDRIVER):
        pytest.skip("Chromium not installed (Debian: apt-get install chromium chromium-driver)")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    for a in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1300"):
        opts.add_argument(a)
    drv = webdriver.Chrome(options=opts, service=Service(CHROMEDRIVER))
    drv.set_page_load_timeout(60)
    yield drv
    drv.quit()


def _upload(drv, elem_id: str, path: Path) -> None:
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    box = drv.find_element(By.ID, elem_id)
    box.find_element(By.CSS_SELECTOR, "input[type=file]").send_keys(str(path))
    WebDriverWait(drv, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, f"#{elem_id} img")))


@pytest.mark.slow
def test_app_in_a_real_browser(server, browser, pics, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    drv = browser
    drv.get(server)
    WebDriverWait(drv, 60).until(EC.element_to_be_clickable((By.ID, "stylize")))
    _upload(drv, "content", EXAMPLES / "content.jpg")
    _upload(drv, "style", EXAMPLES / "style.jpg")
    drv.find_element(By.ID, "stylize").click()
    result = WebDriverWait(drv, 180).until(EC.presence_of_element_located((By.CSS_SELECTOR, "#results img")))
    assert result.get_attribute("src")
    WebDriverWait(drv, 30).until(EC.text_to_be_present_in_element((By.ID, "seeds"), "seeds:"))
    shot = tmp_path / "app.png"
    drv.save_screenshot(str(shot))
    assert Image.open(shot).size[0] > 800
    if os.environ.get("STYLEVAR_APP_SCREENSHOT"):
        shutil.copy(shot, os.environ["STYLEVAR_APP_SCREENSHOT"])

    # an image over the server's --max-pixels (200,000) is refused with a message on the page
    drv.get(server)
    WebDriverWait(drv, 60).until(EC.element_to_be_clickable((By.ID, "stylize")))
    _upload(drv, "content", pics[2])
    _upload(drv, "style", pics[1])
    drv.find_element(By.ID, "stylize").click()
    WebDriverWait(drv, 60).until(
        lambda d: "The content image is too large: 600x600" in d.find_element(By.TAG_NAME, "body").text
    )
    assert "Downscale it" in drv.find_element(By.TAG_NAME, "body").text


def test_server_refuses_uploads_over_the_limit(server, tmp_path):
    """--max-upload-mb is enforced by the server itself (HTTP 413 from Gradio's upload route) before
    any image is decoded; a file under the limit is accepted."""
    import httpx

    big, small = tmp_path / "big.png", tmp_path / "small.jpg"
    big.write_bytes(os.urandom(3 * 1024 * 1024))  # the server runs with --max-upload-mb 2
    shutil.copy(EXAMPLES / "content.jpg", small)
    answers = {}
    with httpx.Client(base_url=server, timeout=60, trust_env=False) as client:
        for path in (big, small):
            with open(path, "rb") as f:
                answers[path.name] = client.post("gradio_api/upload", files={"files": (path.name, f)})
    assert answers["big.png"].status_code == 413, answers["big.png"].text[:300]
    assert "maximum allowed size" in answers["big.png"].text
    assert answers["small.jpg"].status_code == 200, answers["small.jpg"].text[:300]


def test_the_server_says_where_it_is_in_its_own_words(server, server_log):
    """One line of ours with the address; not Gradio's advice to call launch(share=True), which a
    command-line user cannot act on."""
    text = server_log.read_text()
    assert f"stylevar app on {server.rstrip('/')} (device cpu; Ctrl-C stops it)" in text, text
    assert "share=True" not in text and "launch()" not in text, text


# ---------------------------------------------------------------------------------------------------
# the app as a service: bad uploads, load, cancellation, health (a real server, gradio_client)


def _client(url):
    from gradio_client import Client

    os.environ.setdefault("NO_PROXY", "127.0.0.1,localhost")
    return Client(url, verbose=False)


def _args(content, style, *, samples=1, full_res=False):
    from gradio_client import handle_file

    style_arg = None if style is None else handle_file(str(style))
    return (
        handle_file(str(content)),
        style_arg,
        None,
        0.5,
        0,
        "none",
        full_res,
        samples,
        3,
        "",
        None,
        None,
        None,
    )


def _health(url) -> dict:
    import json

    return json.loads(urllib.request.urlopen(url + "health", timeout=10).read())


def _rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


@pytest.mark.slow
def test_bad_uploads_get_our_one_line_message_and_no_traceback(server, server_log, tmp_path):
    """Every upload reaches stylevar's reader: a text file named .png, an empty file, a truncated PNG, an
    8-px image, and a 400-MP decompression bomb each get one line on the page; the server keeps serving
    and logs no traceback."""
    from PIL import Image

    good = EXAMPLES / "style.jpg"
    text, empty, cut, tiny, bomb = (
        tmp_path / n for n in ("text.png", "empty.png", "cut.png", "tiny.png", "bomb.png")
    )
    text.write_text("not an image")
    empty.write_bytes(b"")
    data = (EXAMPLES / "content.jpg").read_bytes()
    Image.open(EXAMPLES / "content.jpg").save(cut)
    cut.write_bytes(cut.read_bytes()[: len(cut.read_bytes()) // 3])
    Image.new("RGB", (8, 8)).save(tiny)
    Image.new("1", (20000, 20000)).save(bomb)  # 50 kB on disk, 400 MP decoded
    assert len(data) > 0 and bomb.stat().st_size < 2 * 1024 * 1024
    client = _client(server)
    expected = {
        text: "the content image is not a picture this app can read",
        empty: "the content image is not a picture this app can read",
        cut: "truncated or corrupt",
        tiny: "smaller than 16 px",
        bomb: "too large",
    }
    for path, needle in expected.items():
        with pytest.raises(Exception) as e:
            client.predict(*_args(path, good), api_name="/stylize")
        msg = str(e.value)
        assert needle in msg and "\n" not in msg.strip() and "Traceback" not in msg, (path.name, msg)
    out = client.predict(*_args(EXAMPLES / "content.jpg", good), api_name="/stylize")  # still serving
    assert len(out[0]) == 1
    assert "Traceback" not in server_log.read_text()


@pytest.mark.slow
def test_load_cancellation_and_health(server):
    """6 clients at once against --concurrency 1 --queue-size 4: the running one and the 4 waiting ones
    complete with their images, the sixth is refused; waiting ones see their place in the queue. Stop
    frees the worker at the next scale boundary and the next request starts at once. /health says it all;
    the server's memory after the burst stays within 300 MiB of before it."""
    h = _health(server)
    assert h["status"] == "ok" and h["model_loaded"] and h["generating"] == 0
    pid = SERVER_PID[server]
    rss_before = _rss_mib(pid)
    args = _args(EXAMPLES / "content.jpg", EXAMPLES / "style.jpg", samples=4, full_res=True)
    clients = [_client(server) for _ in range(6)]
    jobs = []
    for c in clients:
        jobs.append(c.submit(*args, api_name="/stylize"))
        time.sleep(0.05)
    ranks = []
    deadline = time.time() + 10
    while time.time() < deadline and not any(r is not None and r > 0 for r in ranks):
        ranks = [j.status().rank for j in jobs]
        time.sleep(0.1)
    assert any(r is not None and r > 0 for r in ranks), ranks  # a queue position is reported
    done, refused = [], []
    for j in jobs:
        try:
            done.append(j.result(timeout=300))
        except Exception as e:
            refused.append(str(e))
    assert len(done) == 5 and len(refused) == 1 and "Queue is full" in refused[0], refused
    for gallery, info in done:
        assert len(gallery) == 4 and info.startswith("seeds: 3, 4, 5, 6")
    rss_after = _rss_mib(pid)
    assert rss_after - rss_before < 300, (rss_before, rss_after)

    # Stop (the client's cancel, what the page's Stop button sends) frees the worker at a scale boundary
    before = _health(server)
    long_job = clients[0].submit(*_args(EXAMPLES / "content.jpg", EXAMPLES / "style.jpg", samples=8, full_res=True),
                                 api_name="/stylize")  # fmt: skip
    deadline = time.time() + 30
    while _health(server)["generating"] == 0:
        assert time.time() < deadline
        time.sleep(0.05)
    time.sleep(0.3)  # the handler has yielded: Gradio cancels iterators, not threads it has not seen
    t0 = time.time()
    assert long_job.cancel()
    while _health(server)["generating"] != 0:
        assert time.time() - t0 < 20
        time.sleep(0.05)
    h = _health(server)
    assert h["cancelled"] == before["cancelled"] + 1, (before, h, time.time() - t0)
    t1 = time.time()
    out = clients[1].predict(*_args(EXAMPLES / "content.jpg", EXAMPLES / "style.jpg"), api_name="/stylize")
    assert len(out[0]) == 1 and time.time() - t1 < 30
