"""`worldstream play`: protocol validation (hostile input), the terminal key parser, and a real uvicorn
server with real WorldSessions (nano bundle) driven by websocket clients."""

from __future__ import annotations

import base64
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from worldstream.serve import protocol
from worldstream.serve.protocol import ActionMsg, ProtocolConfig, ProtocolError, parse_client_message
from worldstream.serve.terminal import action_arrays, parse_line

REPO = Path(__file__).resolve().parents[2]


def _code(data, cfg=None, builtins=None) -> str:
    with pytest.raises(ProtocolError) as e:
        parse_client_message(data, cfg, builtins)
    assert str(e.value)  # every rejection explains itself
    return e.value.code


def _action(**over) -> str:
    msg = {"type": "action", "keys": ["W"], "mouse": [0.0, 0.1], "seq": 1}
    msg.update(over)
    return json.dumps(msg)


def _png_data_url(w: int, h: int, fmt: str = "PNG") -> str:
    buf = io.BytesIO()
    Image.new("RGB", (w, h), (10, 200, 30)).save(buf, format=fmt)
    mime = "image/png" if fmt == "PNG" else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(buf.getvalue()).decode()


# ---- protocol ------------------------------------------------------------------------------------


def test_action_parsed_normalised_and_clamped():
    msg = parse_client_message(_action(keys=["D", "W", "W"], mouse=[-3, 0.25], seq=7, t_client=12.5))
    assert isinstance(msg, ActionMsg)
    assert msg.keys == ("W", "D")  # MG3 order, duplicates merged
    assert msg.mouse == (-0.5, 0.25)  # clamped to +-mouse_limit, not rejected
    assert msg.seq == 7 and msg.t_client == 12.5
    np.testing.assert_array_equal(msg.keyboard(), [1, 0, 0, 1, 0, 0])
    assert msg.mouse_array().dtype == np.float32


@pytest.mark.parametrize("data, code", [
    (b'{"type":"ping"}', "bad_message"),  # binary frames are refused
    ("not json at all", "bad_json"),
    ('{"type": "action", ', "bad_json"),
    ("[1, 2, 3]", "bad_message"),
    ('"action"', "bad_message"),
    ('{"type": "teleport"}', "unknown_type"),
    ('{"type": 5}', "unknown_type"),
    ("{}", "unknown_type"),
    ('{"type": "action", "keys": [], "mouse": [NaN, 0], "seq": 1}', "bad_json"),  # NaN is not JSON
    ('{"type": "action", "keys": [], "mouse": [Infinity, 0], "seq": 1}', "bad_json"),
    ('{"type": "action", "keys": [], "mouse": [1e999, 0], "seq": 1}', "bad_field"),  # overflows to inf
    ("[" * 100_000 + "]" * 100_000, "too_large"),
])
def test_hostile_transport_and_json(data, code):
    assert _code(data, ProtocolConfig(max_message_bytes=150_000)) == code


def test_deep_nesting_is_an_error_not_a_crash():
    assert _code("[" * 50_000 + "]" * 50_000) in ("bad_json", "bad_message")


@pytest.mark.parametrize("over, needle", [
    ({"keys": "W"}, "action.keys must be a list"),
    ({"keys": ["W", 3]}, "unknown key 3"),
    ({"keys": ["Jump"]}, "unknown key 'Jump'"),
    ({"keys": ["w"]}, "unknown key 'w'"),
    ({"keys": ["W"] * 7}, "at most 6"),
    ({"mouse": [0.1]}, "a list of 1"),
    ({"mouse": "up"}, "got str"),
    ({"mouse": ["0.1", 0]}, "mouse[0] must be a number"),
    ({"mouse": [True, 0]}, "mouse[0] must be a number, got bool"),
    ({"mouse": [None, 0]}, "got NoneType"),
    ({"seq": -1}, "action.seq"),
    ({"seq": 1.5}, "action.seq"),
    ({"seq": True}, "action.seq"),
    ({"seq": 2**60}, "action.seq"),
    ({"t_client": "now"}, "t_client must be a number"),
    ({"teleport": [0, 0]}, "unknown keys ['teleport']"),
])
def test_action_wrong_types_and_unknown_keys(over, needle):
    with pytest.raises(ProtocolError, match=None) as e:
        parse_client_message(_action(**over))
    assert e.value.code == "bad_field" and e.value.ref == "action"
    assert needle in str(e.value), str(e.value)


