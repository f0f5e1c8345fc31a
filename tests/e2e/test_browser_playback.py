"""A real browser plays a recording from the bucket while it records (contract §6):
headless Chromium (Debian's package, driven by Selenium through chromedriver) loads a
page from another origin that plays ``P/playlist.m3u8`` with hls.js (npm, pinned in
tests/browser/package.json) straight from the S3 server, with CORS set on the bucket.
Playback must pass 5 s while ffmpeg still writes the file. A screenshot of the page is
kept in ``build/artifacts/``.

Skipped, saying what is missing, without Chromium, chromedriver, Selenium or hls.js
(``make test`` installs them: deploy/system-deps.sh, tests/browser)."""

from __future__ import annotations

import shutil
import threading
import time
from collections.abc import Iterator
from functools import partial
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.hls import public_read
from tests.support.videos import start_live_writer

pytestmark = pytest.mark.timeout(240)

ROOT = Path(__file__).resolve().parents[2]
HLS_JS = ROOT / "tests" / "browser" / "node_modules" / "hls.js" / "dist" / "hls.min.js"
ARTIFACTS = ROOT / "build" / "artifacts"

PAGE = """<!doctype html>
<html><head><meta charset="utf-8"><title>live</title><script src="hls.min.js"></script></head>
<body style="margin:0;background:#222;color:#eee;font:14px sans-serif">
<video id="v" muted autoplay playsinline width="640" height="360"></video>
<pre id="log"></pre>
<script>
  const video = document.getElementById("v");
  window.playerErrors = [];
  const hls = new Hls({liveDurationInfinity: true});
  hls.on(Hls.Events.ERROR, (_, data) => {
    window.playerErrors.push(data.type + ":" + data.details + ":" + data.fatal);
    if (data.fatal && data.type === Hls.ErrorTypes.NETWORK_ERROR) hls.startLoad();
  });
  hls.loadSource(new URLSearchParams(location.search).get("src"));
  hls.attachMedia(video);
  hls.on(Hls.Events.MANIFEST_PARSED, () => video.play());
  setInterval(() => {
    document.getElementById("log").textContent =
      "currentTime " + video.currentTime.toFixed(2) + "\\n" + window.playerErrors.join("\\n");
  }, 250);
</script></body></html>
"""


def _missing() -> str | None:
    if not shutil.which("chromium") or not shutil.which("chromedriver"):
        return "no chromium/chromedriver (Debian: apt-get install chromium chromium-driver)"
    if not HLS_JS.exists():
        return "no hls.js (cd tests/browser && npm ci)"
    try:
        import selenium  # noqa: F401
    except ImportError:
        return "no selenium (the test extras)"
    return None


@pytest.fixture
def page_server(tmp_path: Path) -> Iterator[str]:
    """The player page on its own origin (a port of its own: S3 is another origin)."""
    (tmp_path / "index.html").write_text(PAGE)
    shutil.copy(HLS_JS, tmp_path / "hls.min.js")
    handler = partial(SimpleHTTPRequestHandler, directory=str(tmp_path))
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()


@pytest.fixture
def browser() -> Iterator[Any]:
    reason = _missing()
    if reason:
        pytest.skip(f"no browser test here: {reason}")
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    options.binary_location = shutil.which("chromium") or "chromium"
    for flag in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic",
                 "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync",
                 "--autoplay-policy=no-user-gesture-required", "--window-size=800,600"):
        options.add_argument(flag)
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=options)
    try:
        yield driver
    finally:
        driver.quit()


def test_hls_js_in_chromium_plays_the_live_playlist(make_processor: Any, client: Any,
                                                    bucket: str, s3: Any, browser: Any,
                                                    page_server: str) -> None:
    processor = make_processor(workers=1, stream_timeout=3.0)
    processor.start()
    writer = start_live_writer(processor.watch_dir / "cam.mp4", 45.0, bitrate_mbps=6.0,
                               audio=True, gop=38)
    try:
        stream_id = processor.wait_for_event("stream_fragmented", timeout=60)[0]["stream_id"]
        processor.wait_for_event("chunk_uploaded", timeout=60)
        public_read(client, bucket)
        client.put_bucket_cors(Bucket=bucket, CORSConfiguration={"CORSRules": [{
            "AllowedOrigins": [page_server], "AllowedMethods": ["GET", "HEAD"],
            "AllowedHeaders": ["*"], "ExposeHeaders": ["Content-Length", "Content-Range"],
            "MaxAgeSeconds": 600}]})
        source = f"{s3.url}/{bucket}/streams/{stream_id}/playlist.m3u8"
        browser.get(f"{page_server}/index.html?src={source}")
        deadline, played = time.monotonic() + 90, 0.0
        while time.monotonic() < deadline and writer.poll() is None:
            played = float(browser.execute_script(
                "return document.getElementById('v').currentTime"))
            if played > 5.0:
                break
            time.sleep(0.5)
        still_recording = writer.poll() is None
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        browser.save_screenshot(str(ARTIFACTS / "browser-live-playback.png"))
        errors = browser.execute_script("return window.playerErrors")
        assert played > 5.0, f"currentTime {played} s; hls.js errors: {errors}"
        assert still_recording, "the recording ended before playback passed 5 s"
    finally:
        if writer.poll() is None:
            writer.kill()
