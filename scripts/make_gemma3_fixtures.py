#!/usr/bin/env python3
"""Make tiny random Gemma 3 vision-language fixtures and what Hugging Face transformers computes.

Usage:
    python3 scripts/make_gemma3_fixtures.py                  # every case into tests/fixtures
    python3 scripts/make_gemma3_fixtures.py gemma3           # one case
    python3 scripts/make_gemma3_fixtures.py --out /tmp/fx    # elsewhere

Each case folder (tests/fixtures/<case>/) gets:
    model/config.json (the published checkpoints' form or transformers 5's, per case),
    model/*.safetensors, model/tokenizer.json, model/chat_template.jinja,
    image.png, photo.png (larger, not square: the bilinear resize), image2.png for two images,
    expected.json: the chat messages, input_ids as the processor lays them out, token_type_ids,
        generated_ids (greedy, 12 new tokens, no early stop), the same for a text-only prompt;
    expected.safetensors (f32): pixel_values [n_images, 3, S, S], vision_out [n_images, P, Dv],
        image_features [n_images, mm_tokens, D], prefill_logits [T, V], step_logits [12, V],
        text_prefill_logits, text_step_logits (the text-only prompt).

Everything is computed in float32 from the checkpoint as saved (16-bit weights upcast exactly).
The prefill passes token_type_ids (1 on image soft tokens), so each image's block of tokens is
bidirectional, as `generate` does on its first iteration; decode steps pass none.
"""

import argparse
import json
import math
import shutil
import sys
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from tokenizers import AddedToken, Tokenizer

import transformers
from safetensors import safe_open
from safetensors.torch import save_file
from transformers import (
    Gemma3Config,
    Gemma3ForConditionalGeneration,
    Gemma3Processor,
    PreTrainedTokenizerFast,
)
from transformers.models.gemma3.image_processing_pil_gemma3 import Gemma3ImageProcessorPil

sys.path.insert(0, str(Path(__file__).resolve().parent))
from make_fixtures import make_images, rel  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = ROOT / "tests" / "fixtures"
BASE_TOKENIZER = FIXTURES / "mqa" / "model" / "tokenizer.json"
VOCAB_SIZE = 1600
MAX_NEW_TOKENS = 12
# Gemma 3's special tokens, added after the base tokenizer's 1556 (ids 1556..1560).
SPECIALS = ["<start_of_turn>", "<end_of_turn>", "<start_of_image>", "<end_of_image>", "<image_soft_token>"]

# Gemma 3's chat template, as google/gemma-3-4b-it ships it (tokenizer_config.json).
CHAT_TEMPLATE = """{{ bos_token }}
{%- if messages[0]['role'] == 'system' -%}
    {%- if messages[0]['content'] is string -%}
        {%- set first_user_prefix = messages[0]['content'] + '\n\n' -%}
    {%- else -%}
        {%- set first_user_prefix = messages[0]['content'][0]['text'] + '\n\n' -%}
    {%- endif -%}
    {%- set loop_messages = messages[1:] -%}
{%- else -%}
    {%- set first_user_prefix = "" -%}
    {%- set loop_messages = messages -%}
{%- endif -%}
{%- for message in loop_messages -%}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) -%}
        {{ raise_exception("Conversation roles must alternate user/assistant/user/assistant/...") }}
    {%- endif -%}
    {%- if (message['role'] == 'assistant') -%}
        {%- set role = "model" -%}
    {%- else -%}
        {%- set role = message['role'] -%}
    {%- endif -%}
    {{ '<start_of_turn>' + role + '\n' + (first_user_prefix if loop.first else "") }}
    {%- if message['content'] is string -%}
        {{ message['content'] | trim }}
    {%- elif message['content'] is iterable -%}
        {%- for item in message['content'] -%}
            {%- if item['type'] == 'image' -%}
                {{ '<start_of_image>' }}
            {%- elif item['type'] == 'text' -%}
                {{ item['text'] | trim }}
            {%- endif -%}
        {%- endfor -%}
    {%- else -%}
        {{ raise_exception("Invalid content type") }}
    {%- endif -%}
    {{ '<end_of_turn>\n' }}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{'<start_of_turn>model\n'}}
{%- endif -%}
"""


def vision(hidden, heads, layers, image, patch, inter):
    return dict(
        model_type="siglip_vision_model", hidden_size=hidden, num_attention_heads=heads,
        num_hidden_layers=layers, image_size=image, patch_size=patch, intermediate_size=inter,
        layer_norm_eps=1e-6, vision_use_head=False,
    )