def test_missing_fields_and_small_message_limit():
    with pytest.raises(ProtocolError, match=r"missing \['mouse', 'seq'\]"):
        parse_client_message('{"type": "action", "keys": []}')
    padded = json.dumps({"type": "ping", "t_client": 1.0}) + " " * 5000  # valid JSON, but a ping is tiny
    assert _code(padded) == "too_large"
    assert _code(_action(), ProtocolConfig(max_message_bytes=20)) == "too_large"


def test_reset_images_and_prompt():
    builtins = frozenset({"green_park"})
    r = parse_client_message(json.dumps({"type": "reset", "image": "builtin:green_park"}), builtins=builtins)
    assert r.image_kind == "builtin" and r.builtin == "green_park" and r.prompt is None
    r = parse_client_message(json.dumps({"type": "reset", "prompt": "a park", "image": _png_data_url(40, 30)}))
    assert r.image_kind == "upload" and r.image.shape == (30, 40, 3) and r.image.dtype == np.uint8
    assert r.image[0, 0].tolist() == [10, 200, 30]
    r = parse_client_message(json.dumps({"type": "reset", "image": _png_data_url(8, 8, "JPEG")}))
    assert r.image.shape == (8, 8, 3)
    assert parse_client_message('{"type": "reset"}').image_kind == "none"


@pytest.mark.parametrize("image, code, needle", [
    ("builtin:moon_base", "bad_image", "unknown built-in 'moon_base'"),
    ("http://example.com/x.png", "bad_image", "data URL"),
    ("data:image/gif;base64,R0lGODlh", "bad_image", "'image/gif' not accepted"),
    ("data:image/png;base64,@@@not-base64@@@", "bad_image", "invalid base64"),
    ("data:image/png;base64," + base64.b64encode(b"\x89PNG garbage").decode(), "bad_image", "cannot decode"),
    (7, "bad_field", "reset.image must be a string"),
])
def test_reset_hostile_images(image, code, needle):
    with pytest.raises(ProtocolError) as e:
        parse_client_message(json.dumps({"type": "reset", "image": image}), builtins=frozenset({"green_park"}))
    assert e.value.code == code and needle in str(e.value), str(e.value)


def test_reset_oversized_image_and_decompression_bomb():
    cfg = ProtocolConfig(max_image_bytes=2000, max_image_pixels=100 * 100)
    noisy = io.BytesIO()
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), np.uint8)).save(noisy, format="PNG")
    url = "data:image/png;base64," + base64.b64encode(noisy.getvalue()).decode()
    with pytest.raises(ProtocolError, match="larger than 2000 bytes") as e:
        parse_client_message(json.dumps({"type": "reset", "image": url}), cfg)
    assert e.value.code == "too_large"
    # a tiny file that claims many pixels: refused from its header, before decoding
    bomb = _png_data_url(400, 400)
    assert len(bomb) < 2000
    with pytest.raises(ProtocolError, match="400x400 pixels") as e:
        parse_client_message(json.dumps({"type": "reset", "image": bomb}), cfg)
    assert e.value.code == "too_large"
    with pytest.raises(ProtocolError, match="prompt has 1001 characters"):
        parse_client_message(json.dumps({"type": "reset", "prompt": "x" * 1001}))
    with pytest.raises(ProtocolError, match="prompt must be a string"):
        parse_client_message(json.dumps({"type": "reset", "prompt": ["a"]}))


