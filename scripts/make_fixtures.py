#!/usr/bin/env python3
"""Make tiny random PaliGemma fixtures and what Hugging Face transformers computes for them.

Usage:
    python3 scripts/make_fixtures.py --all                 # every generated case (not mqa/gqa)
    python3 scripts/make_fixtures.py bf16 gemma2           # some cases
    python3 scripts/make_fixtures.py --out /tmp/fx mqa     # write elsewhere (default tests/fixtures)
    python3 scripts/make_fixtures.py --seg                 # the segmentation decoder (tests/fixtures/seg)
    python3 scripts/make_fixtures.py --check-against tests/fixtures/mqa
        # load a case folder's model + images + prompt, recompute everything, compare with its
        # expected.json / expected.safetensors (max|diff|/max|ref| per tensor, ids equal?)

Each case folder gets:
    model/config.json, model/*.safetensors (+ index for sharded cases), model/tokenizer.json,
    image.png (square, model resolution), photo.jpg (larger, not square),
    expected.json, expected.safetensors (all f32; see tests/fixtures/README.md).

Expected tensors are always computed in float32: the saved checkpoint is loaded back from disk
(16-bit weights upcast exactly to f32), so an f32 engine reading the same files should match
to ~1e-5 relative.

`mqa` and `gqa` have the same configs as the shared fixtures (/work/shared/fixtures) but their
weights are not reproducible here (unknown seed); they are NOT part of --all, so the shared
copies in tests/fixtures are never overwritten by accident. Use --check-against for those.
"""

import argparse
import json
import math
import os
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image

import transformers
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import (
    PaliGemmaConfig,
    PaliGemmaForConditionalGeneration,
    PaliGemmaProcessor,
    PreTrainedTokenizerFast,
)
from transformers.models.siglip.image_processing_pil_siglip import SiglipImageProcessorPil

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
# The tokenizer shared by all cases (1556 tokens, <image> = 1555).
TOKENIZER_SRC = FIXTURES / "mqa" / "model" / "tokenizer.json"
IMAGE_TOKEN_INDEX = 1555
VOCAB_SIZE = 1600  # embedding rows; > tokenizer vocab, as in the real model
MAX_NEW_TOKENS = 12
EOS_ID = 1

BASE_NOTES = (
    "Reference = transformers {tv} / torch {pv}, float32, CPU, default attention implementations "
    "({attn}). Prompt = '<image>'*N + '<bos>' + prompt + '\\n' tokenized with no added special "
    "tokens; token_type_ids all 0 for the prompt so the whole prompt (image + bos + text + '\\n') "
    "is one bidirectional block. Positions are 1-based (first prompt token has position 1). "
    "image_features are the projector output as-is (no 1/sqrt(hidden) scaling); text rows are "
    "embed_tokens[id] * sqrt(text hidden) (transformers rounds the normalizer to the compute "
    "dtype, float32 here, also for 16-bit checkpoints). "
    "prefill_logits: one forward over the prompt. step_logits[0] = logits at the last prompt "
    "position (same forward), step_logits[k>0] = one forward of generated token k-1 through the "
    "KV cache. Greedy = plain argmax over step_logits (no eos suppression; generation does not stop "
    "at eos). Cross-checked against model.generate(min_new_tokens=12) and a cache-free forward "
    "over prompt+generated with token_type_ids 1 for the generated tokens."
)

# --------------------------------------------------------------------------------------------
# Cases
# --------------------------------------------------------------------------------------------

def vision(hidden, heads, layers, image, patch, inter):
    return dict(
        model_type="siglip_vision_model",
        hidden_size=hidden,
        num_attention_heads=heads,
        num_hidden_layers=layers,
        image_size=image,
        patch_size=patch,
        intermediate_size=inter,
        layer_norm_eps=1e-6,
        hidden_act="gelu_pytorch_tanh",
        vision_use_head=False,
    )


def gemma(hidden, heads, kv, head_dim, layers, inter, **extra):
    d = dict(
        model_type="gemma",
        hidden_size=hidden,
        num_attention_heads=heads,
        num_key_value_heads=kv,
        head_dim=head_dim,
        num_hidden_layers=layers,
        intermediate_size=inter,
        vocab_size=VOCAB_SIZE,
        rms_norm_eps=1e-6,
        max_position_embeddings=8192,
        hidden_activation="gelu_pytorch_tanh",
        hidden_act="gelu_pytorch_tanh",
    )
    d.update(extra)
    return d


