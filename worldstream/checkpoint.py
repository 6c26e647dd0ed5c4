"""Self-describing checkpoints: a folder with `config.json`, `model.safetensors` and `meta.json`.

* `config.json` = {"type": "<module>.<Class>", "preset": <name or null>, "config": {...dataclass fields...}}.
  Nested dataclasses and tuples round-trip (tuples are rebuilt from the type hints).
* `model.safetensors` = the state dict (tensors sharing storage, e.g. tied weights, are stored as copies).
* `meta.json` = {"step", "recipe", "git_sha", "created", "worldstream_version", ...caller extras}.

Saving is atomic for the folder: everything is written into a temp folder beside the target, fsync'ed, then
renamed into place with os.replace (an existing checkpoint is first renamed aside, and removed afterwards;
foreign files in it, e.g. a MODEL_CARD.md, are carried over). A reader sees the old or the new checkpoint,
never a mix (NOTE: during the two renames the folder is briefly absent).

`from_pretrained(dir, build_fn)` builds the model with its *parameters* on the meta device (no memory, no
random init; buffers and plain tensor attributes such as RoPE tables are still computed normally, like
accelerate's `init_empty_weights(include_buffers=False)`), checks keys and shapes with clear errors, then
assigns the file's tensors (`load_state_dict(assign=True)`): no copy and the file's dtypes.
NOTE assignment unties parameters shared between two modules; a model with tied weights re-ties them itself.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import json
import os
import shutil
import subprocess
import tempfile
import types
import typing
import warnings
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn

CONFIG_FILE, WEIGHTS_FILE, META_FILE = "config.json", "model.safetensors", "meta.json"
SHOW_KEYS = 5  # how many offending keys an error message names
GIT_TIMEOUT_S = 5  # `git rev-parse HEAD` for meta.json; a hung git must not block a save
FOLDER_MODE = 0o755  # checkpoint folders are readable by others, like any `mkdir`


####################################################################################################
# Config <-> JSON


def type_name(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"


def _to_json(value: Any, where: str) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_json(getattr(value, f.name), f"{where}.{f.name}")
                for f in dataclasses.fields(value)}
    if isinstance(value, (tuple, list)):
        return [_to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, Mapping):
        return {str(k): _to_json(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, Path):
        return str(value)
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"config field {where} has a value of type {type(value).__name__} "
                    "that config.json cannot hold")


def config_to_dict(config: Any, preset: str | None = None) -> dict[str, Any]:
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"a checkpoint config must be a dataclass instance, got {type(config).__name__}")
    fields = _to_json(config, type(config).__name__)
    return {"type": type_name(type(config)), "preset": preset, "config": fields}


def _from_json(tp: Any, value: Any, where: str) -> Any:
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if dataclasses.is_dataclass(tp) and isinstance(value, dict):
        return _build(tp, value, where)
    if origin in (typing.Union, types.UnionType):
        if value is None:
            return None
        for arg in args:
            as_dataclass = dataclasses.is_dataclass(arg) and isinstance(value, dict)
            as_sequence = typing.get_origin(arg) in (tuple, list) and isinstance(value, list)
            if as_dataclass or as_sequence:
                return _from_json(arg, value, where)
        return value
    if origin is tuple and isinstance(value, list):
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_from_json(args[0], v, f"{where}[{i}]") for i, v in enumerate(value))
        if args and len(args) != len(value):
            raise ValueError(f"config.json: {where} has {len(value)} entries, expected {len(args)}")
        types_ = args or (Any,) * len(value)
        return tuple(_from_json(a, v, f"{where}[{i}]") for i, (a, v) in enumerate(zip(types_, value)))
    if origin is list and isinstance(value, list):
        return [_from_json(args[0] if args else Any, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is typing.Literal and value not in args:
        raise ValueError(f"config.json: {where} = {value!r} is not one of {args}")
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def _build(cls: type, data: Mapping[str, Any], where: str) -> Any:
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ValueError(f"config.json: {where} has fields {cls.__name__} does not know: "
                         f"{unknown[:SHOW_KEYS]}")
    kwargs, defaulted = {}, []
    for name, f in fields.items():
        if name in data:
            kwargs[name] = _from_json(hints.get(name, Any), data[name], f"{where}.{name}")
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ValueError(f"config.json: {where} lacks the required field {name!r} of {cls.__name__}")
        else:
            defaulted.append(name)
    if defaulted:  # an older checkpoint: new fields get their defaults (nanochat _patch_missing_config_keys)
        warnings.warn(f"config.json: {where} lacks {defaulted[:SHOW_KEYS]}; "
                      f"using the {cls.__name__} defaults", stacklevel=4)
    return cls(**kwargs)


def config_from_dict(data: Mapping[str, Any], expected_type: type | None = None,
                     expected_preset: str | None = None, source: str = CONFIG_FILE) -> Any:
    for key in ("type", "config"):
        if key not in data:
            raise ValueError(f"{source}: not a worldstream checkpoint config (no {key!r} entry)")
    name, preset = data["type"], data.get("preset")
    if expected_type is not None and name != type_name(expected_type):
        raise ValueError(f"{source}: holds a {name} config, expected {type_name(expected_type)}")
    if expected_preset is not None and preset != expected_preset:
        raise ValueError(f"{source}: is a {preset!r} preset checkpoint, expected {expected_preset!r}")
    cls = expected_type
    if cls is None:
        module, _, qual = name.rpartition(".")
        if not module.startswith("worldstream."):  # never import arbitrary modules named by a file
            raise ValueError(f"{source}: config type {name!r} is not a worldstream type; pass expected_type=")
        cls = getattr(importlib.import_module(module), qual, None)
        if cls is None or not dataclasses.is_dataclass(cls):
            raise ValueError(f"{source}: config type {name!r} does not exist in this worldstream version")
    return _build(cls, data["config"], cls.__name__)


def _read_json(path: Path, what: str) -> dict[str, Any]:
    if not path.is_file():
        raise FileNotFoundError(f"{what} not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON ({e})") from e


def _checkpoint_dir(directory: str | os.PathLike) -> Path:
    d = Path(directory)
    if not d.is_dir():
        raise NotADirectoryError(f"checkpoint folder not found: {d}")
    return d


def load_config_json(directory: str | os.PathLike) -> Any:
    """The folder's config.json as parsed JSON (errors name the file); `load_config` builds the dataclass."""
    return _read_json(_checkpoint_dir(directory) / CONFIG_FILE, "checkpoint config")