def test_coalesce_unions_keys_and_keeps_latest_mouse():
    a = ActionMsg(keys=("W",), mouse=(0.0, 0.1), seq=1, t_client=1.0)
    b = ActionMsg(keys=("D",), mouse=(0.1, 0.0), seq=2, t_client=2.0)
    c = protocol.coalesce(protocol.coalesce(None, a), b)
    assert c.keys == ("W", "D") and c.mouse == (0.1, 0.0) and c.seq == 2 and c.t_client == 2.0


def test_server_messages_are_strict_json():
    with pytest.raises(ValueError):
        protocol.dumps({"x": float("nan")})
    err = ProtocolError("bad_field", "action.seq is wrong", "action").to_message()
    assert err == {"type": "error", "code": "bad_field", "message": "action.seq is wrong", "ref": "action"}


def test_terminal_keys():
    assert parse_line("wl\n") == ("W", "L")
    assert parse_line(" l , W ") == ("W", "L")
    assert parse_line("Q") == ("Q", "")
    assert parse_line("") == ("", "")
    assert parse_line("QUIT") is None
    for bad, needle in [("wx", "unknown key 'X'"), ("ws", "two movement keys"), ("il", "two mouse keys")]:
        with pytest.raises(ValueError, match=needle):
            parse_line(bad)
    kb, mouse = action_arrays("A", "I")
    np.testing.assert_array_equal(kb, [0, 0, 1, 0, 0, 0])
    np.testing.assert_allclose(mouse, [0.1, 0.0])  # MG3: I = pitch +0.1
    kb, mouse = action_arrays("", "")
    assert not kb.any() and not mouse.any()


# ---- server (real uvicorn, real WorldSession) -------------------------------------------------------


def _decode(jpeg: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(jpeg)).convert("RGB"))


def test_http_page_static_and_headers(live_server):
    import httpx

    srv = live_server()
    r = httpx.get(srv.http + "/", timeout=10)
    assert r.status_code == 200 and "<canvas id=\"screen\"" in r.text
    assert "script-src 'self'" in r.headers["content-security-policy"]
    for path in ("/static/app.js", "/static/style.css"):
        assert httpx.get(srv.http + path, timeout=10).status_code == 200
    # no external resources in the page (no CDN): every src/href is local
    html = r.text + httpx.get(srv.http + "/static/app.js", timeout=10).text
    assert "http://" not in html.replace("http://${", "") and "https://" not in html
    assert httpx.get(srv.http + "/builtin/moon_base.png", timeout=10).status_code == 404
    png = httpx.get(srv.http + "/builtin/green_park.png", timeout=20)
    assert png.status_code == 200 and _decode(png.content).shape[:2] == (srv.state.session_cfg.height,
                                                                         srv.state.session_cfg.width)
    assert httpx.get(srv.http + "/builtin/green_park.json", timeout=10).json()["prompt"]


