"""``stylevar app``: the request handler on the tiny model, and the running server driven by a real headless
Chromium (Debian's ``chromium`` + ``chromium-driver``, via Selenium): upload two images, stylize, find the
result; an oversized upload shows its message. The server is started and stopped by the test (two: one
open, one with ``--auth``), each with its own Gradio folder (GRADIO_TEMP_DIR), and also driven over plain
HTTP as a hostile client would: files named instead of uploaded, routes without the login, oversized
work, a client that goes away (docs/app.md).

Needs the ``app`` extra (gradio), selenium and Chromium; skipped with the reason otherwise. Set
``STYLEVAR_APP_SCREENSHOT=path.png`` to keep the page's screenshot (the README's comes from here).
"""

from __future__ import annotations

import contextlib
import copy
import importlib.util
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

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
    from stylevar.stylize.pipeline import StyleVARPipeline

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
    from stylevar.stylize.pipeline import StyleVARPipeline

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
def server_cache(tmp_path_factory) -> Path:
    """The server's Gradio upload and cache folder (its GRADIO_TEMP_DIR)."""
    return tmp_path_factory.mktemp("gradio")


@contextlib.contextmanager
def _running_app(ours_dir: Path, log: Path, cache: Path, *flags: str):
    """``stylevar app`` on the tiny model in a subprocess, its Gradio folder ``cache``: yields its URL."""
    if not HAS_GRADIO:
        pytest.skip("gradio not installed (pip install -e '.[app]')")
    port = _free_port()
    cmd = [sys.executable, "-m", "stylevar", "app", "--checkpoint", str(ours_dir), "--device", "cpu",
           "--port", str(port), "--max-pixels", "200000", "--max-upload-mb", "2", *flags]  # fmt: skip
    env = {**os.environ, "GRADIO_ANALYTICS_ENABLED": "False", "NO_PROXY": "127.0.0.1,localhost"}
    env["GRADIO_TEMP_DIR"] = str(cache)
    with open(log, "w") as f:
        proc = subprocess.Popen(cmd, stdout=f, stderr=subprocess.STDOUT, env=env)
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + 120
        while True:
            try:
                urllib.request.urlopen(url + "health", timeout=2).read()
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
def server(ours_dir, server_log, server_cache):
    with _running_app(ours_dir, server_log, server_cache, "--queue-size", "4") as url:
        yield url


AUTH = ("user", "pw-for-tests")


@pytest.fixture(scope="module")
def auth_server(ours_dir, tmp_path_factory):
    """A second server with a login (``--auth``) and a small bound on a request's work (0.5 MP of output:
    3 samples of the 384x384 example at full resolution, not 4). Yields (url, log, cache folder)."""
    folder = tmp_path_factory.mktemp("auth_server")
    log, cache = folder / "server.log", folder / "gradio"
    cache.mkdir()
    flags = ("--auth", ":".join(AUTH), "--max-request-mpix", "0.5")
    with _running_app(ours_dir, log, cache, *flags) as url:
        yield url, log, cache


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


