"""The play page in a real browser: Debian's Chromium, headless, driven by Playwright.

Never `playwright install`: the system Chromium is launched by path. Skips only when it is absent
(scripts/setup.sh installs it).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"

pytestmark = pytest.mark.skipif(not CHROMIUM.exists(),
                                reason="/usr/bin/chromium is absent (scripts/setup.sh installs Debian's chromium)")


def _wait(page, js: str, timeout: float = 20.0, what: str = ""):
    """Poll a JS expression until it is truthy; its value."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        v = page.evaluate(js)
        if v:
            return v
        time.sleep(0.05)
    state = page.evaluate("() => ({status: document.getElementById('status').textContent, "
                          "errors: document.getElementById('errors').innerText, drawn: window.worldstream.framesDrawn})")
    raise AssertionError(f"timed out waiting for {what or js}; page state {state}")


def test_page_plays_keys_move_the_camera(live_server):
    from playwright.sync_api import sync_playwright

    srv = live_server()
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 760})
            console_errors = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.goto(srv.http + "/")
            # 1. connected, the built-ins listed, the reset clip drawn at the model's size
            _wait(page, "() => document.getElementById('status').dataset.state === 'connected'", what="connected")
            opts = page.eval_on_selector_all("#start-image option", "os => os.map(o => o.value)")
            assert "builtin:green_park" in opts and "upload" in opts
            _wait(page, "() => window.worldstream.framesDrawn >= 1", what="the first frame")
            canvas = page.evaluate("() => { const c = document.getElementById('screen'); "
                                   "return [c.width, c.height, c.getBoundingClientRect().width]; }")
            sc = srv.state.session_cfg
            assert canvas[:2] == [sc.width, sc.height] and canvas[2] > 2 * sc.width  # scaled up
            first_pose = json.loads(_wait(page, "() => document.getElementById('pose').dataset.pose",
                                          what="a pose in the HUD"))
            before = page.evaluate("() => document.getElementById('screen').toDataURL()")
            # 2. hold W (and turn right with the arrow key): the HUD lights W, the pose moves
            page.click("#screen")
            page.keyboard.down("w")
            page.keyboard.down("ArrowRight")
            # the HUD is redrawn on the next animation frame: wait for it rather than racing it
            _wait(page, "() => document.querySelector(\".key[data-key='W']\").classList.contains('on')",
                  what="the W key lit in the HUD")
            pose_js = ("() => { const p = document.getElementById('pose').dataset.pose; "
                       "if (!p) return null; const q = JSON.parse(p); "
                       f"return Math.hypot(q[0] - {first_pose[0]}, q[1] - {first_pose[1]}) > 50 ? q : null; }}")
            moved = _wait(page, pose_js, timeout=30, what="the camera to move")
            page.screenshot(path=str(ARTIFACTS / "play_browser.png"))  # while the keys are held (HUD lit)
            assert (ARTIFACTS / "play_browser.png").stat().st_size > 1000
            page.keyboard.up("w")
            page.keyboard.up("ArrowRight")
            after = page.evaluate("() => document.getElementById('screen').toDataURL()")
            assert after != before  # the frames changed
            assert moved[4] != first_pose[4]  # ArrowRight turned the camera (yaw)
            # 3. live stats and the minimap are drawn
            fps = page.inner_text("#fps")
            latency = page.inner_text("#latency")
            assert fps.isdigit()
            assert latency.endswith("ms"), latency
            minimap_lit = page.evaluate(
                "() => { const c = document.getElementById('minimap'); const d = c.getContext('2d')"
                ".getImageData(0, 0, c.width, c.height).data; let n = 0; "
                "for (let i = 0; i < d.length; i += 4) if (d[i + 2] > 200 && d[i] < 150) n++; return n; }")
            assert minimap_lit > 0  # the bright path
            # 4. reset starts a new episode from the start pose
            page.evaluate("() => document.exitPointerLock()")  # (Esc for a user) the click went to pointer lock
            page.click("#reset")
            _wait(page, "() => window.worldstream.episode >= 2", what="the reset clip")
            assert not console_errors, console_errors
        finally:
            browser.close()


def test_page_pipelines_actions_frames_in_order(live_server):
    """The page keeps the server's pipeline full: 2 actions in flight, the DiT of clip k+1 overlaps the
    decoding of clip k on the server, and every frame arrives and is shown once, in order.

    fps 64 makes the (random-init nano, async decode) server slower than real time, the regime where
    the page must keep several actions outstanding; faster servers are only asked one round trip ahead.
    """
    from playwright.sync_api import sync_playwright

    srv = live_server(session_overrides={"async_decode": True, "fps": 64})
    n_clips = 6  # action clips to watch
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page()
            console_errors = []
            page.on("console", lambda m: console_errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: console_errors.append(str(e)))
            page.goto(srv.http + "/")
            _wait(page, "() => window.worldstream.framesDrawn >= 1", what="the reset clip")
            page.keyboard.down("w")
            _wait(page, f"() => window.worldstream.clipLog.filter(c => c.seq !== null).length >= {n_clips}",
                  timeout=40, what=f"{n_clips} action clips")
            page.click("#pause")  # no new requests: let the pipeline and the playback buffer drain
            page.keyboard.up("w")
            _wait(page, "() => { const S = window.worldstream; return S.inFlight.length === 0 && S.queue.length "
                  "=== 0 && S.decoding === 0 && S.framesLeft === 0; }", what="the pipeline to drain")
            S = page.evaluate("() => { const S = window.worldstream; return {hello: S.hello, peak: S.inFlightPeak,"
                              " max: S.maxInFlight, log: S.clipLog, gaps: S.gaps, order: S.orderErrors, "
                              "skipped: S.skippedFrames, drawn: S.framesDrawn, sent: S.actionsSent, "
                              "lat: S.latencies, inflight: document.getElementById('inflight').textContent}; }")
            st = srv.status()["per_session"][0]
            assert not console_errors, console_errors
        finally:
            browser.close()
    # 1. the page read the pipeline depth from hello and filled it, never more
    depth = srv.state.session_cfg.decode_queue_size
    assert S["hello"]["max_in_flight"] == depth == S["max"] == 2
    assert S["peak"] == depth, f"at most {S['peak']} actions were in flight at once; expected {depth}"
    assert S["inflight"] == f"0/{depth}"  # the HUD
    # ... so the server sampled the next clip while the previous one decoded, and merged nothing
    assert st["overlapped_clips"] >= 1, st
    log = S["log"]
    assert all(c["coalesced"] == 0 for c in log), log
    # actions in flight as a clip arrived (its own included): the next one had already been sent
    assert max(c["in_flight"] for c in log) == depth
    # 2. every clip arrived, in order, contiguous; nothing dropped by the server or skipped by the page
    assert [c["clip"] for c in log] == list(range(len(log))) and all(c["episode"] == 1 for c in log)
    for a, b in zip(log, log[1:]):
        assert b["frame_start"] == a["frame_start"] + a["n_frames"], (a, b)
    assert [c["seq"] for c in log[1:]] == list(range(1, S["sent"] + 1))  # one clip per action, in order
    assert len(log) == st["clips_generated"] and st["dropped_frames"] == 0 and log[-1]["dropped_frames"] == 0
    assert S["gaps"] == 0 and S["order"] == 0 and S["skipped"] == 0
    assert S["drawn"] == log[-1]["frame_start"] + log[-1]["n_frames"]  # every frame shown exactly once
    assert len(S["lat"]) >= n_clips - 1 and all(v > 0 for v in S["lat"])