def test_reset_then_action_moves_the_camera(live_server, client):
    srv = live_server()
    c = client(srv.ws_url)
    hello = c.expect("hello")
    sc = srv.state.session_cfg
    assert (hello["height"], hello["width"], hello["fps"]) == (sc.height, sc.width, sc.fps)
    assert "green_park" in hello["builtins"]
    c.reset()
    h0, frames0 = c.recv_clip()
    assert h0["reset"] and h0["clip"] == 0 and h0["episode"] == 1 and h0["seq"] is None
    assert len(frames0) == h0["n_frames"] >= 1 and len(h0["poses"]) == h0["n_frames"]
    assert _decode(frames0[-1]).shape == (sc.height, sc.width, 3)
    # hostile messages mid-session: an error each, the session goes on
    c.send("{not json")
    assert c.expect("error")["code"] == "bad_json"
    c.send(b"\x00\x01")
    assert c.expect("error")["code"] == "bad_message"
    c.send({"type": "action", "keys": ["W"], "mouse": [float("nan"), 0], "seq": 1})  # json.dumps writes NaN
    assert c.expect("error")["code"] == "bad_json"
    seq = c.action(keys=["W"])
    h1, frames1 = c.recv_clip()
    assert h1["seq"] == seq and h1["clip"] == 1 and h1["keys"] == ["W"] and not h1["reset"]
    assert len(frames1) == h1["n_frames"] == sc.first_step_frames
    assert h1["frame_start"] == h0["frame_start"] + h0["n_frames"]
    p0, p1 = np.asarray(h0["poses"][-1]), np.asarray(h1["poses"][-1])
    # W moves forward along the yaw direction: 12.35 pose units per frame (MG3 kinematics)
    assert np.hypot(*(p1[:2] - p0[:2])) > 10 * 12.35 * 0.9
    assert set(h1["timings"]) >= {"generate_s", "encode_s", "queue_s"}
    assert h1["timings"]["generate_s"] > 0
    assert isinstance(h1["memory"], dict)
    # turning right with the mouse changes the yaw, not the position
    c.action(mouse=[0.0, 0.1])
    h2, frames2 = c.recv_clip()
    p2 = np.asarray(h2["poses"])  # [16, 5]
    assert len(frames2) == sc.step_frames
    assert 0 < (p2[-1, 4] - p1[4]) % 360 < 1.5 * sc.step_frames + 1.6
    # NOTE frame k's action moves the camera to frame k+1 (MG3), so only the first frame of the clip
    # still carries the previous clip's W step; from there on the position stays
    np.testing.assert_allclose(p2[1:, :3], np.repeat(p2[:1, :3], len(p2) - 1, 0), atol=1e-3)
    assert not np.array_equal(_decode(frames1[-1]), _decode(frames2[-1]))
    c.send({"type": "ping", "t_client": 3.5})
    pong = c.expect("pong")
    assert pong["t_client"] == 3.5 and pong["stats"]["clips_generated"] == 3


def test_action_before_reset_and_upload_reset(live_server, client):
    srv = live_server()
    c = client(srv.ws_url)
    c.expect("hello")
    c.action(keys=["W"])
    err = c.expect("error")
    assert err["code"] == "not_reset" and err["ref"] == "action"
    # larger than our limit but under uvicorn's hard one: an error, and the connection stays open
    c.send(json.dumps({"type": "reset", "prompt": "x" * (srv.state.cfg.protocol.max_message_bytes + 10)}))
    err = c.expect("error")
    assert err["code"] == "too_large"
    c.reset(image=_png_data_url(64, 48), prompt="a green wall")
    seq = c.action(keys=["A"])  # sent while the reset is still generating: kept, served next
    h, frames = c.recv_clip()
    assert h["reset"] and len(frames) == h["n_frames"]
    h, frames = c.recv_clip()
    assert h["seq"] == seq and h["keys"] == ["A"] and len(frames) == h["n_frames"]


def test_two_sessions_are_isolated(live_server, client):
    srv = live_server(max_sessions=2)
    a, b = client(srv.ws_url), client(srv.ws_url)
    ha, hb = a.expect("hello"), b.expect("hello")
    assert ha["session"] != hb["session"]
    a.reset()
    b.reset(image=None)  # no image: the first built-in (green_park, as A)
    (ha0, fa0), (hb0, fb0) = a.recv_clip(), b.recv_clip()
    np.testing.assert_allclose(ha0["poses"][-1], hb0["poses"][-1])  # same start
    assert fa0 == fb0
    a.action(keys=["W"])
    b.action(keys=[])
    (ha1, _), (hb1, _) = a.recv_clip(), b.recv_clip()
    pa, pb = np.asarray(ha1["poses"][-1]), np.asarray(hb1["poses"][-1])
    assert np.hypot(*(pa[:2] - np.asarray(ha0["poses"][-1])[:2])) > 100  # A walked
    np.testing.assert_allclose(pb, hb0["poses"][-1], atol=1e-3)  # B stood still
    a.action(keys=["W"])  # A again; B's next clip still continues from B's own state
    b.action(keys=["S"])
    (ha2, _), (hb2, _) = a.recv_clip(), b.recv_clip()
    assert ha2["clip"] == hb2["clip"] == 2
    step = lambda h0, h1: np.asarray(h1["poses"][-1])[:2] - np.asarray(h0["poses"][-1])[:2]
    da, db = step(ha1, ha2), step(hb1, hb2)
    assert np.linalg.norm(da) > 100 and np.linalg.norm(db) > 100
    assert da @ db < 0  # A went on forward, B walked back: each from its own pose
    assert srv.status()["sessions"] == 2