@pytest.mark.slow
def test_examples_and_masks_in_a_real_browser(server, browser, tmp_path):
    """What the page sends that is not a plain upload: an example picked from the table (the server's own
    files) is stylized, with a mask uploaded into the mask editor; a mask over --max-pixels (200,000)
    gets the size message on the page."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    small, big = tmp_path / "mask.png", tmp_path / "big_mask.png"
    Image.new("L", (384, 384), 255).save(small)
    Image.new("L", (600, 600), 255).save(big)
    drv = browser
    for mask, expected in ((small, "seeds:"), (big, "The mask image is too large: 600x600")):
        drv.get(server)
        WebDriverWait(drv, 60).until(EC.element_to_be_clickable((By.ID, "stylize")))
        drv.find_element(By.CSS_SELECTOR, "[data-testid='dataset-cell-0-0']").click()  # the first example
        for elem_id in ("content", "style"):
            WebDriverWait(drv, 30).until(EC.presence_of_element_located((By.CSS_SELECTOR, f"#{elem_id} img")))
        next(b for b in drv.find_elements(By.TAG_NAME, "button") if "Where the style goes" in b.text).click()
        WebDriverWait(drv, 30).until(
            EC.presence_of_element_located((By.CSS_SELECTOR, "#mask input[type=file]"))
        )
        drv.find_element(By.CSS_SELECTOR, "#mask input[type=file]").send_keys(str(mask))
        WebDriverWait(drv, 30).until(lambda d: "Upload an image" not in d.find_element(By.ID, "mask").text)
        drv.find_element(By.ID, "stylize").click()
        WebDriverWait(drv, 120).until(EC.text_to_be_present_in_element((By.TAG_NAME, "body"), expected))


@pytest.mark.slow
def test_the_login_in_a_real_browser(auth_server, browser):
    """With --auth, the page's login form works through the gate that closes every other route (its
    scripts, styles and the login route stay open), and the logged-in page uploads and stylizes."""
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support import expected_conditions as EC
    from selenium.webdriver.support.ui import WebDriverWait

    url, log, _ = auth_server
    drv = browser
    drv.get(url)
    fields = WebDriverWait(drv, 60).until(lambda d: d.find_elements(By.CSS_SELECTOR, "input") or None)
    fields[0].send_keys(AUTH[0])
    fields[1].send_keys(AUTH[1])
    next(b for b in drv.find_elements(By.TAG_NAME, "button") if b.text.strip() == "Login").click()
    WebDriverWait(drv, 60).until(EC.element_to_be_clickable((By.ID, "stylize")))
    _upload(drv, "content", EXAMPLES / "content.jpg")
    _upload(drv, "style", EXAMPLES / "style.jpg")
    drv.find_element(By.ID, "stylize").click()
    WebDriverWait(drv, 120).until(EC.text_to_be_present_in_element((By.ID, "seeds"), "seeds:"))
    assert "Traceback" not in log.read_text()


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


# ---------------------------------------------------------------------------------------------------
# the app's boundary: files only as uploads, logins on every route, bounded work, named parameters
# (raw HTTP, as a hostile client would speak it: no gradio_client to upload files for it)

API_PARAMETERS = ["content", "style", "style2", "blend", "strength", "preserve_color", "full_res",
                  "num_samples", "seed", "alpha", "mask", "region_mask", "region_style", "temperature"]  # fmt: skip
FILE_INPUTS = {"content": "content image", "style": "style image", "style2": "second style image",
               "mask": "mask", "region_mask": "region mask", "region_style": "region style image"}  # fmt: skip


def _http(url, login: bool = False):
    import httpx

    client = httpx.Client(base_url=url, timeout=120, trust_env=False)
    if login:
        r = client.post("login", data={"username": AUTH[0], "password": AUTH[1]})
        assert r.status_code == 200, r.text[:300]
    return client


def _file(path) -> dict:
    """A Gradio FileData naming ``path``, as a client may send it in place of an upload."""
    return {"path": str(path), "meta": {"_type": "gradio.FileData"}}


def _as_input(name: str, path) -> Any:
    if name in ("mask", "region_mask"):  # an image editor's value
        return {"background": _file(path), "layers": [], "composite": _file(path), "id": None}
    return _file(path)


def _uploaded(client, path: Path) -> str:
    with open(path, "rb") as f:
        r = client.post("gradio_api/upload", files={"files": (path.name, f)})
    assert r.status_code == 200, r.text[:300]
    return r.json()[0]


def _data(**values) -> list:
    """The /stylize endpoint's values in order: ``values`` by parameter name, defaults for the rest."""
    defaults = dict(style2=None, blend=0.5, strength=0, preserve_color="none", full_res=False, num_samples=1,
                    seed=3, alpha="", mask=None, region_mask=None, region_style=None, temperature=1.0)  # fmt: skip
    return [values.get(name, defaults.get(name)) for name in API_PARAMETERS]


