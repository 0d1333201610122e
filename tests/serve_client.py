"""Drives `paligemma serve` with the official `openai` Python client (and raw HTTP for the
malformed requests a client library would never send). Run by tests/serve.rs:

    python3 tests/serve_client.py URL SERVER_PID expectations.json

expectations.json: [{"image": path, "prompt": str, "max_tokens": n, "generated_ids": [...],
"text": str}], what the command line printed for the same requests. Exits non-zero with a
message on the first failure; prints what it checked.
"""

import base64
import concurrent.futures as cf
import json
import sys
import time
import urllib.error
import urllib.request

import openai
from openai import OpenAI

URL, PID, EXPECT = sys.argv[1], int(sys.argv[2]), sys.argv[3]
client = OpenAI(base_url=URL + "/v1", api_key="unused", max_retries=0, timeout=300)


def data_uri(path):
    with open(path, "rb") as f:
        mime = "image/png" if path.endswith(".png") else "image/jpeg"
        return f"data:{mime};base64," + base64.b64encode(f.read()).decode()


def messages(image_uri, prompt):
    return [
        {
            "role": "user",
            "content": [
                {"type": "text", "text": prompt},
                {"type": "image_url", "image_url": {"url": image_uri}},
            ],
        }
    ]


def ask(image_uri, prompt, max_tokens, **kw):
    r = client.chat.completions.create(
        model="paligemma", messages=messages(image_uri, prompt), max_tokens=max_tokens, **kw
    )
    ext = r.model_extra["paligemma"]
    return r, ext


def check(cond, what):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)