CASES = {
    "gemma3": dict(
        seed=3,
        vision=vision(32, 2, 2, 32, 4, 64),  # 8x8 patches, pooled 2x2 to 16 tokens
        mm_tokens=16,
        # The published configs' form: rope_theta, rope_local_base_freq, sliding_window_pattern,
        # rope_scaling, most fields absent.
        text=dict(
            model_type="gemma3_text", hidden_size=64, intermediate_size=128, num_hidden_layers=6,
            num_attention_heads=4, num_key_value_heads=2, head_dim=16, query_pre_attn_scalar=24,
            sliding_window=8, sliding_window_pattern=3, rope_theta=1_000_000.0,
            rope_local_base_freq=10_000.0, rope_scaling={"rope_type": "linear", "factor": 8.0},
            vocab_size=VOCAB_SIZE, max_position_embeddings=512,
        ),
        form="published",
        dtype="float32",
        images=1,
        messages=[{"role": "user", "content": [
            {"type": "image"}, {"type": "text", "text": "What is in this picture?"}]}],
        text_messages=[
            {"role": "system", "content": "Answer briefly."},
            {"role": "user", "content": "Where is the cat?"},
            {"role": "assistant", "content": "On the mat."},
            {"role": "user", "content": "And the dog?"},
        ],
        photo=(83, 61),
        covers="Gemma 3 at tiny size, f32, the published config form (rope_theta 1e6 with linear "
        "scaling 8 on full layers, rope_local_base_freq 1e4 on sliding ones, sliding_window_pattern "
        "3: s s f s s f), sliding_window 8 shorter than the 16-token image block and the prompt, "
        "query_pre_attn_scalar 24 != head_dim 16, GQA 4/2; a text-only multi-turn conversation "
        "with a system turn",
    ),
    "gemma3_two": dict(
        seed=33,
        vision=vision(48, 4, 2, 24, 4, 96),  # 6x6 patches, pooled 3x3 to 4 tokens
        mm_tokens=4,
        # transformers 5's form: layer_types and rope_parameters.
        text=dict(
            model_type="gemma3_text", hidden_size=80, intermediate_size=160, num_hidden_layers=3,
            num_attention_heads=2, num_key_value_heads=1, head_dim=32, query_pre_attn_scalar=32,
            sliding_window=6,
            layer_types=["sliding_attention", "full_attention", "sliding_attention"],
            rope_parameters={
                "sliding_attention": {"rope_type": "default", "rope_theta": 10_000.0},
                "full_attention": {"rope_type": "linear", "factor": 4.0, "rope_theta": 500_000.0},
            },
            vocab_size=VOCAB_SIZE, max_position_embeddings=512,
        ),
        form="transformers5",
        dtype="bfloat16",
        images=2,
        messages=[{"role": "user", "content": [
            {"type": "image"}, {"type": "image"},
            {"type": "text", "text": "  Compare the two pictures.  "}]}],
        text_messages=[{"role": "user", "content": "Say something."}],
        photo=(40, 57),
        covers="two images in one prompt (two bidirectional blocks of 4 tokens), bf16 weights, "
        "transformers 5's config form (layer_types, rope_parameters with linear factor 4 and "
        "theta 5e5 on the full layer), MQA, sliding_window 6, pooled 3x3, new tensor names",
    ),
}


def make_tokenizer(model_dir):
    tok = Tokenizer.from_file(str(BASE_TOKENIZER))
    base = tok.get_vocab_size(with_added_tokens=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in SPECIALS])
    tok.save(str(model_dir / "tokenizer.json"))
    ids = {s: tok.token_to_id(s) for s in SPECIALS}
    assert ids["<start_of_turn>"] == base, (ids, base)
    return ids


def hf_tokenizer(model_dir):
    return PreTrainedTokenizerFast(
        tokenizer_file=str(model_dir / "tokenizer.json"),
        bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", unk_token="<unk>",
        extra_special_tokens={
            "boi_token": "<start_of_image>", "eoi_token": "<end_of_image>",
            "image_token": "<image_soft_token>",
        },
    )


def build_config(case, ids):
    text = dict(case["text"])
    return Gemma3Config(
        vision_config=case["vision"], text_config=text, mm_tokens_per_image=case["mm_tokens"],
        boi_token_index=ids["<start_of_image>"], eoi_token_index=ids["<end_of_image>"],
        image_token_index=ids["<image_soft_token>"], bos_token_id=2,
        eos_token_id=[1, ids["<end_of_turn>"]], pad_token_id=0,
    )


