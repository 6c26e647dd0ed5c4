"""The `worldstream play` websocket protocol: message schema, validation, framing.

Notable:
* Pure functions and dataclasses, no I/O and no server: the whole hostile-input surface (size,
  encoding, JSON, types, unknown keys, NaN, oversized images, decompression bombs) is checked here
  and tested on its own. Every rejection is a `ProtocolError(code, message)` whose message names
  the field and says what was expected and what was given; the server turns it into an `error`
  message and keeps the session.
* Client -> server: JSON text messages `reset`, `action`, `ping` (see `parse_client_message`).
  Server -> client: JSON text messages (`hello`, `clip`, `pong`, `error`, `status`) and binary
  JPEG frames. Framing: a `clip` header with `n_frames = N` is followed by exactly N binary
  messages, the clip's frames in order (the server sends a clip as one unit, so dropping whole
  clips for a slow client never breaks the framing). docs/play.md documents all of it.
* Keys are MG3's keyboard vocabulary [W, S, A, D, Space, Attack] (worldstream/data/actions.py);
  mouse is [pitch, yaw] per-frame deltas in MG3 units (0.1 = 1.5 deg/frame), clamped here to
  +-`mouse_limit` (the data engine's fastest turn), never rejected for being large.
* Coalescing (`coalesce`): actions that arrive while a clip is generated merge into one: the
  union of their keys (a tap shorter than a clip is not lost) and the latest mouse, seq, t_client.
"""

from __future__ import annotations

import base64
import binascii
import io
import json
import math
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from worldstream.data.actions import KEYS

PROTOCOL_VERSION = 1
MAX_SEQ = 2**53 - 1  # largest integer a JavaScript number represents exactly
BUILTIN_PREFIX = "builtin:"
DATA_URL_TYPES = {"image/png": "PNG", "image/jpeg": "JPEG"}  # accepted upload types -> PIL format


@dataclass(frozen=True)
class ProtocolConfig:
    max_message_bytes: int = 4 * 2**20  # any text message (a reset carries a base64 image: 4/3 of its bytes)
    max_small_message_bytes: int = 4096  # action / ping messages: a few hundred bytes in practice
    max_image_bytes: int = 3 * 2**20  # decoded upload (PNG/JPEG file) size
    max_image_pixels: int = 4096 * 4096  # checked from the header, before decoding (decompression bombs)
    max_prompt_chars: int = 1000
    mouse_limit: float = 0.5  # |pitch|,|yaw| per frame: the data engine's fastest turn (AgentConfig)
    max_keys: int = len(KEYS)

    def __post_init__(self) -> None:
        for name in ("max_message_bytes", "max_small_message_bytes", "max_image_bytes", "max_image_pixels",
                     "max_prompt_chars", "max_keys"):
            v = getattr(self, name)
            if isinstance(v, bool) or not isinstance(v, int) or v <= 0:
                raise ValueError(f"ProtocolConfig.{name} must be a positive int, got {v!r}")
        if not (isinstance(self.mouse_limit, int | float) and math.isfinite(self.mouse_limit)
                and self.mouse_limit > 0):
            raise ValueError(f"ProtocolConfig.mouse_limit must be a positive finite number, "
                             f"got {self.mouse_limit!r}")


class ProtocolError(ValueError):
    """A client message that cannot be accepted; `code` is machine-readable, str(self) human-readable."""

    def __init__(self, code: str, message: str, ref: str | None = None):
        super().__init__(message)
        self.code = code
        self.ref = ref  # the offending message's type, when known

    def to_message(self) -> dict[str, Any]:
        return error_message(self.code, str(self), ref=self.ref)


# ---- client -> server messages -------------------------------------------------------------------


@dataclass(frozen=True)
class ResetMsg:
    prompt: str | None  # None: the built-in image's own prompt (or an empty prompt)
    image_kind: Literal["none", "builtin", "upload"]
    builtin: str | None = None  # name for image_kind == "builtin"
    image: np.ndarray | None = field(default=None, repr=False)  # uint8 [H,W,3] for "upload"
    type: str = "reset"


@dataclass(frozen=True)
class ActionMsg:
    keys: tuple[str, ...]  # sorted in KEYS order, no duplicates
    mouse: tuple[float, float]  # (pitch, yaw), clamped to +-mouse_limit
    seq: int
    t_client: float | None = None
    type: str = "action"

    def keyboard(self) -> np.ndarray:
        """Multi-hot [6] float32 in MG3 order [W, S, A, D, Space, Attack]."""
        kb = np.zeros(len(KEYS), np.float32)
        for k in self.keys:
            kb[KEYS.index(k)] = 1.0
        return kb

    def mouse_array(self) -> np.ndarray:
        return np.asarray(self.mouse, np.float32)  # [2]