def _stylize(client, data: list, via: str = "call") -> tuple[str, Any]:
    """One request to the /stylize endpoint over plain HTTP, by the simple API (``call``) or by the queue's
    own join + SSE stream (``queue``, what the page does): ("complete", output data) or ("error", msg)."""
    if via == "call":
        r = client.post("gradio_api/call/stylize", json={"data": data})
        assert r.status_code == 200, r.text[:300]
        text = client.get(f"gradio_api/call/stylize/{r.json()['event_id']}").text
        events = [block.split("\n") for block in text.strip().split("\n\n")]
        kind, payload = (
            events[-1][0].removeprefix("event: "),
            json.loads(events[-1][1].removeprefix("data: ")),
        )
        return (kind, payload["error"]) if kind == "error" else (kind, payload)
    fn = next(d["id"] for d in client.get("config").json()["dependencies"] if d.get("api_name") == "stylize")
    session = os.urandom(8).hex()
    r = client.post("gradio_api/queue/join", json={"data": data, "fn_index": fn, "session_hash": session})
    assert r.status_code == 200, r.text[:300]
    with client.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            message = json.loads(line.removeprefix("data: ")) if line.startswith("data: ") else {}
            if message.get("msg") == "process_completed":
                out = message["output"]
                return ("complete", out["data"]) if message.get("success") else ("error", out["error"])
    raise AssertionError("the queue's stream ended without a result")


def _cache_files(folder: Path) -> set[Path]:
    return {p for p in folder.rglob("*") if p.is_file()}


@pytest.mark.slow
@pytest.mark.parametrize("login", [False, True], ids=["open", "auth"])
def test_a_request_may_name_only_uploaded_files(login, request, server, server_cache, server_log, tmp_path):
    """Every file input, by both endpoints, with and without --auth (logged in): a FileData that names a
    server file (an image, /etc/passwd, 50 MB past the upload limit), a URL, or a path outside the upload
    folder is refused with one line naming the input and no path; nothing is copied into Gradio's folder
    and nothing named can be fetched back. The same request with uploads is served."""
    if login:
        url, log, cache = request.getfixturevalue("auth_server")
    else:
        url, log, cache = server, server_log, server_cache
    secret = tmp_path / "secret.png"
    Image.new("RGB", (64, 64), (200, 30, 30)).save(secret)
    big = tmp_path / "big.png"
    with open(big, "wb") as f:  # 50 MB on the server's disk, over its 2 MB upload limit
        f.truncate(50 * 1024 * 1024)
    client = _http(url, login)
    content, style = _uploaded(client, EXAMPLES / "content.jpg"), _uploaded(client, EXAMPLES / "style.jpg")
    kind, out = _stylize(client, _data(content=_file(content), style=_file(style)))
    assert kind == "complete" and len(out[0]) == 1, out  # uploads are served
    shutil.copy(secret, cache.parent / "outside.png")
    outside = f"{cache}/../outside.png"  # a path that starts in the upload folder and leaves it
    before = _cache_files(cache)
    named = [secret, Path("/etc/passwd"), big, "https://example.com/style.png", outside]
    for name, role in FILE_INPUTS.items():
        for via in ("call", "queue"):
            for target in named if via == "call" else [secret]:
                values = {"content": _file(content), "style": _file(style), name: _as_input(name, target)}
                if name == "region_style":
                    values["region_mask"] = _as_input("mask", content)
                kind, message = _stylize(client, _data(**values), via)
                assert kind == "error", (name, via, target, message)
                assert message.startswith(f"the {role} must be a file uploaded to this page"), message
                assert "\n" not in message and str(target) not in message and str(cache) not in message
    assert _cache_files(cache) == before  # nothing named was copied (no new file at all)
    for target in (secret, "/etc/passwd", big, outside):
        assert client.get(f"gradio_api/file={target}").status_code in (403, 404)
    (cache.parent / "outside.png").unlink()
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_routes_need_the_login_and_the_schema_pages_are_off(server, auth_server):
    """With --auth, every route but /health and the login page answers 401 without the session cookie
    (Gradio leaves /gradio_api/reset, /cancel, /heartbeat, /stream open), never 500, and logs no
    traceback; after logging in they work. /docs, /redoc and /openapi.json are off (404) with or without
    a login; /health is open on both servers."""
    url, log, _ = auth_server
    anonymous = _http(url)
    body = {"event_id": "e", "session_hash": "s", "fn_index": 1, "data": []}
    for method, route in [("POST", "gradio_api/reset"), ("POST", "gradio_api/cancel"),
                          ("POST", "gradio_api/queue/join"), ("POST", "gradio_api/call/stylize"),
                          ("POST", "gradio_api/upload"), ("POST", "gradio_api/stream/e"),
                          ("GET", "gradio_api/heartbeat/s"), ("GET", "gradio_api/info"), ("GET", "config"),
                          ("GET", "gradio_api/file=/etc/passwd"), ("GET", "gradio_api/startup-events")]:  # fmt: skip
        for kw in ({}, {"json": body}):
            r = anonymous.request(method, route, **kw)
            assert r.status_code == 401, (method, route, kw, r.status_code, r.text[:200])
    assert anonymous.get("").status_code == 200  # the login page
    for u, client in ((server, _http(server)), (url, anonymous), (url, _http(url, login=True))):
        for route in ("docs", "redoc", "openapi.json"):
            assert client.get(route).status_code == 404, (u, route)
        assert client.get("health").json()["status"] == "ok"
    user = _http(url, login=True)
    assert user.post("gradio_api/reset", json=body).status_code == 200
    assert user.get("config").status_code == 200
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
def test_the_api_parameters_have_names(server):
    info = _http(server).get("gradio_api/info").json()["named_endpoints"]["/stylize"]["parameters"]
    assert [p["parameter_name"] for p in info] == API_PARAMETERS
    temperature = info[API_PARAMETERS.index("temperature")]
    assert (
        temperature["parameter_has_default"] and temperature["parameter_default"] == 1.0
    )  # the checkpoint's