def load_config(directory: str | os.PathLike, expected_type: type | None = None,
                expected_preset: str | None = None) -> Any:
    """The checkpoint's config dataclass (type/preset checked when expected_* are given)."""
    path = _checkpoint_dir(directory) / CONFIG_FILE
    return config_from_dict(load_config_json(directory), expected_type, expected_preset, str(path))


def load_preset(directory: str | os.PathLike) -> str | None:
    return load_config_json(directory).get("preset")


def load_meta(directory: str | os.PathLike) -> dict[str, Any]:
    return _read_json(_checkpoint_dir(directory) / META_FILE, "checkpoint meta")


####################################################################################################
# Save


def git_sha(repo_dir: str | os.PathLike | None = None) -> str | None:
    """HEAD of the git checkout holding this package (None outside git)."""
    repo_dir = Path(repo_dir) if repo_dir is not None else Path(__file__).resolve().parent
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo_dir, capture_output=True, text=True,
                             timeout=GIT_TIMEOUT_S)
    except (OSError, subprocess.SubprocessError):
        return None
    if out.returncode != 0:
        return None
    return out.stdout.strip() or None


def _version() -> str:
    try:
        from importlib.metadata import version

        return version("worldstream")
    except Exception:  # noqa: BLE001 - not installed as a distribution
        return "unknown"


