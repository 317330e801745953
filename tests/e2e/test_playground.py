"""The playground page at / of the orchestrator's HTTP port, in a real headless Chromium (Debian's
package, driven over the DevTools protocol, tests/e2e/browser.py): it loads, lists the models,
generates with live progress and previews, shows the image (the same bytes as the API gives for
the same request), keeps a history, shows a readable error for a refused request, and works with
an API key. DGRID_PLAYGROUND_SCREENSHOT=<png> saves a screenshot of the finished page."""
import base64
import json
import os
import urllib.error
import urllib.request

import pytest

from browser import Browser
from conftest import Cluster

API_KEY = "playground-test-key"

# Collects what the page shows while it works: every status line and every image put on the stage
# (MutationObserver records keep the nodes each change added, so none is missed however quickly
# they follow each other).
WATCH = """
window.seenStatus = []; window.seenImages = [];
new MutationObserver((records) => { for (const r of records) for (const n of r.addedNodes)
    window.seenStatus.push(n.textContent); })
  .observe(document.getElementById('status'), {childList: true});
new MutationObserver((records) => { for (const r of records) for (const n of r.addedNodes)
    if (n.tagName === 'IMG') window.seenImages.push(n.src); })
  .observe(document.getElementById('stage'), {childList: true});
true
"""


def fill(browser, **fields):
    for name, value in fields.items():
        browser.evaluate(f"(() => {{ const e = document.getElementById({json.dumps(name)}); "
                         f"e.value = {json.dumps(str(value))}; "
                         "e.dispatchEvent(new Event('change')); return true; })()")


def run(browser):
    """Clicks Generate and waits for the page to finish; returns its final status line."""
    browser.evaluate("document.getElementById('go').click(), true")
    return browser.wait_for("(() => { const s = document.getElementById('status').textContent;"
                            " return (s === 'Done.' || s === 'Failed.') && s; })()",
                            what="the page to finish")


def api_image(http_address, **body):
    request = urllib.request.Request(f"{http_address}/v1/images/generations",
                                     data=json.dumps(body).encode(),
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=120) as reply:
        return json.loads(reply.read())["data"][0]["b64_json"]


@pytest.fixture()
def browser():
    b = Browser()
    yield b
    b.close()


def test_page_generates_with_progress_previews_and_history(cluster, browser):
    page = f"{cluster.http_address}/"
    browser.navigate(page)
    models = browser.wait_for("document.querySelectorAll('#model option').length", "the models")
    assert models >= 1
    assert browser.evaluate("document.getElementById('modelError').hidden")
    browser.evaluate(WATCH)
    fill(browser, prompt="a red circle", width=64, height=64, steps=6, seed=7, previews=2)
    assert run(browser) == "Done.", browser.evaluate("document.getElementById('error').textContent")

    statuses = browser.evaluate("window.seenStatus")
    for step in range(1, 7):
        assert any(s.startswith(f"Step {step} of 6") for s in statuses), statuses
    images = browser.evaluate("window.seenImages")
    assert len(images) == 3, [i[:40] for i in images]  # two previews, then the image
    assert all(i.startswith("data:image/png;base64,") for i in images)
    final = images[-1].split(",", 1)[1]
    assert browser.evaluate("document.getElementById('result').src").endswith(final)
    expected = api_image(cluster.http_address, prompt="a red circle", size="64x64",
                         num_inference_steps=6, seed=7, response_format="b64_json")
    assert base64.b64decode(final) == base64.b64decode(expected)
    timings = browser.evaluate("document.getElementById('timings').textContent")
    assert "seed 7" in timings and "6 steps" in timings and "total" in timings, timings

    # The thumbnail holds the picture (drawn once it was decoded), not a blank canvas.
    distinct = browser.evaluate("""(async () => {
        const img = document.querySelector('#history img');
        await img.decode();
        const c = document.createElement('canvas');
        c.width = img.naturalWidth; c.height = img.naturalHeight;
        const g = c.getContext('2d');
        g.drawImage(img, 0, 0);
        const d = g.getImageData(0, 0, c.width, c.height).data;
        return new Set(Array.from(d.filter((_, i) => i % 4 === 0))).size;
    })()""")
    assert distinct > 16, distinct
    caption = browser.evaluate("document.querySelector('#history figcaption').textContent")
    assert "a red circle" in caption and "seed 7" in caption, caption
    if os.environ.get("DGRID_PLAYGROUND_SCREENSHOT"):
        browser.screenshot(os.environ["DGRID_PLAYGROUND_SCREENSHOT"])
    # The history is this browser's: it is still there after a reload.
    browser.navigate(page)
    assert browser.wait_for("document.querySelectorAll('#history figure').length", "history") == 1