@pytest.mark.slow
def test_every_image_input_is_held_to_max_pixels(server, server_log, pics):
    """--max-pixels (200,000 here) holds for every image input, the masks' editors included: a 600x600
    upload as any of them gets the size message, one line."""
    client = _http(server)
    big, content, style = (
        _uploaded(client, p) for p in (pics[2], EXAMPLES / "content.jpg", EXAMPLES / "style.jpg")
    )
    for name, role in FILE_INPUTS.items():
        values = {"content": _file(content), "style": _file(style), name: _as_input(name, big), "blend": 0.5}
        if name == "region_style":
            values["region_mask"] = _as_input("mask", content)
        if name == "region_mask":
            values["region_style"] = _file(style)
        kind, message = _stylize(client, _data(**values))
        assert kind == "error", (name, message)
        size = f"The {role.removesuffix(' image')} image is too large: 600x600 (0.4 MP); the limit here is 0.2 MP"
        assert message.startswith(size) and "\n" not in message, message
    assert "Traceback" not in server_log.read_text()


@pytest.mark.slow
def test_a_requests_work_is_bounded(auth_server):
    """--max-request-mpix 0.5: 4 samples of the 384x384 example at full resolution (0.59 MP of output) are
    refused with a message saying what to lower; 3 are served, and so are 8 at the model's resolution."""
    url, log, _ = auth_server
    client = _http(url, login=True)
    content, style = _uploaded(client, EXAMPLES / "content.jpg"), _uploaded(client, EXAMPLES / "style.jpg")
    files = {"content": _file(content), "style": _file(style)}
    kind, message = _stylize(client, _data(**files, num_samples=4, full_res=True))
    assert kind == "error", message
    assert message == (
        "This request is too large: 4 samples x 0.147 MP (384x384, full resolution) = 0.59 MP of output; the "
        "limit here is 0.5 MP. Lower the samples, turn off full resolution or upload a smaller content image."
    )
    kind, out = _stylize(client, _data(**files, num_samples=3, full_res=True))
    assert kind == "complete" and len(out[0]) == 3, out
    kind, out = _stylize(client, _data(**files, num_samples=8))
    assert kind == "complete" and len(out[0]) == 8, out
    assert "Traceback" not in log.read_text()


