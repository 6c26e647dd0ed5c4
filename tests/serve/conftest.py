"""Fixtures for the play server: a real uvicorn server on a free port, in a thread, with the real
WorldSession on the shipped (or random-init) nano bundle, and a websocket client helper."""

from __future__ import annotations

import dataclasses
import json
import threading
import time
import warnings

import pytest

SESSION_CFG_OVERRIDES: dict = {}  # keep the shipped nano schedule: tests run exactly what users run


@pytest.fixture(scope="session")
def bundle():
    from worldstream.infer.model_bundle import RandomInitWarning, load_bundle

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RandomInitWarning)
        return load_bundle(None)


@pytest.fixture(scope="session")
def session_cfg():
    from worldstream.infer.config import preset

    return preset("nano").replace(**SESSION_CFG_OVERRIDES)


@pytest.fixture(scope="session")
def start_cache(tmp_path_factory):
    return tmp_path_factory.mktemp("start_frames")


class LiveServer:
    """uvicorn.Server running `app` on 127.0.0.1:<free port> in a daemon thread."""

    def __init__(self, app, cfg):
        import uvicorn

        from worldstream.serve.server import bind_socket, uvicorn_config

        self.app = app
        cfg = dataclasses.replace(cfg, port=0)
        self.sock = bind_socket(cfg)  # the same listening socket `worldstream play` uses
        self.server = uvicorn.Server(uvicorn_config(app, cfg))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 20
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.02)
        self.port = self.server.servers[0].sockets[0].getsockname()[1]
        self.http = f"http://127.0.0.1:{self.port}"
        self.ws_url = f"ws://127.0.0.1:{self.port}/ws"

    @property
    def state(self):
        return self.app.state.play

    def status(self) -> dict:
        import httpx

        return httpx.get(self.http + "/api/status", timeout=5).json()

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=10)
        self.sock.close()


@pytest.fixture
def live_server(bundle, session_cfg, start_cache):
    """Factory: live_server(session_overrides=None, **ServeConfig overrides) -> LiveServer (stopped at
    teardown); session_overrides change the SessionConfig (e.g. async_decode=True)."""
    from worldstream.serve.server import ServeConfig, create_app

    servers = []

    def make(session_overrides: dict | None = None, **overrides) -> LiveServer:
        cfg = ServeConfig(cache_dir=start_cache, prerender_builtins=False, **overrides)
        sc = session_cfg.replace(**(session_overrides or {}))
        srv = LiveServer(create_app(bundle, sc, cfg), cfg)
        servers.append(srv)
        return srv

    yield make
    for s in servers:
        s.stop()


class Client:
    """A websocket client speaking the play protocol (sync websockets)."""

    def __init__(self, url: str, **kwargs):
        from websockets.sync.client import connect

        kwargs.setdefault("proxy", None)
        kwargs.setdefault("compression", None)
        # NOTE websockets 17 wants connect() as a context manager; enter it by hand, exit in close()
        self._cm = connect(url, **kwargs)
        self.ws = self._cm.__enter__()
        self.seq = 0

    def send(self, obj) -> None:
        self.ws.send(obj if isinstance(obj, str | bytes) else json.dumps(obj))

    def recv_json(self, timeout: float = 20.0) -> dict:
        msg = self.ws.recv(timeout=timeout)
        assert isinstance(msg, str), f"expected a JSON text message, got {len(msg)} binary bytes"
        return json.loads(msg)

    def expect(self, type_: str, timeout: float = 20.0) -> dict:
        """The next message of `type_` (hello/pong/error/... of other types before it are skipped)."""
        deadline = time.monotonic() + timeout
        while True:
            msg = self.recv_json(max(0.01, deadline - time.monotonic()))
            if msg["type"] == type_:
                return msg

    def recv_clip(self, timeout: float = 20.0) -> tuple[dict, list[bytes]]:
        """The next clip: its header and its n_frames JPEG payloads (framing checked)."""
        header = self.expect("clip", timeout)
        frames = []
        for _ in range(header["n_frames"]):
            data = self.ws.recv(timeout=timeout)
            assert isinstance(data, bytes), f"expected a binary frame, got text {data[:80]!r}"
            frames.append(data)
        return header, frames

    def reset(self, image="builtin:green_park", prompt=None) -> None:
        self.send({"type": "reset", "prompt": prompt, "image": image})

    def action(self, keys=(), mouse=(0.0, 0.0)) -> int:
        self.seq += 1
        self.send({"type": "action", "keys": list(keys), "mouse": list(mouse), "seq": self.seq,
                   "t_client": time.time()})
        return self.seq

    def close(self) -> None:
        self._cm.__exit__(None, None, None)


@pytest.fixture
def client():
    """Factory: client(url, **connect kwargs) -> Client (closed at teardown)."""
    clients = []

    def make(url: str, **kwargs) -> Client:
        c = Client(url, **kwargs)
        clients.append(c)
        return c

    yield make
    for c in clients:
        try:
            c.close()
        except Exception:
            pass