def test_session_limit_answers_busy(live_server, client):
    from websockets.exceptions import ConnectionClosed

    srv = live_server(max_sessions=1)
    a = client(srv.ws_url)
    a.expect("hello")
    b = client(srv.ws_url)
    err = b.expect("error")
    assert err["code"] == "busy" and "1 sessions" in err["message"]
    with pytest.raises(ConnectionClosed) as e:
        b.ws.recv(timeout=10)
    assert e.value.rcvd.code == 1013 and "busy" in e.value.rcvd.reason
    a.close()  # the slot frees up when a session ends
    deadline = time.monotonic() + 10
    while srv.status()["sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    c = client(srv.ws_url)
    assert c.expect("hello")["session"] == 1


def test_cross_origin_websocket_refused(live_server, client):
    from websockets.exceptions import ConnectionClosed

    srv = live_server()
    evil = client(srv.ws_url, origin="http://evil.example")
    with pytest.raises(ConnectionClosed) as e:
        evil.ws.recv(timeout=10)
    assert e.value.rcvd.code == 1008
    ok = client(srv.ws_url, origin=srv.http)  # the page's own origin
    assert ok.expect("hello")["type"] == "hello"


def test_slow_client_gets_clips_dropped_not_an_unbounded_queue(live_server, client):
    # a small kernel send buffer (the production default holds ~1-2 clips) makes the test quick
    srv = live_server(send_queue_clips=1, socket_send_buffer=16 * 1024)
    # a client that stops reading: tiny socket receive buffer, and the library buffers one message
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 2048)
    sock.connect(("127.0.0.1", srv.port))
    c = client(srv.ws_url, sock=sock, max_queue=1)
    c.reset()
    n_actions, max_queued = 6, 0
    deadline = time.monotonic() + 60
    for i in range(n_actions):
        c.action(keys=["W"] if i % 2 else ["D"])
        # wait until this action's clip is generated (the generator never waits for the socket)
        while time.monotonic() < deadline:
            st = srv.status()["per_session"][0]
            max_queued = max(max_queued, st["queued_clips"])
            if st["clips_generated"] >= i + 2 and not st["generating"]:
                break
            time.sleep(0.02)
    st = srv.status()["per_session"][0]
    assert st["clips_generated"] == n_actions + 1, st
    assert max_queued <= 1 and st["queued_clips"] <= 1  # bounded by send_queue_clips
    assert st["dropped_clips"] >= 1 and st["dropped_frames"] >= srv.state.session_cfg.step_frames, st
    # the client catches up: the framing is intact and the newest clip arrives, with the drops reported
    got = []
    while True:
        h, frames = c.recv_clip()
        assert len(frames) == h["n_frames"]
        got.append(h)
        if h["clip"] == n_actions:
            break
    assert got[-1]["dropped_frames"] == st["dropped_frames"]
    assert len(got) < n_actions + 1  # some clips never reached the slow client