CASES = {
    # Same configs as the shared fixtures (weights differ: only useful with --out or --check-against).
    "mqa": dict(
        seed=1,
        vision=vision(48, 4, 2, 32, 8, 96),
        text=gemma(64, 4, 1, 16, 2, 128),
        prompt="caption en",
        dtype="float32",
        naming="legacy",
        photo=(103, 67),
        covers="MQA (1 kv head), f32, legacy tensor names",
    ),
    "gqa": dict(
        seed=2,
        vision=vision(64, 4, 3, 48, 16, 160),
        text=gemma(96, 6, 2, 32, 3, 256),
        prompt="answer en what is the color of the car",
        dtype="float32",
        naming="legacy",
        photo=(151, 99),
        covers="GQA, heads*head_dim != hidden, f32",
    ),
    # New cases.
    "bf16": dict(
        seed=1234,
        vision=vision(40, 5, 2, 30, 6, 72),  # head_dim 8, 25 image tokens
        text=gemma(80, 5, 1, 24, 2, 112),  # heads*head_dim = 120 != 80, MQA
        prompt="detect cat",
        dtype="bfloat16",
        naming="legacy",
        photo=(61, 47),
        covers="bfloat16 weights, awkward sizes (vision head_dim 8, 25 image tokens, "
        "text head_dim 24 with 5 heads over hidden 80), MQA",
    ),
    "newnames": dict(
        seed=4321,
        vision=vision(48, 4, 2, 32, 8, 96),
        text=gemma(64, 4, 2, 16, 3, 128),
        prompt="caption es",
        dtype="float32",
        naming="new",
        shards=2,
        photo=(77, 53),
        covers="f32, newer transformers tensor names (model.vision_tower.*, "
        "model.multi_modal_projector.*, model.language_model.*), 2 safetensors shards + "
        "model.safetensors.index.json, GQA 4/2, 3 text layers",
    ),
    "f16": dict(
        seed=777,
        vision=vision(32, 2, 2, 28, 7, 64),  # 16 image tokens, head_dim 16
        text=gemma(48, 3, 3, 16, 2, 96),  # MHA (kv heads == heads)
        prompt="ocr",
        dtype="float16",
        naming="legacy",
        photo=(45, 70),
        covers="float16 weights, MHA (3 heads / 3 kv heads), portrait photo",
    ),
    "gemma2": dict(
        seed=2024,
        vision=vision(32, 4, 2, 32, 8, 64),  # 16 image tokens
        text=dict(
            gemma(64, 4, 2, 16, 4, 128),
            model_type="gemma2",
            sliding_window=8,
            query_pre_attn_scalar=24,
            attn_logit_softcapping=50.0,
            final_logit_softcapping=30.0,
        ),
        top_hidden_size=2048,  # stale top-level hidden_size, as in the published PaliGemma 2 configs
        prompt="answer en where is the cat standing",
        dtype="float32",
        naming="legacy",
        photo=(90, 64),
        qk_gain=2.0,  # larger q/k weights so the attention soft-cap is exercised
        embed_std=0.05,
        final_norm_add=3.0,  # final norm weight + 3 -> ~4x larger logits, exercises the final soft-cap
        covers="PaliGemma 2 (Gemma 2 decoder): 4 layers sliding/full/sliding/full, sliding_window 8 "
        "< prompt length, query_pre_attn_scalar 24 != head_dim 16, attn soft-cap 50, final "
        "soft-cap 30, extra pre/post feed-forward norms, stale top-level hidden_size 2048",
    ),
    "untied": dict(
        seed=31337,
        vision=vision(48, 4, 2, 32, 8, 96),
        text=gemma(64, 4, 1, 16, 2, 128, tie_word_embeddings=False),
        tie_word_embeddings=False,  # top level too (the one PaliGemmaForConditionalGeneration reads)
        prompt="caption en",
        dtype="float32",
        naming="legacy",
        photo=(88, 59),
        covers="untied output projection: tie_word_embeddings false (top level and text_config), "
        "separate language_model.lm_head.weight [vocab, hidden] with its own random values "
        "(logits = final_norm(h) @ lm_head^T, NOT embed_tokens^T), f32, legacy names, MQA",
    ),
    "realdims": dict(
        seed=28,
        vision=vision(144, 2, 1, 28, 14, 96),  # head_dim 72 (SigLIP So400m), 4 image tokens
        text=gemma(64, 2, 1, 256, 2, 128),  # head_dim 256 (Gemma 2B); heads*head_dim 512 != hidden 64
        prompt="answer en what is this",
        dtype="bfloat16",
        naming="legacy",
        photo=(70, 41),
        covers="the real model's head dimensions at tiny size: SigLIP head_dim 72 (hidden 144, 2 "
        "heads, as So400m), 28px / patch 14 = 4 image tokens; Gemma head_dim 256 (as Gemma 2B) with "
        "2 query heads and 1 kv head, q_proj [512, 64], o_proj [64, 512]; bfloat16 weights",
    ),
}
NEW_CASES = ["bf16", "newnames", "f16", "gemma2", "untied", "realdims"]

DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# --------------------------------------------------------------------------------------------
# Building
# --------------------------------------------------------------------------------------------

def build_config(case):
    text = dict(case["text"])
    hidden = text["hidden_size"]
    cfg = PaliGemmaConfig(
        vision_config=case["vision"],
        text_config=text,
        image_token_index=IMAGE_TOKEN_INDEX,
        vocab_size=VOCAB_SIZE,
        projection_dim=hidden,
        hidden_size=case.get("top_hidden_size", hidden),
        bos_token_id=2,
        eos_token_id=1,
        pad_token_id=0,
        **({"tie_word_embeddings": False} if case.get("tie_word_embeddings") is False else {}),
    )
    return cfg


@torch.no_grad()
def randomize(model, seed, case):
    """Weights with O(1) activations: matrices ~ N(0, (1.5/sqrt(fan_in))^2), vectors (biases,
    norm weights) ~ N(0, 0.3^2), position embedding ~ N(0, 0.2^2), token embedding
    ~ N(0, embed_std^2). Deterministic given `seed` (own generator, sorted names)."""
    g = torch.Generator().manual_seed(seed)
    embed_std = case.get("embed_std", 0.05)
    qk_gain = case.get("qk_gain", 1.0)
    tied = model.config.tie_word_embeddings
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if name == "lm_head.weight" and tied:
            continue  # tied
        shape = p.shape
        if name == "lm_head.weight":
            # untied: its own values, 1.5/sqrt(hidden) like the other matrices -> logits ~N(0, 1.5^2)
            std = case.get("lm_head_std", 1.5 / math.sqrt(shape[1]))
        elif "embed_tokens" in name:
            std = embed_std
        elif "position_embedding" in name:
            std = 0.2
        elif p.dim() == 1:
            std = 0.3
        else:
            fan_in = int(np.prod(shape[1:]))
            std = 1.5 / math.sqrt(fan_in)
            if "language_model" in name and ("q_proj" in name or "k_proj" in name):
                std *= qk_gain
        p.copy_(torch.randn(shape, generator=g, dtype=torch.float32) * std)
        if name.endswith("language_model.norm.weight"):
            p.add_(case.get("final_norm_add", 0.0))