@torch.no_grad()
def randomize(model, seed):
    """Matrices ~ N(0, (1.5/sqrt(fan_in))^2), norm weights and biases ~ N(0, 0.3^2), position
    embedding ~ N(0, 0.2^2), token embedding ~ N(0, 0.05^2); the projection matrix [Dv, D] is
    scaled by its input width Dv. Deterministic given `seed` (sorted names)."""
    g = torch.Generator().manual_seed(seed)
    for name, p in sorted(model.named_parameters(), key=lambda kv: kv[0]):
        if name == "lm_head.weight":
            continue  # tied
        if "embed_tokens" in name:
            std = 0.05
        elif "position_embedding" in name:
            std = 0.2
        elif p.dim() == 1:
            std = 0.3
        elif name.endswith("mm_input_projection_weight"):
            std = 1.5 / math.sqrt(p.shape[0])
        else:
            std = 1.5 / math.sqrt(int(np.prod(p.shape[1:])))
        p.copy_(torch.randn(p.shape, generator=g, dtype=torch.float32) * std)


def renamed(name, form):
    """A saved tensor name (transformers 5.23 writes language_model.model.*, vision_tower.*,
    multi_modal_projector.*) in the case's layout: the published checkpoints'
    (language_model.model.*, vision_tower.vision_model.*, multi_modal_projector.*) or the newer
    one (model.language_model.*, model.vision_tower.*, model.multi_modal_projector.*)."""
    for pre, published, newer in (
            ("language_model.model.", "language_model.model.", "model.language_model."),
            ("vision_tower.vision_model.", "vision_tower.vision_model.", "model.vision_tower."),
            ("vision_tower.", "vision_tower.vision_model.", "model.vision_tower."),
            ("multi_modal_projector.", "multi_modal_projector.", "model.multi_modal_projector.")):
        if name.startswith(pre):
            return (published if form == "published" else newer) + name[len(pre):]
    raise ValueError(f"unexpected tensor name {name}")


def rewrite(model_dir, case):
    """Tensor names in the case's layout; for the published form, config.json's text_config as
    the hub's (terse, with rope_theta / rope_local_base_freq / sliding_window_pattern /
    rope_scaling)."""
    path = model_dir / "model.safetensors"
    with safe_open(path, "pt") as f:
        tensors = {renamed(k, case["form"]): f.get_tensor(k) for k in f.keys()}
    save_file(tensors, path, metadata={"format": "pt"})
    if case["form"] == "published":
        cfg = json.loads((model_dir / "config.json").read_text())
        cfg["text_config"] = dict(case["text"])
        (model_dir / "config.json").write_text(json.dumps(cfg, indent=2) + "\n")


def load_model(model_dir):
    model, info = Gemma3ForConditionalGeneration.from_pretrained(
        str(model_dir), dtype=torch.float32, output_loading_info=True)
    missing = [k for k in info.get("missing_keys", []) if "lm_head" not in k]
    if missing or info.get("unexpected_keys") or info.get("mismatched_keys"):
        raise RuntimeError(f"loading {model_dir}: {info}")
    return model.float().eval()


def make_processor(model_dir, cfg):
    s = cfg.vision_config.image_size
    ip = Gemma3ImageProcessorPil(size={"height": s, "width": s})
    return Gemma3Processor(image_processor=ip, tokenizer=hf_tokenizer(model_dir),
                           chat_template=CHAT_TEMPLATE, image_seq_length=cfg.mm_tokens_per_image)


@torch.no_grad()
def greedy(model, inputs):
    """Prefill (token_type_ids given: bidirectional image blocks) then MAX_NEW_TOKENS - 1 steps
    through the cache. -> prefill logits [T, V], step logits [12, V], ids."""
    ids = inputs["input_ids"]
    am = torch.ones_like(ids)
    extra = {k: inputs[k] for k in ("pixel_values", "token_type_ids") if k in inputs}
    out = model(input_ids=ids, attention_mask=am, use_cache=True, **extra)
    past, steps = out.past_key_values, [out.logits[0, -1].float()]
    gen = [int(steps[0].argmax())]
    for _ in range(MAX_NEW_TOKENS - 1):
        am = torch.cat([am, am.new_ones(1, 1)], 1)
        o = model(input_ids=torch.tensor([[gen[-1]]]), attention_mask=am, past_key_values=past, use_cache=True)
        past = o.past_key_values
        steps.append(o.logits[0, -1].float())
        gen.append(int(steps[-1].argmax()))
    g = model.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, min_new_tokens=MAX_NEW_TOKENS,
                       do_sample=False, eos_token_id=None)
    same = g[0, ids.shape[1]:].tolist() == gen
    return out.logits[0].float(), torch.stack(steps), gen, same