def test_async_server_samples_the_next_clip_while_one_decodes(live_server, client):
    from worldstream.infer.session import WorldSession
    from worldstream.serve.server import encode_jpegs

    srv = live_server(session_overrides={"async_decode": True})
    c = client(srv.ws_url)
    assert c.expect("hello")["model"]["async_decode"]
    c.reset()
    h0, f0 = c.recv_clip()
    sess = next(iter(srv.state.sessions.values()))
    worker = sess.world._decoder.pid
    # A, then B once A's DiT runs (not coalesced): B's DiT starts while A decodes in the worker
    msgs = [{"type": "action", "keys": ["W"], "mouse": [0.0, 0.0], "seq": 1},
            {"type": "action", "keys": [], "mouse": [0.0, 0.1], "seq": 2}]
    c.send(msgs[0])
    deadline = time.monotonic() + 30
    while not sess.generating and time.monotonic() < deadline:
        time.sleep(0.005)
    c.send(msgs[1])
    (ha, fa), (hb, fb) = c.recv_clip(), c.recv_clip()
    assert (ha["seq"], hb["seq"]) == (1, 2) and (ha["clip"], hb["clip"]) == (1, 2)
    assert hb["frame_start"] == ha["frame_start"] + ha["n_frames"] and ha["coalesced"] == hb["coalesced"] == 0
    assert sess.overlapped_clips >= 1 and srv.status()["per_session"][0]["decoding"] == 0
    assert {"dit_s", "decode_wait_s", "generate_s"} <= set(hb["timings"])
    # the same frames as a plain synchronous session with the same start and actions
    image, prompt = srv.state.starts.get("green_park")
    ref = WorldSession(srv.state.bundle, srv.state.session_cfg.replace(async_decode=False))
    q = srv.state.cfg.jpeg_quality
    assert encode_jpegs(ref.reset(image, prompt), q) == f0
    for msg, got in zip(msgs, (fa, fb), strict=True):
        a = parse_client_message(json.dumps(msg))
        assert encode_jpegs(ref.step(a.keyboard(), a.mouse_array()), q) == got
    # the connection ends -> its decode worker is stopped
    c.close()
    while srv.status()["sessions"] and time.monotonic() < deadline:
        time.sleep(0.05)
    with pytest.raises(ProcessLookupError):
        os.kill(worker, 0)


def test_cli_registers_play():
    from worldstream.cli import build_parser

    args = build_parser().parse_args(["play", "--terminal", "--port", "0"])
    assert args._module == "worldstream.serve.play_cmd" and args.terminal and args.host == "127.0.0.1"


def test_terminal_mode_subprocess(tmp_path, start_cache):
    out = tmp_path / "play"
    env = dict(os.environ, PYTHONWARNINGS="ignore")
    lines = "wl\nbogus\n\nquit\n"  # forward + look right, an error, the same again, stop
    t0 = time.monotonic()
    proc = subprocess.run(
        [sys.executable, "-m", "worldstream", "play", "--terminal", "--out", str(out),
         "--image", "builtin:green_park", "--cache-dir", str(start_cache)],
        input=lines, capture_output=True, text=True, timeout=120, cwd=REPO, env=env,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "error: unknown key 'B'" in proc.stdout
    mp4s = sorted(p.name for p in out.glob("clip_*.mp4"))
    assert mp4s == ["clip_0000.mp4", "clip_0001.mp4", "clip_0002.mp4"], (mp4s, proc.stdout)
    assert (out / "latest.png").is_file() and not list(out.glob(".*tmp*"))
    poses = [line for line in proc.stdout.splitlines() if line.startswith("clip ") and "pose x=" in line]
    yaws = [float(re.search(r"yaw=(-?[\d.]+)", p).group(1)) for p in poses]
    xs = [float(re.search(r"pose x=(-?[\d.]+)", p).group(1)) for p in poses]
    assert len(yaws) == 3 and yaws[2] > yaws[1] > yaws[0]  # L turns right every clip
    assert xs[1] != xs[0]
    import imageio.v3 as iio

    video = iio.imread(out / "clip_0001.mp4")
    assert video.ndim == 4 and video.shape[0] >= 16
    assert time.monotonic() - t0 < 120