def _tensors_for_file(model_or_state: nn.Module | Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    state = model_or_state.state_dict() if isinstance(model_or_state, nn.Module) else model_or_state
    out, seen = {}, set()
    for k, v in state.items():
        v = v.detach()
        if v.is_meta:
            raise ValueError(f"cannot save {k!r}: it is on the meta device (weights were never loaded)")
        ptr = v.untyped_storage().data_ptr()
        v = v.clone() if ptr in seen else v  # safetensors refuses tensors that share storage
        seen.add(ptr)
        out[k] = v.contiguous().cpu()
    return out


def _fsync(path: Path) -> None:
    with open(path, "rb") as f:
        os.fsync(f.fileno())


def save_checkpoint(directory: str | os.PathLike, model: nn.Module | Mapping[str, torch.Tensor], config: Any,
                    meta: Mapping[str, Any] | None = None, preset: str | None = None) -> Path:
    """Write `directory` atomically: config.json, model.safetensors, meta.json. Returns the folder path.

    `preset` defaults to `config.preset` or `config.name` if the dataclass has one. `meta` may carry step,
    recipe and anything JSON-serialisable; git_sha, created and worldstream_version are filled in when absent.
    """
    from safetensors.torch import save_file

    directory = Path(directory)
    if directory.exists() and not directory.is_dir():
        raise NotADirectoryError(f"cannot save a checkpoint to {directory}: it is a file")
    if directory.is_dir() and any(directory.iterdir()) and not (directory / CONFIG_FILE).is_file():
        raise FileExistsError(f"refusing to replace {directory}: it is not empty and not a checkpoint folder")
    if preset is None:
        preset = getattr(config, "preset", None) or getattr(config, "name", None)
    cfg_json = config_to_dict(config, preset)
    created = datetime.now(UTC).isoformat(timespec="seconds")
    meta_json = {"step": None, "recipe": None, "git_sha": git_sha(), "created": created,
                 "worldstream_version": _version()}
    meta_json.update(_to_json(dict(meta or {}), "meta"))
    directory.parent.mkdir(parents=True, exist_ok=True)

    tmp = Path(tempfile.mkdtemp(prefix=f".{directory.name}.tmp-", dir=directory.parent))
    tmp.chmod(FOLDER_MODE)  # mkdtemp makes it private (0o700)
    old = None
    try:
        # 1. write everything into the temp folder (carry over foreign files of an existing checkpoint)
        save_file(_tensors_for_file(model), str(tmp / WEIGHTS_FILE), metadata={"format": "pt"})
        (tmp / CONFIG_FILE).write_text(json.dumps(cfg_json, indent=1) + "\n")
        (tmp / META_FILE).write_text(json.dumps(meta_json, indent=1) + "\n")
        if directory.is_dir():
            for p in directory.iterdir():
                if p.name not in (CONFIG_FILE, WEIGHTS_FILE, META_FILE):
                    (shutil.copytree if p.is_dir() else shutil.copy2)(p, tmp / p.name)
        for p in (WEIGHTS_FILE, CONFIG_FILE, META_FILE):
            _fsync(tmp / p)
        # 2. swap folders
        if directory.is_dir():
            old = Path(tempfile.mkdtemp(prefix=f".{directory.name}.old-", dir=directory.parent))
            os.replace(directory, old / directory.name)
        os.replace(tmp, directory)
    except BaseException:
        if old is not None and not directory.exists():  # put the previous checkpoint back
            os.replace(old / directory.name, directory)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    finally:
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    with contextlib.suppress(OSError):
        fd = os.open(directory.parent, os.O_RDONLY)
        os.fsync(fd)
        os.close(fd)
    return directory


####################################################################################################
# Load


@contextlib.contextmanager
def params_on_meta() -> Iterator[None]:
    """Parameters registered inside this context live on the meta device (buffers and plain tensors do not).

    NOTE patches nn.Module.register_parameter for the duration (process-wide): build models one at a time.
    """
    original = nn.Module.register_parameter

    def register(module: nn.Module, name: str, param: nn.Parameter | None) -> None:
        original(module, name, param)
        if param is not None and not param.is_meta:
            p = module._parameters[name]
            module._parameters[name] = type(p)(p.to("meta"), requires_grad=p.requires_grad)

    nn.Module.register_parameter = register
    try:
        yield
    finally:
        nn.Module.register_parameter = original


def check_state_dict(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> None:
    """Raise a clear error if `state` does not fit `model` key for key and shape for shape."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing:
        raise KeyError(f"{source} lacks {len(missing)} key(s) the model expects, e.g. {missing[:SHOW_KEYS]}"
                       + (f"; it has {len(unexpected)} unknown key(s), e.g. {unexpected[:SHOW_KEYS]}"
                          if unexpected else ""))
    if unexpected:
        raise KeyError(f"{source} has {len(unexpected)} key(s) the model does not know, e.g. "
                       f"{unexpected[:SHOW_KEYS]}")
    bad = [(k, tuple(v.shape), tuple(state[k].shape)) for k, v in expected.items()
           if tuple(v.shape) != tuple(state[k].shape)]
    if bad:
        k, exp, got = bad[0]
        more = f" (and {len(bad) - 1} more mismatched key(s))" if len(bad) > 1 else ""
        raise ValueError(f"{source}: {k!r} has shape {got}, the model expects {exp}{more}")


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str) -> nn.Module:
    """Check, then assign `state` into `model` (whose parameters may be on the meta device)."""
    check_state_dict(model, state, source)
    model.load_state_dict(dict(state), strict=True, assign=True)
    left = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"after loading {source}, {len(left)} tensor(s) are still on the meta device, "
                           f"e.g. {left[:SHOW_KEYS]} (a buffer derived from a parameter at build time?)")
    return model


def load_state_dict_file(path: str | os.PathLike,
                         device: torch.device | str = "cpu") -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"weights file not found: {path}")
    return load_file(str(path), device=str(device))


def from_pretrained(directory: str | os.PathLike, build_fn: Callable[[Any], nn.Module], *,
                    expected_type: type | None = None, expected_preset: str | None = None,
                    device: torch.device | str = "cpu", dtype: torch.dtype | None = None) -> nn.Module:
    """Build `build_fn(config)` with meta parameters, then assign the checkpoint's weights (strict, checked).

    `dtype` casts floating tensors after loading (None: keep the file's dtypes); `load_config` gives the
    config.
    """
    directory = _checkpoint_dir(directory)
    config = load_config(directory, expected_type, expected_preset)
    state = load_state_dict_file(directory / WEIGHTS_FILE, device)
    with params_on_meta():
        model = build_fn(config)
    model = load_into(model, state, str(directory / WEIGHTS_FILE)).to(device)
    return model.to(dtype) if dtype is not None else model