def make_images(case, outdir, seed):
    """image.png: S x S, smooth gradients + noise. photo.jpg: case['photo'] (w, h), not square."""
    rng = np.random.default_rng(seed)
    s = case["vision"]["image_size"]

    def picture(w, h):
        y, x = np.mgrid[0:h, 0:w].astype(np.float64)
        xn, yn = x / max(w - 1, 1), y / max(h - 1, 1)
        r = 255 * xn
        gch = 255 * (0.5 + 0.5 * np.sin(2 * np.pi * (xn + 2 * yn)))
        b = 255 * (1 - yn) * (0.6 + 0.4 * np.cos(3 * np.pi * xn * yn))
        img = np.stack([r, gch, b], -1) + rng.normal(0, 20, (h, w, 3))
        # a blob, so the content is not purely smooth
        cy, cx, rad = rng.uniform(0.3, 0.7) * h, rng.uniform(0.3, 0.7) * w, 0.2 * min(w, h)
        blob = ((y - cy) ** 2 + (x - cx) ** 2) < rad**2
        img[blob] = rng.integers(0, 256, 3)
        return Image.fromarray(np.clip(np.round(img), 0, 255).astype(np.uint8), "RGB")

    picture(s, s).save(outdir / "image.png")
    w, h = case["photo"]
    picture(w, h).save(outdir / "photo.jpg", quality=90)


def canonical_names(name):
    """Any PaliGemma tensor name (hub/legacy, newer layout, transformers' internal module names,
    or what save_pretrained of a freshly built model writes in transformers 5.23, i.e.
    'vision_tower.embeddings...' without 'vision_model.') -> (legacy name, new name)."""
    for pre in ("model.vision_tower.", "vision_tower."):
        if name.startswith(pre):
            rest = name[len(pre):]
            if rest.startswith("vision_model."):
                rest = rest[len("vision_model."):]
            return "vision_tower.vision_model." + rest, "model.vision_tower." + rest
    for pre in ("model.multi_modal_projector.", "multi_modal_projector."):
        if name.startswith(pre):
            rest = name[len(pre):]
            return "multi_modal_projector." + rest, "model.multi_modal_projector." + rest
    for pre in ("model.language_model.", "language_model.model."):
        if name.startswith(pre):
            rest = name[len(pre):]
            return "language_model.model." + rest, "model.language_model." + rest
    for pre in ("lm_head.", "language_model.lm_head."):
        if name.startswith(pre):
            rest = name[len(pre):]
            return "language_model.lm_head." + rest, "lm_head." + rest
    raise ValueError(f"unexpected tensor name {name}")


def read_saved(model_dir):
    """All tensors save_pretrained wrote (single file or shards); removes those files."""
    idx = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else ["model.safetensors"]
    tensors, meta = {}, {}
    for fn in files:
        with safe_open(model_dir / fn, "pt") as f:
            meta = f.metadata() or meta
            for k in f.keys():
                tensors[k] = f.get_tensor(k)
        (model_dir / fn).unlink()
    if idx.exists():
        idx.unlink()
    return tensors, meta


def write_weights(model_dir, naming, shards=1):
    """Rewrite the checkpoint with our own tensor names: 'legacy' = hub names
    (vision_tower.vision_model.*, multi_modal_projector.*, language_model.model.*), one
    model.safetensors; 'new' = model.vision_tower.*, model.multi_modal_projector.*,
    model.language_model.*, split over `shards` files + model.safetensors.index.json.
    Returns the names save_pretrained itself had written."""
    saved, meta = read_saved(model_dir)
    which = 0 if naming == "legacy" else 1
    tensors = {canonical_names(k)[which]: v for k, v in saved.items()}
    assert len(tensors) == len(saved)
    fmt = {"format": meta.get("format", "pt")}
    if shards == 1:
        save_file({k: tensors[k].contiguous() for k in sorted(tensors)}, model_dir / "model.safetensors", metadata=fmt)
        return sorted(saved)
    names = sorted(tensors)
    nbytes = {n: tensors[n].numel() * tensors[n].element_size() for n in names}
    total = sum(nbytes.values())
    groups, cur, acc = [], [], 0
    for n in names:  # contiguous split by bytes, in name order
        cur.append(n)
        acc += nbytes[n]
        if acc >= total * (len(groups) + 1) / shards and len(groups) < shards - 1:
            groups.append(cur)
            cur = []
    groups.append(cur)
    assert len(groups) == shards and all(groups), [len(g) for g in groups]
    weight_map = {}
    for i, grp in enumerate(groups):
        fname = f"model-{i + 1:05d}-of-{shards:05d}.safetensors"
        save_file({n: tensors[n].contiguous() for n in grp}, model_dir / fname, metadata=fmt)
        weight_map.update({n: fname for n in grp})
    index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
    return sorted(saved)


def checkpoint_names(model_dir):
    idx = model_dir / "model.safetensors.index.json"
    if idx.exists():
        return sorted(json.loads(idx.read_text())["weight_map"])
    with safe_open(model_dir / "model.safetensors", "pt") as f:
        return sorted(f.keys())


def checkpoint_dtype(model_dir):
    idx = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else ["model.safetensors"]
    dts = set()
    for fn in files:
        with safe_open(model_dir / fn, "pt") as f:
            for k in f.keys():
                dts.add(str(f.get_slice(k).get_dtype()))
    return sorted(dts)


# --------------------------------------------------------------------------------------------
# Computing what transformers computes
# --------------------------------------------------------------------------------------------