@dataclass(frozen=True)
class PingMsg:
    t_client: float | None = None
    type: str = "ping"


ClientMsg = ResetMsg | ActionMsg | PingMsg

_FIELDS = {
    "reset": ({"type"}, {"prompt", "image"}),
    "action": ({"type", "keys", "mouse", "seq"}, {"t_client"}),
    "ping": ({"type"}, {"t_client"}),
}  # type -> (required keys, optional keys)


def _finite_number(v: Any, name: str, ref: str) -> float:
    # NOTE bool is an int subclass: true/false must not pass as 1/0
    if isinstance(v, bool) or not isinstance(v, int | float):
        raise ProtocolError("bad_field", f"{ref}.{name} must be a number, got {type(v).__name__}", ref)
    f = float(v)
    if not math.isfinite(f):
        raise ProtocolError("bad_field", f"{ref}.{name} must be finite, got {v!r}", ref)
    return f


def _parse_action(obj: dict, cfg: ProtocolConfig) -> ActionMsg:
    keys = obj["keys"]
    if not isinstance(keys, list):
        raise ProtocolError("bad_field", f"action.keys must be a list of key names, got "
                            f"{type(keys).__name__}", "action")
    if len(keys) > cfg.max_keys:
        raise ProtocolError("bad_field", f"action.keys has {len(keys)} entries; at most {cfg.max_keys}",
                            "action")
    for k in keys:
        if not isinstance(k, str) or k not in KEYS:
            raise ProtocolError("bad_field", f"action.keys: unknown key {k!r}; expected names from "
                                f"{list(KEYS)}", "action")
    mouse = obj["mouse"]
    if not isinstance(mouse, list) or len(mouse) != 2:
        shape = f"a list of {len(mouse)}" if isinstance(mouse, list) else type(mouse).__name__
        raise ProtocolError("bad_field", f"action.mouse must be [pitch, yaw] (2 numbers), got {shape}",
                            "action")
    lim = float(cfg.mouse_limit)
    m = tuple(min(lim, max(-lim, _finite_number(v, f"mouse[{i}]", "action"))) for i, v in enumerate(mouse))
    seq = obj["seq"]
    if isinstance(seq, bool) or not isinstance(seq, int) or not 0 <= seq <= MAX_SEQ:
        raise ProtocolError("bad_field", f"action.seq must be an integer in [0, 2^53), got {seq!r}", "action")
    t = obj.get("t_client")
    t = None if t is None else _finite_number(t, "t_client", "action")
    return ActionMsg(keys=tuple(k for k in KEYS if k in keys), mouse=(m[0], m[1]), seq=seq, t_client=t)


def decode_data_url(url: str, cfg: ProtocolConfig) -> np.ndarray:
    """'data:image/png;base64,...' (or image/jpeg) -> uint8 [H,W,3]; size and pixel count limited."""
    from PIL import Image

    head, sep, payload = url.partition(",")
    if not sep or not head.startswith("data:") or not head.endswith(";base64"):
        raise ProtocolError("bad_image", "reset.image must be 'builtin:<name>' or a base64 data URL "
                            "('data:image/png;base64,...' or image/jpeg)", "reset")
    mime = head[len("data:"):-len(";base64")].lower()
    if mime not in DATA_URL_TYPES:
        raise ProtocolError("bad_image", f"reset.image: type {mime!r} not accepted; expected one of "
                            f"{sorted(DATA_URL_TYPES)}", "reset")
    if len(payload) > (cfg.max_image_bytes * 4) // 3 + 4:  # base64 length bound, before decoding
        raise ProtocolError("too_large", f"reset.image is larger than {cfg.max_image_bytes} bytes", "reset")
    try:
        raw = base64.b64decode(payload, validate=True)
    except (binascii.Error, ValueError):
        raise ProtocolError("bad_image", "reset.image: invalid base64 payload", "reset") from None
    if len(raw) > cfg.max_image_bytes:
        raise ProtocolError("too_large", f"reset.image is {len(raw)} bytes; at most {cfg.max_image_bytes}",
                            "reset")
    try:
        img = Image.open(io.BytesIO(raw), formats=[DATA_URL_TYPES[mime]])
        w, h = img.size  # from the header: nothing decoded yet
        if w * h > cfg.max_image_pixels:
            raise ProtocolError("too_large", f"reset.image is {w}x{h} pixels; at most {cfg.max_image_pixels} "
                                "pixels", "reset")
        arr = np.asarray(img.convert("RGB"), dtype=np.uint8)
    except ProtocolError:
        raise
    except Exception as e:  # PIL raises many types for corrupt files
        raise ProtocolError("bad_image", f"reset.image: cannot decode {mime}: {e}", "reset") from None
    return arr  # [H,W,3]