def rss_kb():
    """Resident memory of the server: anonymous + shared pages (lavapipe's GPU memory is
    host memory)."""
    with open(f"/proc/{PID}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return sum(int(fields[k].split()[0]) for k in ("RssAnon", "RssShmem"))


expect = json.load(open(EXPECT))
images = {e["image"]: data_uri(e["image"]) for e in expect}

# Models and health.
models = client.models.list()
check(len(models.data) == 1 and models.data[0].id, f"/v1/models: {models}")
with urllib.request.urlopen(URL + "/health") as r:
    check(json.load(r)["status"] == "ok", "/health")
print("models and health: ok")

# The same ids and text as the command line, whole and streamed.
for e in expect:
    r, ext = ask(images[e["image"]], e["prompt"], e["max_tokens"])
    check(ext["generated_ids"] == e["generated_ids"], f"ids {ext['generated_ids']} != CLI {e}")
    check(r.choices[0].message.content == e["text"], f"text {r.choices[0].message.content!r}")
    check(r.usage.completion_tokens == len(e["generated_ids"]), f"usage {r.usage}")
    check(r.choices[0].finish_reason in ("stop", "length"), f"finish {r.choices[0]}")
    if e["prompt"].startswith("detect"):
        check("detections" in ext, f"no detections for {e['prompt']}: {ext}")
    pieces, last = [], None
    for chunk in client.chat.completions.create(
        model="paligemma",
        messages=messages(images[e["image"]], e["prompt"]),
        max_tokens=e["max_tokens"],
        stream=True,
    ):
        if chunk.choices and chunk.choices[0].delta.content:
            pieces.append(chunk.choices[0].delta.content)
        last = chunk
    check("".join(pieces) == e["text"], f"streamed {pieces!r} != {e['text']!r}")
    check(last.choices[0].finish_reason in ("stop", "length"), f"last chunk {last}")
    check(last.model_extra["paligemma"]["generated_ids"] == e["generated_ids"], "stream ids")
    check(last.usage.completion_tokens == len(e["generated_ids"]), f"stream usage {last.usage}")
print(f"{len(expect)} requests equal the command line, whole and streamed: ok")

# A seeded sampled request is reproducible.
a = ask(images[expect[0]["image"]], "caption en", 6, temperature=0.9, seed=7)[1]
b = ask(images[expect[0]["image"]], "caption en", 6, temperature=0.9, seed=7)[1]
check(a["generated_ids"] == b["generated_ids"], "seeded sampling differs between runs")
print("seeded sampling reproducible: ok")

# OpenAI's `stop`: the answer ends before the first stop string, whole and streamed.
e = max(expect, key=lambda e: len(e["text"]))
cut = len(e["text"]) // 2
stop_at = e["text"][cut : cut + 3]
want = e["text"][: e["text"].find(stop_at)]
r, ext = ask(images[e["image"]], e["prompt"], e["max_tokens"], stop=[stop_at, "never seen"])
check(r.choices[0].message.content == want, f"stop {stop_at!r}: {r.choices[0].message.content!r}")
check(r.choices[0].finish_reason == "stop", f"stop: finish {r.choices[0].finish_reason}")
check(ext["generated_ids"] == e["generated_ids"][: len(ext["generated_ids"])], "stop: ids")
streamed = "".join(
    c.choices[0].delta.content or ""
    for c in client.chat.completions.create(
        model="paligemma",
        messages=messages(images[e["image"]], e["prompt"]),
        max_tokens=e["max_tokens"],
        stop=stop_at,
        stream=True,
    )
    if c.choices
)
check(streamed == want, f"stop, streamed: {streamed!r} != {want!r}")
print(f"stop {stop_at!r} ends the answer whole and streamed: ok")

# logprobs: one entry per token, the chosen (greedy: the likeliest) and the top 3, whole and
# streamed alike; none unless asked for.
check(r.choices[0].logprobs is None, f"logprobs not asked for: {r.choices[0].logprobs}")
r, ext = ask(images[e["image"]], e["prompt"], e["max_tokens"], logprobs=True, top_logprobs=3)
content = r.choices[0].logprobs.content
check([t.model_extra["id"] for t in content] == ext["generated_ids"], "logprobs: one per token")
for t in content:
    check(len(t.top_logprobs) == 3 and t.logprob <= 0, f"logprobs entry {t}")
    check(abs(t.logprob - t.top_logprobs[0].logprob) < 1e-6, f"greedy is the likeliest: {t}")
    check(t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob, f"top sorted: {t}")
    check(list(t.token.encode()) == t.bytes or len(t.bytes) == 1, f"bytes {t}")
streamed = [
    t
    for c in client.chat.completions.create(
        model="paligemma",
        messages=messages(images[e["image"]], e["prompt"]),
        max_tokens=e["max_tokens"],
        logprobs=True,
        top_logprobs=3,
        stream=True,
    )
    if c.choices and c.choices[0].logprobs
    for t in c.choices[0].logprobs.content
]
check([t.model_dump() for t in streamed] == [t.model_dump() for t in content], "streamed logprobs")
print(f"logprobs and top_logprobs for {len(content)} tokens, whole and streamed: ok")

# 32 concurrent clients, different prompts and lengths, each equal to its sequential answer.
prompts = ["caption en", "detect cat", "answer en what is it?", "ocr"]
jobs = [
    (list(images)[i % len(images)], prompts[i % len(prompts)], 2 + (i * 5) % 9)
    for i in range(32)
]
sequential = [ask(images[img], p, n)[1]["generated_ids"] for img, p, n in jobs]
with cf.ThreadPoolExecutor(32) as pool:
    concurrent = list(pool.map(lambda j: ask(images[j[0]], j[1], j[2])[1]["generated_ids"], jobs))
for i, (s, c) in enumerate(zip(sequential, concurrent)):
    check(s == c, f"concurrent job {i} {jobs[i][1:]}: {c} != sequential {s}")
print("32 concurrent clients equal their sequential answers: ok")

# Bad requests: OpenAI-style JSON errors with 4xx, and the server stays up.
good = messages(images[expect[0]["image"]], "caption en")
not_image = "data:image/png;base64," + base64.b64encode(b"this is not a picture").decode()


def raw(body, content_type="application/json"):
    req = urllib.request.Request(
        URL + "/v1/chat/completions",
        data=body,
        headers={"Content-Type": content_type},
    )
    try:
        with urllib.request.urlopen(req) as r:
            return r.status, json.load(r)
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def body(**kw):
    return json.dumps({"model": "paligemma", "messages": good, **kw}).encode()


battery = [
    ("malformed JSON", b'{"messages": [', 400),
    ("not an object", b"[1, 2]", 400),
    ("no messages", b"{}", 400),
    ("no image", json.dumps({"messages": [{"role": "user", "content": "caption en"}]}).encode(), 400),
    ("bad base64", body(messages=messages("data:image/png;base64,@@notbase64@@", "caption en")), 400),
    ("not an image", body(messages=messages(not_image, "caption en")), 400),
    ("remote url", body(messages=messages("https://example.com/cat.jpg", "caption en")), 400),
    ("local path without the flag", body(messages=messages("/etc/passwd", "caption en")), 400),
    ("past the context", body(max_tokens=10**6), 400),
    ("temperature out of range", body(temperature=5), 400),
    ("temperature not a number", body(temperature="hot"), 400),
    ("top_p out of range", body(top_p=0), 400),
    ("max_tokens zero", body(max_tokens=0), 400),
    ("max_tokens negative", body(max_tokens=-3), 400),
    ("n > 1", body(n=3), 400),
    ("top_logprobs", body(top_logprobs=2), 400),
    ("five stop strings", body(stop=["a", "b", "c", "d", "e"]), 400),
    ("an empty stop string", body(stop=""), 400),
    ("oversized body", b'{"messages": "' + b"x" * (3 << 20) + b'"}', 413),
]
for what, payload, status in battery:
    code, err = raw(payload)
    check(code == status, f"{what}: status {code}, wanted {status}: {err}")
    check(
        isinstance(err, dict) and isinstance(err.get("error", {}).get("message"), str),
        f"{what}: not an OpenAI-style error: {err}",
    )
with urllib.request.urlopen(URL + "/health") as r:
    check(r.status == 200, "health after the battery")
print(f"{len(battery)} bad requests answered with 4xx JSON errors: ok")

# A GET on the completions route: 405 with an OpenAI-style body.
try:
    urllib.request.urlopen(URL + "/v1/chat/completions")
    check(False, "GET on the completions route answered")
except urllib.error.HTTPError as err:
    got = json.loads(err.read() or b"null")
    check(err.code == 405 and isinstance(got, dict) and "error" in got, f"GET: {err.code} {got}")
# `image_url` as a bare string, as some clients send it.
e = expect[0]
plain = [{"role": "user", "content": [
    {"type": "text", "text": e["prompt"]},
    {"type": "image_url", "image_url": images[e["image"]]},
]}]
code, got = raw(json.dumps({"messages": plain, "max_tokens": e["max_tokens"]}).encode())
check(code == 200 and got["paligemma"]["generated_ids"] == e["generated_ids"], f"plain image_url: {code} {got}")
print("GET answered 405 with a JSON error; a bare-string image_url accepted: ok")

# A streaming client that goes away mid-answer frees its slot; the server goes on.
req = urllib.request.Request(
    URL + "/v1/chat/completions",
    data=body(stream=True, max_tokens=4000),
    headers={"Content-Type": "application/json"},
)
resp = urllib.request.urlopen(req)
check(resp.readline().startswith(b"data: "), "first streamed event")
resp.close()
again = ask(images[expect[0]["image"]], expect[0]["prompt"], expect[0]["max_tokens"])[1]
check(again["generated_ids"] == expect[0]["generated_ids"], "answer after a disconnect")
print("a disconnecting client leaves the server answering: ok")

# Memory stays flat over 1000 requests (after a warm-up of 100).
def one(i):
    img, p, _ = jobs[i % len(jobs)]
    return ask(images[img], p, 2)[1]["generated_ids"]


with cf.ThreadPoolExecutor(16) as pool:
    list(pool.map(one, range(100)))
    before = rss_kb()
    t = time.time()
    list(pool.map(one, range(1000)))
    after = rss_kb()
growth = (after - before) / 1024
print(f"1000 requests in {time.time() - t:.1f} s; server RSS {before / 1024:.1f} -> {after / 1024:.1f} MB")
check(growth < 24, f"memory grew by {growth:.1f} MB over 1000 requests")
print("memory flat over 1000 requests: ok")