def make_processor(model_dir, cfg):
    s = cfg.vision_config.image_size
    ip = SiglipImageProcessorPil(size={"height": s, "width": s})  # bicubic, /255, mean=std=0.5
    ip.image_seq_length = cfg.text_config.num_image_tokens
    tok = PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"),
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
    )
    return PaliGemmaProcessor(image_processor=ip, tokenizer=tok), tok


def load_model(model_dir, attn=None):
    kw = {"dtype": torch.float32}
    if attn:
        kw["attn_implementation"] = attn
    model, info = PaliGemmaForConditionalGeneration.from_pretrained(str(model_dir), output_loading_info=True, **kw)
    tied = model.config.tie_word_embeddings
    missing = [k for k in info.get("missing_keys", []) if "lm_head" not in k or not tied]
    if missing or info.get("unexpected_keys") or info.get("mismatched_keys"):
        raise RuntimeError(f"loading {model_dir}: {info}")
    model = model.float().eval()
    return model


@torch.no_grad()
def compute(model_dir, case_dir, prompt, attn=None, log=print):
    model = load_model(model_dir, attn)
    cfg = model.config
    proc, tok = make_processor(model_dir, cfg)
    n_img = cfg.text_config.num_image_tokens
    prompt_string = "<image>" * n_img + "<bos>" + prompt + "\n"
    ids = tok(prompt_string, add_special_tokens=False, return_tensors="pt")["input_ids"]

    image = Image.open(case_dir / "image.png")
    photo = Image.open(case_dir / "photo.jpg")
    inputs = proc(images=image, text="<image>" + prompt, return_tensors="pt")
    assert torch.equal(inputs["input_ids"], ids), (inputs["input_ids"], ids)
    assert int(inputs["token_type_ids"].sum()) == 0
    pv = inputs["pixel_values"].float()
    photo_pv = proc.image_processor(photo, return_tensors="pt")["pixel_values"].float()

    vision_out = model.model.vision_tower(pixel_values=pv).last_hidden_state[0]
    image_features = model.model.get_image_features(pv).pooler_output[0]

    # prefill (bidirectional prefix via token_type_ids = 0)
    T = ids.shape[1]
    am = torch.ones_like(ids)
    tt = torch.zeros_like(ids)
    out = model(input_ids=ids, pixel_values=pv, token_type_ids=tt, attention_mask=am, use_cache=True)
    prefill_logits = out.logits[0].float()
    past = out.past_key_values
    steps = [prefill_logits[-1]]
    gen = [int(prefill_logits[-1].argmax())]
    for _ in range(MAX_NEW_TOKENS - 1):
        am = torch.cat([am, am.new_ones(1, 1)], 1)
        o = model(input_ids=torch.tensor([[gen[-1]]]), attention_mask=am, past_key_values=past, use_cache=True)
        past = o.past_key_values
        steps.append(o.logits[0, -1].float())
        gen.append(int(o.logits[0, -1].argmax()))
    step_logits = torch.stack(steps)

    checks = {}
    # (a) model.generate
    g = model.generate(
        **inputs, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS, do_sample=False,
        output_logits=True, return_dict_in_generate=True,
    )
    g_ids = g.sequences[0, T:].tolist()
    g_logits = torch.stack([l[0] for l in g.logits]).float()
    checks["generate_ids_equal"] = g_ids == gen
    checks["generate_logits_rel"] = rel(g_logits, step_logits)
    # (b) no cache: prompt + generated (suffix = token_type 1) in one forward
    full = torch.cat([ids, torch.tensor([gen[:-1]])], 1)
    ftt = torch.cat([tt, torch.ones(1, MAX_NEW_TOKENS - 1, dtype=tt.dtype)], 1)
    fo = model(input_ids=full, pixel_values=pv, token_type_ids=ftt, use_cache=False)
    checks["nocache_logits_rel"] = rel(fo.logits[0, T - 1:].float(), step_logits)
    checks["eos_is_argmax_at"] = [i for i, t in enumerate(gen) if t == EOS_ID]
    srt = step_logits.sort(-1).values
    checks["min_top2_margin"] = float((srt[:, -1] - srt[:, -2]).min())
    log(f"  checks: {checks}")
    if not checks["generate_ids_equal"] and not checks["eos_is_argmax_at"]:
        log("  WARNING: generate() disagrees with the manual greedy loop")

    tensors = {
        "pixel_values": pv.contiguous(),
        "photo_pixel_values": photo_pv.contiguous(),
        "vision_out": vision_out.contiguous(),
        "image_features": image_features.contiguous(),
        "prefill_logits": prefill_logits.contiguous(),
        "step_logits": step_logits.contiguous(),
    }
    meta = dict(
        prompt=prompt,
        prompt_string=prompt_string,
        input_ids=ids[0].tolist(),
        generated_ids=gen,
        generated_text=tok.decode(gen),
        max_new_tokens=MAX_NEW_TOKENS,
        num_image_tokens=n_img,
        image_token_index=cfg.image_token_index,
        vocab_size=cfg.text_config.vocab_size,
        tokenizer_vocab=len(tok),
        decoder=cfg.text_config.model_type,
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
        tensor_names=checkpoint_names(model_dir),
    )
    return model, tensors, meta, checks


def rel(a, b):
    a, b = torch.as_tensor(a).float(), torch.as_tensor(b).float()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


# --------------------------------------------------------------------------------------------
# Independent re-implementation (plain torch, from the files on disk) of the contract in
# docs/paligemma.md, including the Gemma 2 mask semantics written in the notes.
# --------------------------------------------------------------------------------------------