def _parse_reset(obj: dict, cfg: ProtocolConfig, builtins: frozenset[str] | None) -> ResetMsg:
    prompt = obj.get("prompt")
    if prompt is not None:
        if not isinstance(prompt, str):
            raise ProtocolError("bad_field", f"reset.prompt must be a string, got {type(prompt).__name__}",
                                "reset")
        if len(prompt) > cfg.max_prompt_chars:
            raise ProtocolError("bad_field", f"reset.prompt has {len(prompt)} characters; at most "
                                f"{cfg.max_prompt_chars}", "reset")
    image = obj.get("image")
    if image is None:
        return ResetMsg(prompt=prompt, image_kind="none")
    if not isinstance(image, str):
        raise ProtocolError("bad_field", f"reset.image must be a string or null, got {type(image).__name__}",
                            "reset")
    if image.startswith(BUILTIN_PREFIX):
        name = image[len(BUILTIN_PREFIX):]
        if builtins is not None and name not in builtins:
            raise ProtocolError("bad_image", f"reset.image: unknown built-in {name!r}; available: "
                                f"{sorted(builtins)}", "reset")
        return ResetMsg(prompt=prompt, image_kind="builtin", builtin=name)
    return ResetMsg(prompt=prompt, image_kind="upload", image=decode_data_url(image, cfg))


def parse_client_message(data: str | bytes, cfg: ProtocolConfig | None = None,
                         builtins: frozenset[str] | None = None) -> ClientMsg:
    """One websocket message from a client -> a validated message, or ProtocolError.

    `data` is the text of a text frame (str) or the payload of a binary frame (bytes; always
    rejected: clients only send JSON text). `builtins` limits `builtin:<name>` images.
    """
    cfg = cfg or ProtocolConfig()
    # 1. transport: text only, bounded size, UTF-8
    if isinstance(data, bytes | bytearray | memoryview):
        raise ProtocolError("bad_message", "binary messages are not accepted; send JSON text")
    if not isinstance(data, str):
        raise ProtocolError("bad_message", f"expected a text message, got {type(data).__name__}")
    # NOTE len(str) <= UTF-8 bytes <= 4 * len(str): check the cheap bound before encoding
    limit = cfg.max_message_bytes
    if len(data) > limit or len(data.encode("utf-8", "surrogatepass")) > limit:
        raise ProtocolError("too_large", f"message is larger than {cfg.max_message_bytes} bytes")
    # 2. JSON object with a known type
    try:
        obj = json.loads(data, parse_constant=_reject_constant)
    except ProtocolError:
        raise
    except (ValueError, RecursionError) as e:
        raise ProtocolError("bad_json", f"message is not valid JSON: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_message", f"message must be a JSON object, got {type(obj).__name__}")
    kind = obj.get("type")
    if not isinstance(kind, str) or kind not in _FIELDS:
        raise ProtocolError("unknown_type", f"message type must be one of {sorted(_FIELDS)}, got {kind!r}")
    if kind != "reset" and len(data) > cfg.max_small_message_bytes:
        raise ProtocolError("too_large", f"{kind} message is {len(data)} bytes; at most "
                            f"{cfg.max_small_message_bytes}", kind)
    # 3. exact key set
    required, optional = _FIELDS[kind]
    missing = sorted(required - obj.keys())
    unknown = sorted(obj.keys() - required - optional)
    if missing:
        raise ProtocolError("bad_field", f"{kind} message is missing {missing}", kind)
    if unknown:
        raise ProtocolError("bad_field", f"{kind} message has unknown keys {unknown[:8]}; allowed "
                            f"{sorted(required | optional)}", kind)
    # 4. fields
    if kind == "action":
        return _parse_action(obj, cfg)
    if kind == "reset":
        return _parse_reset(obj, cfg, builtins)
    t = obj.get("t_client")
    return PingMsg(t_client=None if t is None else _finite_number(t, "t_client", "ping"))


def _reject_constant(name: str) -> None:
    # Python's json accepts NaN / Infinity / -Infinity, which are not JSON
    raise ProtocolError("bad_json", f"message is not valid JSON: {name} is not a JSON value")


def coalesce(pending: ActionMsg | None, new: ActionMsg) -> ActionMsg:
    """Merge an action into one not yet served: union of keys, latest mouse / seq / t_client."""
    if pending is None:
        return new
    keys = tuple(k for k in KEYS if k in pending.keys or k in new.keys)
    return ActionMsg(keys=keys, mouse=new.mouse, seq=new.seq, t_client=new.t_client)


# ---- server -> client messages -------------------------------------------------------------------


def error_message(code: str, message: str, ref: str | None = None) -> dict[str, Any]:
    out: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        out["ref"] = ref
    return out


def dumps(msg: dict[str, Any]) -> str:
    """Server messages as compact JSON (NaN would be invalid JSON for the browser: refuse it)."""
    return json.dumps(msg, separators=(",", ":"), allow_nan=False)