def test_page_shows_a_readable_error_for_a_refused_request(cluster, browser):
    browser.navigate(f"{cluster.http_address}/")
    browser.wait_for("document.querySelectorAll('#model option').length", "the models")
    # Past the model's largest size: the form lets it through, the server refuses it.
    fill(browser, width=16384, height=16384, steps=2)
    assert run(browser) == "Failed."
    error = browser.evaluate("document.getElementById('error').textContent")
    assert error.startswith("HTTP 400: ") and ("size" in error or "width" in error), error
    assert browser.evaluate("!document.getElementById('error').hidden")
    # The page serves on: a good request after the refused one.
    fill(browser, width=64, height=64, steps=2)
    assert run(browser) == "Done."
    assert browser.evaluate("document.getElementById('error').hidden")


def test_page_with_an_api_key(model, browser):
    c = Cluster(model, extra=("--api-key", API_KEY))
    try:
        page = f"{c.http_address}/"
        with urllib.request.urlopen(page, timeout=30) as reply:  # the page itself needs no key
            assert reply.status == 200
            assert reply.headers["Content-Type"].startswith("text/html")
            assert "default-src 'none'" in reply.headers["Content-Security-Policy"]
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{c.http_address}/v1/models", timeout=30)
        assert refused.value.code == 401
        browser.navigate(page)
        message = browser.wait_for("(() => { const e = document.getElementById('modelError');"
                                   " return !e.hidden && e.textContent; })()", "the key error")
        assert "HTTP 401" in message and "API key" in message, message
        fill(browser, apiKey=API_KEY)
        browser.wait_for("document.querySelectorAll('#model option').length", "the models")
        fill(browser, width=64, height=64, steps=2, seed=3)
        assert run(browser) == "Done.", browser.evaluate(
            "document.getElementById('error').textContent")
    finally:
        c.stop()


def test_page_plays_a_video_models_mp4(browser, tmp_path):
    """A video model (a tiny random Wan pipeline, as tests/parity/wan builds it): the page sends it
    to /v1/videos, polls the job and plays the MP4 it downloads."""
    import sys
    from conftest import SOURCE
    sys.path.insert(0, os.path.join(SOURCE, "tests", "parity", "wan"))
    import wan_local_cli_test
    _, folders = wan_local_cli_test.build_pipeline(str(tmp_path))
    c = Cluster(folders["t2v"])
    try:
        browser.navigate(f"{c.http_address}/")
        browser.wait_for("document.querySelectorAll('#model option').length", "the models")
        assert not browser.evaluate("document.getElementById('videoFields').hidden")
        fill(browser, prompt="a red circle", width=48, height=32, frames=5, fps=8, steps=2, seed=7)
        assert run(browser) == "Done.", browser.evaluate(
            "document.getElementById('error').textContent")
        video = browser.evaluate("(() => { const v = document.getElementById('result');"
                                 " return {tag: v.tagName, src: v.src}; })()")
        assert video["tag"] == "VIDEO" and video["src"].startswith("blob:"), video
        # The browser decodes it: metadata loaded, no media error, half a second long (5 frames
        # at 8 fps: 4 intervals).
        state = browser.wait_for(
            "(() => { const v = document.getElementById('result');"
            " return (v.error || v.readyState >= 1) &&"
            " {error: v.error && v.error.code, duration: v.duration,"
            "  width: v.videoWidth, height: v.videoHeight}; })()", "the video's metadata")
        assert state["error"] is None, state
        assert (state["width"], state["height"]) == (48, 32), state
        assert state["duration"] > 0, state
    finally:
        c.stop()