@torch.no_grad()
def compute(model_dir, case_dir, case, log=print):
    model = load_model(model_dir)
    proc = make_processor(model_dir, model.config)
    images = [Image.open(case_dir / n).convert("RGB") for n in image_names(case)]
    inputs = proc.apply_chat_template(
        case["messages"], add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt", images=images)
    # apply_chat_template with images= is not every version's API: check the layout.
    assert "pixel_values" in inputs and inputs["pixel_values"].shape[0] == len(images), inputs.keys()
    pv = inputs["pixel_values"].float()
    vision_out = model.model.vision_tower(pixel_values=pv).last_hidden_state
    features = model.model.get_image_features(pv).pooler_output
    prefill, steps, gen, same = greedy(model, inputs)
    text_inputs = proc.apply_chat_template(
        case["text_messages"], add_generation_prompt=True, tokenize=True, return_dict=True,
        return_tensors="pt")
    t_prefill, t_steps, t_gen, t_same = greedy(model, {"input_ids": text_inputs["input_ids"]})
    log(f"  generate() agrees: image prompt {same}, text prompt {t_same}")
    photo_pv = proc.image_processor(Image.open(case_dir / "photo.png"), return_tensors="pt")["pixel_values"]
    tok = proc.tokenizer
    tensors = {
        "pixel_values": pv, "photo_pixel_values": photo_pv.float(),
        "vision_out": vision_out, "image_features": features,
        "prefill_logits": prefill, "step_logits": steps,
        "text_prefill_logits": t_prefill, "text_step_logits": t_steps,
    }
    meta = dict(
        messages=case["messages"],
        prompt_string=proc.apply_chat_template(case["messages"], add_generation_prompt=True, tokenize=False),
        input_ids=inputs["input_ids"][0].tolist(),
        token_type_ids=inputs["token_type_ids"][0].tolist(),
        generated_ids=gen,
        generated_text=tok.decode(gen),
        text_messages=case["text_messages"],
        text_prompt_string=proc.apply_chat_template(case["text_messages"], add_generation_prompt=True, tokenize=False),
        text_input_ids=text_inputs["input_ids"][0].tolist(),
        text_generated_ids=t_gen,
        images=image_names(case),
        max_new_tokens=MAX_NEW_TOKENS,
        mm_tokens_per_image=model.config.mm_tokens_per_image,
        vocab_size=model.config.text_config.vocab_size,
        layer_types=model.config.text_config.layer_types,
        generate_agrees=[same, t_same],
        transformers_version=transformers.__version__,
        torch_version=torch.__version__,
    )
    srt = torch.cat([steps, t_steps]).sort(-1).values
    meta["min_top2_margin"] = float((srt[:, -1] - srt[:, -2]).min())
    return tensors, meta


def image_names(case):
    return ["image.png", "image2.png"][: case["images"]]


def make_case(name, out_root, log=print):
    case = CASES[name]
    case_dir = out_root / name
    model_dir = case_dir / "model"
    if case_dir.exists():
        shutil.rmtree(case_dir)
    model_dir.mkdir(parents=True)
    log(f"{name}: {case['covers']}")
    ids = make_tokenizer(model_dir)
    (model_dir / "chat_template.jinja").write_text(CHAT_TEMPLATE)
    torch.manual_seed(case["seed"])
    model = Gemma3ForConditionalGeneration(build_config(case, ids)).eval()
    randomize(model, case["seed"])
    model.to({"float32": torch.float32, "bfloat16": torch.bfloat16}[case["dtype"]])
    model.save_pretrained(str(model_dir))
    for extra in ("generation_config.json",):
        (model_dir / extra).unlink(missing_ok=True)
    rewrite(model_dir, case)
    make_images(case, case_dir, case["seed"])
    # The photo as PNG: lossless, so the resize is checked to the bit whatever JPEG decoder
    # reads it.
    Image.open(case_dir / "photo.jpg").convert("RGB").save(case_dir / "photo.png")
    (case_dir / "photo.jpg").unlink()
    if case["images"] > 1:
        shutil.move(case_dir / "image.png", case_dir / "first.png")
        make_images(case, case_dir, case["seed"] + 1)
        shutil.move(case_dir / "image.png", case_dir / "image2.png")
        shutil.move(case_dir / "first.png", case_dir / "image.png")
    tensors, meta = compute(model_dir, case_dir, case, log)
    meta = dict(case=name, covers=case["covers"], **meta)
    save_file({k: v.contiguous().float() for k, v in tensors.items()}, case_dir / "expected.safetensors")
    (case_dir / "expected.json").write_text(json.dumps(meta, indent=1) + "\n")
    log(f"  ids {meta['generated_ids']}, text ids {meta['text_generated_ids']}, "
        f"top-2 margin {meta['min_top2_margin']:.3g}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("cases", nargs="*", help=f"case names: {', '.join(CASES)}")
    ap.add_argument("--out", default=str(FIXTURES), help="output root (default tests/fixtures)")
    a = ap.parse_args()
    for name in a.cases or list(CASES):
        make_case(name, Path(a.out))


if __name__ == "__main__":
    main()