@pytest.mark.slow
@pytest.mark.parametrize("via", ["call", "queue"])
def test_a_client_that_goes_away_stops_its_generation(via, server):
    """A client that closes its connection mid-generation (8 samples at full resolution: about 3.4 s on 2
    cores when left to finish) frees the worker at the next scale boundary: /health counts it cancelled,
    not served, within 20 s."""
    client = _http(server)
    content, style = _uploaded(client, EXAMPLES / "content.jpg"), _uploaded(client, EXAMPLES / "style.jpg")
    data = _data(content=_file(content), style=_file(style), num_samples=8, full_res=True)
    before = _health(server)
    if via == "call":
        r = client.post("gradio_api/call/stylize", json={"data": data})
        stream = client.stream("GET", f"gradio_api/call/stylize/{r.json()['event_id']}")
    else:
        session = os.urandom(8).hex()
        fn = next(
            d["id"] for d in client.get("config").json()["dependencies"] if d.get("api_name") == "stylize"
        )
        client.post("gradio_api/queue/join", json={"data": data, "fn_index": fn, "session_hash": session})
        stream = client.stream("GET", "gradio_api/queue/data", params={"session_hash": session})
    with stream as response:
        for _ in response.iter_lines():
            if _health(server)["generating"]:
                break
    client.close()  # the connection goes away mid-generation
    t0 = time.time()
    while _health(server)["generating"]:
        assert time.time() - t0 < 20, _health(server)
        time.sleep(0.05)
    after = _health(server)
    assert after["cancelled"] == before["cancelled"] + 1 and after["served"] == before["served"], (
        before,
        after,
    )


@pytest.mark.slow
def test_an_example_picked_on_the_page_is_served(server):
    """The examples are the server's own files: picking one (Gradio's load_example event: their copies in
    its cache) and stylizing it is served, though neither was uploaded."""
    client = _http(server)
    config = client.get("config").json()
    fn = next(d["id"] for d in config["dependencies"] if d.get("api_name") == "load_example")
    session = os.urandom(8).hex()
    client.post("gradio_api/queue/join", json={"data": [0], "fn_index": fn, "session_hash": session})
    with client.stream("GET", "gradio_api/queue/data", params={"session_hash": session}) as stream:
        for line in stream.iter_lines():
            message = json.loads(line.removeprefix("data: ")) if line.startswith("data: ") else {}
            if message.get("msg") == "process_completed":
                break
    content, style = (update["value"] for update in message["output"]["data"][:2])
    kind, out = _stylize(client, _data(content=content, style=style))
    assert kind == "complete" and len(out[0]) == 1, out


def test_request_handler_bounds_and_temperature(tiny, pics):
    """The handler on its own: the work bound (samples x output pixels), a mask over max_pixels, and the
    temperature (None or the checkpoint's own: the same image; another: another image; <= 0 refused)."""
    from stylevar.app import stylize_request
    from stylevar.stylize.pipeline import StyleVARPipeline

    pipe = StyleVARPipeline(*copy.deepcopy(tiny))
    c, s = str(pics[0]), str(pics[1])  # content 120x90 = 0.0108 MP
    with pytest.raises(ConfigError, match=r"3 samples x 0.0108 MP \(120x90, full resolution\) = 0.0324 MP"):
        stylize_request(pipe, c, s, full_res=True, num_samples=3, max_request_pixels=30_000)
    assert len(stylize_request(pipe, c, s, full_res=True, num_samples=2, max_request_pixels=30_000)[0]) == 2
    assert len(stylize_request(pipe, c, s, num_samples=3, max_request_pixels=30_000)[0]) == 3  # 3 x 64^2
    with pytest.raises(ImageError, match=r"The mask image is too large: 120x90"):  # the content: 80x80
        stylize_request(pipe, s, s, mask={"composite": Image.new("RGBA", (120, 90))}, max_pixels=10_000)
    plain = np.asarray(stylize_request(pipe, c, s, seed=5)[0][0][0])
    same = stylize_request(pipe, c, s, seed=5, temperature=pipe.sampling.temperature)[0][0][0]
    hot = stylize_request(pipe, c, s, seed=5, temperature=3.0)[0][0][0]
    assert np.array_equal(np.asarray(same), plain) and not np.array_equal(np.asarray(hot), plain)
    for bad, message in (
        (0, "temperature must be > 0"),
        (-1, "temperature must be > 0"),
        (float("nan"), "finite"),
    ):
        with pytest.raises(ConfigError, match=message):
            stylize_request(pipe, c, s, temperature=bad)