def load_checkpoint(model_dir):
    """-> {legacy name: f32 tensor}, whatever the layout on disk."""
    idx = model_dir / "model.safetensors.index.json"
    files = sorted(set(json.loads(idx.read_text())["weight_map"].values())) if idx.exists() else ["model.safetensors"]
    out = {}
    for fn in files:
        for k, v in load_file(model_dir / fn).items():
            out[canonical_names(k)[0]] = v.float()
    return out


@torch.no_grad()
def independent_forward(model_dir, pixel_values, input_ids, generated_ids, window_shift=0):
    """Returns (vision_out, image_features, logits for prompt + generated[:-1]) computed without
    transformers' model code. The whole sequence is run at once with the mask
        allowed(q, k) = (k <= q and (not sliding or k > q - W)) or (q < T and k < T)
    which is what prefill + KV-cache decode compute (see notes)."""
    cfg = json.loads((model_dir / "config.json").read_text())
    vc, tc = cfg["vision_config"], cfg["text_config"]
    W = load_checkpoint(model_dir)
    F = torch.nn.functional

    def lin(x, name, bias=True):
        y = x @ W[name + ".weight"].T
        return y + W[name + ".bias"] if bias and name + ".bias" in W else y

    def gelu(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    # SigLIP
    p = vc["patch_size"]
    v = "vision_tower.vision_model."
    x = F.conv2d(pixel_values, W[v + "embeddings.patch_embedding.weight"], W[v + "embeddings.patch_embedding.bias"], stride=p)
    x = x.flatten(2)[0].T + W[v + "embeddings.position_embedding.weight"]
    D, H = vc["hidden_size"], vc["num_attention_heads"]
    hd = D // H
    ln = lambda x, n: F.layer_norm(x, (D,), W[n + ".weight"], W[n + ".bias"], vc.get("layer_norm_eps", 1e-6))
    for i in range(vc["num_hidden_layers"]):
        L = f"{v}encoder.layers.{i}."
        h = ln(x, L + "layer_norm1")
        q, k, vv = (lin(h, L + f"self_attn.{n}_proj").view(-1, H, hd).transpose(0, 1) for n in "qkv")
        a = torch.softmax(q @ k.transpose(1, 2) * hd**-0.5, -1) @ vv
        x = x + lin(a.transpose(0, 1).reshape(-1, D), L + "self_attn.out_proj")
        x = x + lin(gelu(lin(ln(x, L + "layer_norm2"), L + "mlp.fc1")), L + "mlp.fc2")
    vision_out = ln(x, v + "post_layernorm")
    feats = lin(vision_out, "multi_modal_projector.linear")

    # Gemma / Gemma 2
    g2 = tc["model_type"] == "gemma2"
    Dt, Hq, Hkv, hd = tc["hidden_size"], tc["num_attention_heads"], tc["num_key_value_heads"], tc["head_dim"]
    eps = tc.get("rms_norm_eps", 1e-6)
    theta = (tc.get("rope_parameters") or {}).get("rope_theta", tc.get("rope_theta", 10000.0))
    rms = lambda x, n: x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps) * (1 + W[n + ".weight"])
    ids = list(input_ids) + list(generated_ids[:-1])
    T, S = len(input_ids), len(ids)
    emb = W["language_model.model.embed_tokens.weight"]
    img = cfg["image_token_index"]
    x = emb[torch.tensor(ids)] * torch.tensor(Dt**0.5, dtype=torch.float32)
    x[torch.tensor(ids) == img] = feats
    pos = torch.arange(S, dtype=torch.float32) + 1
    inv = 1.0 / theta ** (torch.arange(0, hd, 2, dtype=torch.float32) / hd)
    ang = torch.cat([pos[:, None] * inv] * 2, -1)
    cos, sin = ang.cos(), ang.sin()
    rot = lambda t: t * cos + torch.cat([-t[..., hd // 2:], t[..., : hd // 2]], -1) * sin
    qi, ki = torch.arange(S)[:, None], torch.arange(S)[None, :]
    prefix = (qi < T) & (ki < T)
    full_mask = (ki <= qi) | prefix
    win = tc.get("sliding_window") if g2 else None
    layer_types = tc.get("layer_types") or ["full_attention"] * tc["num_hidden_layers"]
    scale = (tc["query_pre_attn_scalar"] if g2 else hd) ** -0.5
    acap = tc.get("attn_logit_softcapping") if g2 else None
    for i in range(tc["num_hidden_layers"]):
        L = f"language_model.model.layers.{i}."
        mask = full_mask
        if g2 and layer_types[i] == "sliding_attention":
            mask = ((ki <= qi) & (ki > qi - (win + window_shift))) | prefix
        h = rms(x, L + "input_layernorm")
        q = rot(lin(h, L + "self_attn.q_proj").view(S, Hq, hd).transpose(0, 1))
        k = rot(lin(h, L + "self_attn.k_proj").view(S, Hkv, hd).transpose(0, 1))
        vv = lin(h, L + "self_attn.v_proj").view(S, Hkv, hd).transpose(0, 1)
        k, vv = (t.repeat_interleave(Hq // Hkv, 0) for t in (k, vv))
        sc = q @ k.transpose(1, 2) * scale
        if acap:
            sc = acap * torch.tanh(sc / acap)
        a = torch.softmax(sc.masked_fill(~mask, float("-inf")), -1) @ vv
        a = lin(a.transpose(0, 1).reshape(S, Hq * hd), L + "self_attn.o_proj")
        if g2:
            x = x + rms(a, L + "post_attention_layernorm")
            h = rms(x, L + "pre_feedforward_layernorm")
        else:
            x = x + a
            h = rms(x, L + "post_attention_layernorm")
        m = lin(gelu(lin(h, L + "mlp.gate_proj")) * lin(h, L + "mlp.up_proj"), L + "mlp.down_proj")
        x = x + (rms(m, L + "post_feedforward_layernorm") if g2 else m)
    # untied (tie_word_embeddings false at the top level, which is what transformers reads for
    # PaliGemmaForConditionalGeneration): separate lm_head [vocab, hidden]; tied: embed_tokens
    if cfg.get("tie_word_embeddings", True):
        out_proj = emb
    else:
        out_proj = W["language_model.lm_head.weight"]
        assert out_proj.shape == emb.shape and not torch.equal(out_proj, emb)
    logits = rms(x, "language_model.model.norm") @ out_proj.T
    fcap = tc.get("final_logit_softcapping") if g2 else None
    if fcap:
        logits = fcap * torch.tanh(logits / fcap)
    return vision_out, feats, logits


def independent_check(model_dir, tensors, meta, log=print):
    vo, fe, lg = independent_forward(model_dir, tensors["pixel_values"], meta["input_ids"], meta["generated_ids"])
    T = len(meta["input_ids"])
    res = {
        "vision_out": rel(vo, tensors["vision_out"]),
        "image_features": rel(fe, tensors["image_features"]),
        "prefill_logits": rel(lg[:T], tensors["prefill_logits"]),
        "step_logits": rel(lg[T - 1:], tensors["step_logits"]),
    }
    log(f"  independent re-implementation vs reference (max|diff|/max|ref|): {res}")
    return res


# --------------------------------------------------------------------------------------------
# Gemma 2 extra probes (documented in notes)
# --------------------------------------------------------------------------------------------

@torch.no_grad()
def gemma2_probes(model_dir, case_dir, prompt, tensors, meta, log=print):
    """Show what the sliding window and soft-caps change, and that eager == default attention."""
    res = {}
    base_pl, base_sl = tensors["prefill_logits"], tensors["step_logits"]

    def variant(**text_overrides):
        m = load_model(model_dir)
        for k, v in text_overrides.items():
            setattr(m.config.text_config, k, v)
            setattr(m.model.language_model.config, k, v)
            for layer in m.model.language_model.layers:
                if k == "attn_logit_softcapping":
                    layer.self_attn.attn_logit_softcapping = v
                if k == "sliding_window" and layer.self_attn.sliding_window is not None:
                    layer.self_attn.sliding_window = v
        return m

    def run(m):
        tok = make_processor(model_dir, m.config)[1]
        ids = torch.tensor([meta["input_ids"]])
        gen = meta["generated_ids"]
        pv = tensors["pixel_values"]
        T = ids.shape[1]
        out = m(input_ids=ids, pixel_values=pv, token_type_ids=torch.zeros_like(ids), use_cache=True)
        past, sl = out.past_key_values, [out.logits[0, -1]]
        for t in gen[:-1]:
            o = m(input_ids=torch.tensor([[t]]), past_key_values=past, use_cache=True)
            past = o.past_key_values
            sl.append(o.logits[0, -1])
        return out.logits[0], torch.stack(sl)

    m = variant(sliding_window=4096)
    pl, sl = run(m)
    res["window_4096_vs_8_prefill_rel"] = rel(pl, base_pl)
    res["window_4096_vs_8_steps_rel"] = rel(sl[1:], base_sl[1:])
    m = variant(attn_logit_softcapping=None)
    pl, sl = run(m)
    res["no_attn_softcap_prefill_rel"] = rel(pl, base_pl)
    m = variant(final_logit_softcapping=None)
    pl, sl = run(m)
    res["no_final_softcap_prefill_rel"] = rel(pl, base_pl)
    m = load_model(model_dir, attn="eager")
    pl, sl = run(m)
    res["eager_vs_default_prefill_rel"] = rel(pl, base_pl)
    res["eager_vs_default_steps_rel"] = rel(sl, base_sl)
    T = len(meta["input_ids"])
    for shift in (-1, 1):
        _, _, lg = independent_forward(model_dir, tensors["pixel_values"], meta["input_ids"], meta["generated_ids"], window_shift=shift)
        res[f"window_{'W-1' if shift < 0 else 'W+1'}_steps_rel"] = rel(lg[T - 1:], base_sl)
    log(f"  gemma2 probes: {res}")
    return res


@torch.no_grad()
def untied_probe(model_dir, tensors, meta, log=print):
    """Recompute the reference's prefill + cached steps with lm_head replaced by the embedding:
    the logits must change clearly (they really come from lm_head)."""
    m = load_model(model_dir)
    emb = m.model.language_model.embed_tokens.weight
    assert not torch.equal(m.lm_head.weight, emb)
    m.lm_head.weight = torch.nn.Parameter(emb.detach().clone())
    ids = torch.tensor([meta["input_ids"]])
    out = m(input_ids=ids, pixel_values=tensors["pixel_values"], token_type_ids=torch.zeros_like(ids), use_cache=True)
    past, sl = out.past_key_values, [out.logits[0, -1]]
    for t in meta["generated_ids"][:-1]:
        o = m(input_ids=torch.tensor([[t]]), past_key_values=past, use_cache=True)
        past = o.past_key_values
        sl.append(o.logits[0, -1])
    sl = torch.stack(sl)
    res = {
        "tied_vs_untied_prefill_rel": rel(out.logits[0], tensors["prefill_logits"]),
        "tied_vs_untied_step_rel": rel(sl, tensors["step_logits"]),
        "same_argmax_steps": int((sl.argmax(-1) == tensors["step_logits"].argmax(-1)).sum()),
    }
    log(f"  untied probe (lm_head := embed_tokens vs reference): {res}")
    return res


GEMMA2_NOTES = (
    " GEMMA 2 DECODER. layer_types = {layer_types} (layer i is sliding when i is even). "
    "Mask in transformers {tv} (masking_utils.create_sliding_window_causal_mask / create_causal_mask "
    "with block_sequence_ids = where(token_type_ids == 0, 0, -1) from PaliGemmaModel.forward): "
    "allowed(q, k) = (k <= q AND k > q - sliding_window [sliding layers only]) OR (q and k both in "
    "the prompt block). Indices are absolute sequence indices (0-based; positions for RoPE are "
    "index + 1). PREFILL: every prompt token sees every prompt token in ALL layers; the sliding "
    "window has no effect on the prompt (the bidirectional-block OR wins). DECODE (KV cache, "
    "token_type_ids not used after the first iteration): the token at index q sees, in full "
    "layers, every index 0..q; in sliding layers only indices q-W+1..q (W = sliding_window = {W} "
    "keys including itself; the DynamicSlidingWindowLayer keeps the last W-1 keys), so old prompt "
    "tokens drop out even though they were bidirectional during prefill. Attention: scores = "
    "(q.k) * query_pre_attn_scalar^-0.5 ({qpas}^-0.5, not head_dim^-0.5), then soft-cap "
    "c*tanh(s/c) with c = attn_logit_softcapping ({acap}), then mask, softmax. Layer: "
    "h = x + post_attention_layernorm(attn(input_layernorm(x))); x = h + "
    "post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h))). RMSNorm x*rsqrt(mean x^2+eps)"
    "*(1+w) as Gemma 1; embed scale sqrt(text hidden) and final model.norm as Gemma 1; logits = "
    "c*tanh((norm(h) @ embed^T)/c), c = final_logit_softcapping ({fcap}). The top-level "
    "config hidden_size ({top}) is stale, use text_config.hidden_size ({hid}). Sensitivity "
    "(max|diff|/max|ref| vs this reference): {probes}."
)


# --------------------------------------------------------------------------------------------
# Driver
# --------------------------------------------------------------------------------------------

def save_expected(case_dir, name, tensors, meta, extra):
    save_file({k: v.detach().float().contiguous() for k, v in tensors.items()}, case_dir / "expected.safetensors")
    d = {"case": name}
    d.update(meta)
    d.update(extra)
    (case_dir / "expected.json").write_text(json.dumps(d, indent=1, ensure_ascii=False) + "\n")
    for f in case_dir.rglob("*"):  # safetensors writes 0600 files
        os.chmod(f, 0o755 if f.is_dir() else 0o644)


def make_case(name, out_root, log=print):
    case = CASES[name]
    case_dir = Path(out_root) / name
    model_dir = case_dir / "model"
    log(f"== {name} -> {case_dir}")
    if model_dir.exists():
        shutil.rmtree(model_dir)
    model_dir.mkdir(parents=True)
    if not TOKENIZER_SRC.exists():
        sys.exit(f"missing {TOKENIZER_SRC}")

    torch.manual_seed(case["seed"])
    cfg = build_config(case)
    model = PaliGemmaForConditionalGeneration(cfg).eval()
    randomize(model, case["seed"], case)
    model.to(DTYPES[case["dtype"]])
    model.save_pretrained(str(model_dir), safe_serialization=True)
    shutil.copy(TOKENIZER_SRC, model_dir / "tokenizer.json")
    for junk in ["generation_config.json"]:
        if (model_dir / junk).exists():
            (model_dir / junk).unlink()
    saved_names = write_weights(model_dir, case["naming"], case.get("shards", 1))
    odd = [n for n in saved_names if n.startswith("vision_tower.") and not n.startswith("vision_tower.vision_model.")]
    if odd:
        log(f"  note: save_pretrained wrote e.g. {odd[0]!r} (no 'vision_model.'); rewritten")
    make_images(case, case_dir, case["seed"])

    # Everything below reads back from disk.
    model, tensors, meta, checks = compute(model_dir, case_dir, case["prompt"], log=log)
    attn = (f"text: {model.config.text_config._attn_implementation}, "
            f"vision: {model.config.vision_config._attn_implementation}")
    indep = independent_check(model_dir, tensors, meta, log=log)
    if max(indep.values()) > 1e-4:
        log("  WARNING: independent re-implementation disagrees with transformers")
    notes = BASE_NOTES.format(tv=transformers.__version__, pv=torch.__version__, attn=attn)
    notes += f" Case covers: {case['covers']}."
    if case["dtype"] != "float32":
        notes += (
            f" Weights are stored as {case['dtype']}; the expected tensors were computed in float32 "
            "from those weights upcast exactly (a float32 engine reading them should match to ~1e-5)."
        )
    untied = not cfg.tie_word_embeddings
    if untied:
        names = checkpoint_names(model_dir)
        assert "language_model.lm_head.weight" in names, names
        assert ("language_model.lm_head.weight" in saved_names) or ("lm_head.weight" in saved_names), saved_names
        probe = untied_probe(model_dir, tensors, meta, log=log)
        if probe["tied_vs_untied_step_rel"] < 0.5:
            log("  WARNING: replacing lm_head by the embedding changes little")
    if case["naming"] == "legacy" and untied:
        notes += (
            " Tensor names as in the published hub checkpoints (vision_tower.vision_model.*, "
            "multi_modal_projector.linear.*, language_model.model.*), one model.safetensors, PLUS "
            "language_model.lm_head.weight [vocab, hidden] (tie_word_embeddings false at the top level "
            "and in text_config). transformers {tv} save_pretrained itself writes the untied head as "
            "'{saved_head}' (its conversion mapping for paligemma/llava renames "
            "^language_model.lm_head -> lm_head on load; the newer layout calls it lm_head.weight). "
            "logits = final_norm(h) @ lm_head^T; the embedding is used only for the input rows. "
            "Sensitivity: the same forward with lm_head replaced by embed_tokens gives "
            "max|diff|/max|ref| = {p1:.3g} on prefill_logits, {p2:.3g} on step_logits, and "
            "{p3}/12 of the same greedy argmaxes at the reference's steps."
        ).format(
            tv=transformers.__version__,
            saved_head=[n for n in saved_names if "lm_head" in n][0],
            p1=probe["tied_vs_untied_prefill_rel"], p2=probe["tied_vs_untied_step_rel"],
            p3=probe["same_argmax_steps"],
        )
    elif case["naming"] == "legacy":
        notes += (
            " Tensor names as in the published hub checkpoints (vision_tower.vision_model.*, "
            "multi_modal_projector.linear.*, language_model.model.*), one model.safetensors, no lm_head "
            "(tied). (save_pretrained of a freshly built model in transformers 5.23 writes "
            "'vision_tower.embeddings...' without 'vision_model.'; this script rewrites the names.)"
        )
    if case["naming"] == "new":
        notes += (
            " Tensor names rewritten (by this script, not by save_pretrained) to the newer layout: "
            "model.vision_tower.<...> (no 'vision_model.'), model.multi_modal_projector.linear.*, "
            "model.language_model.<...> (no inner 'model.'); split over 2 shards listed in "
            "model.safetensors.index.json. from_pretrained loads them with no missing/unexpected keys."
        )
    beyond = [t for t in meta["generated_ids"] if t >= meta["tokenizer_vocab"]]
    if beyond:
        log(f"  WARNING: greedy ids {beyond} have no token in tokenizer.json (embedding rows only)")
    if checks["eos_is_argmax_at"]:
        log(f"  WARNING: <eos> is the argmax at steps {checks['eos_is_argmax_at']}")
        notes += f" NOTE: <eos> is the argmax at steps {checks['eos_is_argmax_at']} and generation continues."
    if cfg.text_config.model_type == "gemma2":
        probes = gemma2_probes(model_dir, case_dir, case["prompt"], tensors, meta, log=log)
        tc = cfg.text_config
        notes += GEMMA2_NOTES.format(
            layer_types=tc.layer_types, tv=transformers.__version__, W=tc.sliding_window,
            qpas=tc.query_pre_attn_scalar, acap=tc.attn_logit_softcapping, fcap=tc.final_logit_softcapping,
            top=cfg.hidden_size, hid=tc.hidden_size,
            probes=", ".join(f"{k}={v:.3g}" for k, v in probes.items()),
        )
    extra = {
        "weights_dtype": case["dtype"],
        "notes": notes,
    }
    save_expected(case_dir, name, tensors, meta, extra)
    size = sum(p.stat().st_size for p in case_dir.rglob("*") if p.is_file())
    log(f"  generated_ids {meta['generated_ids']}  text {meta['generated_text']!r}")
    log(f"  T={len(meta['input_ids'])} checkpoint dtypes {checkpoint_dtype(model_dir)}  size {size / 1e6:.2f} MB")
    return checks


def check_against(case_dir, attn=None, log=print):
    case_dir = Path(case_dir)
    ref = load_file(case_dir / "expected.safetensors")
    refj = json.loads((case_dir / "expected.json").read_text())
    log(f"== check against {case_dir}")
    _, tensors, meta, checks = compute(case_dir / "model", case_dir, refj["prompt"], attn=attn, log=log)
    independent_check(case_dir / "model", tensors, meta, log=log)
    ok = True
    for k in sorted(ref):
        r = rel(tensors[k], ref[k]) if tensors[k].shape == ref[k].shape else float("inf")
        flag = "ok" if r < 1e-4 else "MISMATCH"
        ok &= r < 1e-4
        log(f"  {k:20s} {tuple(ref[k].shape)!s:16s} max|diff|/max|ref| = {r:.3e}  {flag}")
    for k in ["prompt_string", "input_ids", "generated_ids", "generated_text", "num_image_tokens",
              "image_token_index", "vocab_size", "tokenizer_vocab", "decoder", "tensor_names"]:
        same = meta[k] == refj.get(k)
        ok &= same
        log(f"  {k:20s} {'equal' if same else 'DIFFERENT: ' + repr(meta[k])[:80] + ' vs ' + repr(refj.get(k))[:80]}")
    log(f"  => {'PASS' if ok else 'FAIL'}")
    return ok


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*", help=f"case names: {', '.join(CASES)}")
    ap.add_argument("--all", action="store_true", help=f"make {', '.join(NEW_CASES)}")
    ap.add_argument("--out", default=str(FIXTURES), help="output root (default tests/fixtures)")
    ap.add_argument("--check-against", action="append", default=[], metavar="DIR",
                    help="recompute a case folder from its model/images/prompt and compare")
    ap.add_argument("--attn", default=None, help="attention implementation for --check-against (eager/sdpa)")
    ap.add_argument("--seg", action="store_true",
                    help="also make tests/fixtures/seg: big_vision's mask decoder (scripts/seg_fixture.py)")
    args = ap.parse_args()
    torch.set_num_threads(min(8, os.cpu_count() or 1))

    if args.seg:
        sys.path.insert(0, str(Path(__file__).resolve().parent))
        import seg_fixture
        sys.argv = [sys.argv[0], "--out", str(Path(args.out) / "seg")]
        seg_fixture.main()
    ok = True
    for d in args.check_against:
        ok &= check_against(d, attn=args.attn)
    names = list(NEW_CASES) if args.all else []
    names += [c for c in args.cases if c not in names]
    for n in names:
        if n not in CASES:
            sys.exit(f"unknown case {n}; known: {', '.join(CASES)}")
        if n in ("mqa", "gqa") and Path(args.out).resolve() == FIXTURES.resolve():
            sys.exit(f"refusing to overwrite the shared {n} fixture; pass --out DIR")
        make_case(n, args.out)
    if not names and not args.check_against and not args.seg:
        ap.print_help()
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
