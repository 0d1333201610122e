"""A soak test of `paligemma serve`: many clients at once, for a bounded time or for hours.

    python3 tests/soak.py URL SERVER_PID [--seconds S | --minutes M] [--clients 32]

32 clients (by default) loop over a mix: whole and streamed answers, greedy and seeded sampled,
caption and detect prompts, streams read slowly, streams cancelled after two chunks, malformed
and out-of-range
requests; the server is started small (`--max-batch 8 --max-queue 8`) so bursts also meet a full
queue (503 with Retry-After). Checks, failing with a message:
- every completed answer equals the same request's answer alone (sent one at a time before the
  load: greedy and seeded sampling are deterministic, whatever the batch);
- no request is lost: each gets an answer or an error, and the server's /metrics counts
  (requests by status) equal the client's;
- the server's resident memory (anonymous + shared: lavapipe's GPU memory is host memory) after
  the run is within the stated bound of what it was after warm-up.
Prints the figures: requests, outcomes by kind, RSS at warm-up and end, p50/p99 time to first
token of streamed answers.
"""

import argparse
import base64
import concurrent.futures as cf
import http.client
import json
import random
import sys
import threading
import time
import urllib.parse
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RSS_BOUND_MB = 16  # growth allowed between warm-up and the end


def parse_args():
    p = argparse.ArgumentParser()
    p.add_argument("url")
    p.add_argument("pid", type=int)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--minutes", type=float, help="the long mode: run this many minutes")
    p.add_argument("--clients", type=int, default=32)
    return p.parse_args()


ARGS = parse_args()
DURATION = ARGS.minutes * 60 if ARGS.minutes else ARGS.seconds
HOST = urllib.parse.urlparse(ARGS.url).netloc


def check(cond, what):
    if not cond:
        print("FAILED:", what, file=sys.stderr)
        sys.exit(1)


def rss_mb():
    with open(f"/proc/{ARGS.pid}/status") as f:
        fields = dict(line.split(":", 1) for line in f)
    return sum(int(fields[k].split()[0]) for k in ("RssAnon", "RssShmem")) / 1024


def image(name):
    data = (ROOT / "tests" / "fixtures" / "mqa" / name).read_bytes()
    mime = "image/png" if name.endswith(".png") else "image/jpeg"
    return f"data:{mime};base64," + base64.b64encode(data).decode()


IMAGES = [image("image.png"), image("photo.jpg")]
# (prompt, image, max_tokens, sampling): each a request whose answer is fixed.
TEMPLATES = [
    ("caption en", 0, 12, {}),
    ("caption en", 1, 20, {}),
    ("detect cat", 0, 8, {}),
    ("answer en what is this?", 1, 16, {}),
    ("caption en", 0, 16, {"temperature": 0.9, "seed": 1}),
    ("caption es", 1, 10, {"temperature": 1.3, "top_p": 0.9, "seed": 7}),
    ("detect dog", 1, 12, {"temperature": 0.7, "top_k": 40, "seed": 3}),
]


def body(t, stream=False, max_tokens=None):
    prompt, img, n, sampling = TEMPLATES[t]
    content = [{"type": "text", "text": prompt}, {"type": "image_url", "image_url": {"url": IMAGES[img]}}]
    return json.dumps(
        {"messages": [{"role": "user", "content": content}], "max_tokens": max_tokens or n,
         "stream": stream, **sampling}
    )


def post(payload, timeout=300):
    """(status, response) with the connection; the caller reads and closes."""
    conn = http.client.HTTPConnection(HOST, timeout=timeout)
    conn.request("POST", "/v1/chat/completions", payload, {"Content-Type": "application/json"})
    return conn, conn.getresponse()


def whole(t):
    conn, r = post(body(t))
    data = r.read()
    conn.close()
    return r.status, r.getheader("Retry-After"), data


def streamed(t, cancel_after=None, slow=False):
    """(status, text, ids, seconds to the first content) of a streamed answer, or None ids when
    it was cancelled after `cancel_after` chunks; `slow` reads a chunk every 50 ms."""
    t0 = time.monotonic()
    conn, r = post(body(t, stream=True, max_tokens=200 if cancel_after else None))
    if r.status != 200:
        data = r.read()
        conn.close()
        return r.status, data, None, None
    text, ids, first, chunks = "", None, None, 0
    for line in r:
        line = line.decode().strip()
        if not line.startswith("data: ") or line == "data: [DONE]":
            continue
        event = json.loads(line[6:])
        check("error" not in event, f"a stream failed: {event}")
        chunks += 1
        if slow:
            time.sleep(0.05)
        if cancel_after and chunks >= cancel_after:
            conn.close()  # the client goes away mid-answer
            return 499, "", None, None
        delta = event["choices"][0]["delta"].get("content")
        if delta:
            first = first or time.monotonic() - t0
            text += delta
        if "paligemma" in event:
            ids = event["paligemma"]["generated_ids"]
    conn.close()
    return 200, text, ids, first


def reference():
    refs = []
    for t in range(len(TEMPLATES)):
        status, _, data = whole(t)
        check(status == 200, f"template {t}: {status} {data[:200]}")
        r = json.loads(data)
        refs.append((r["choices"][0]["message"]["content"], r["paligemma"]["generated_ids"]))
    return refs


BAD = [
    ("{", 400),
    (json.dumps({"messages": []}), 400),
    (body(0).replace('"max_tokens": 12', '"max_tokens": 12, "temperature": 3'), 400),
]


def client(refs, deadline, seed, tally, ttfts, lock):
    rng = random.Random(seed)
    while time.monotonic() < deadline:
        kind = rng.choices(["whole", "stream", "slow", "cancel", "bad"], [40, 35, 5, 10, 10])[0]
        t = rng.randrange(len(TEMPLATES))
        if kind == "whole":
            status, retry, data = whole(t)
            if status == 200:
                r = json.loads(data)
                got = (r["choices"][0]["message"]["content"], r["paligemma"]["generated_ids"])
                check(got == refs[t], f"template {t} under load: {got} != {refs[t]}")
            else:
                check(status == 503 and retry, f"whole: {status} {retry} {data[:200]}")
        elif kind in ("stream", "slow", "cancel"):
            cancel_after = 2 if kind == "cancel" else None
            status, text, ids, first = streamed(t, cancel_after, slow=kind == "slow")
            if status == 200 and kind == "cancel":
                pass  # it ended (`<eos>`) before the second chunk: nothing to compare
            elif status == 200:
                check((text, ids) == refs[t], f"stream of {t} under load: {(text, ids)} != {refs[t]}")
                with lock:
                    ttfts.append(first)
            else:
                check(status in (499, 503), f"stream: {status} {text[:200]}")
        else:
            payload, want = BAD[rng.randrange(len(BAD))]
            conn, r = post(payload)
            r.read()
            conn.close()
            status = r.status
            check(status == want, f"bad request answered {status}")
        with lock:
            tally[(kind, status)] += 1
        if status == 503:
            time.sleep(rng.uniform(0.2, 1.0))  # as a client honouring Retry-After would, sooner


def server_counts():
    conn = http.client.HTTPConnection(HOST, timeout=30)
    conn.request("GET", "/metrics")
    text = conn.getresponse().read().decode()
    conn.close()
    counts = Counter()
    for line in text.splitlines():
        if line.startswith("paligemma_requests_total{"):
            status = line.split('"')[1]
            counts[int(status)] += int(float(line.split()[-1]))
    return counts


def main():
    refs = reference()
    tally, ttfts, lock = Counter(), [], threading.Lock()
    # Warm-up: a short burst, then the memory the run is measured against.
    with cf.ThreadPoolExecutor(ARGS.clients) as pool:
        warm = time.monotonic() + min(10, DURATION / 6)
        list(pool.map(lambda i: client(refs, warm, 1000 + i, tally, ttfts, lock), range(ARGS.clients)))
    rss_warm = rss_mb()
    t0 = time.monotonic()
    with cf.ThreadPoolExecutor(ARGS.clients) as pool:
        deadline = t0 + DURATION
        list(pool.map(lambda i: client(refs, deadline, i, tally, ttfts, lock), range(ARGS.clients)))
    took = time.monotonic() - t0
    rss_end = rss_mb()
    # The server counts a dropped stream when it notices; give it a moment.
    sent = Counter()
    for (kind, status), n in tally.items():
        sent[status] += n
    sent[200] += len(TEMPLATES)
    # A stream closed after its last chunk left counts as answered by the server (200) and
    # cancelled by the client (499): those two are compared together.
    same = lambda c: {s: n for s, n in c.items() if s not in (200, 499)} | {"200+499": c[200] + c[499]}
    for _ in range(50):
        counted = server_counts()
        if same(counted) == same(sent):
            break
        time.sleep(0.1)
    check(same(counted) == same(sent), f"the server counted {dict(counted)}, the clients sent {dict(sent)}")
    ttfts.sort()
    p = lambda q: ttfts[min(len(ttfts) - 1, int(q * len(ttfts)))] * 1e3 if ttfts else float("nan")
    total = sum(tally.values())
    print(f"{total} requests from {ARGS.clients} clients in {took:.0f} s (+ warm-up), none lost")
    for (kind, status), n in sorted(tally.items()):
        print(f"  {kind:7} {status}: {n}")
    print(f"time to first token, streamed: p50 {p(0.5):.0f} ms, p99 {p(0.99):.0f} ms ({len(ttfts)} answers)")
    print(f"server RSS: {rss_warm:.0f} MB after warm-up, {rss_end:.0f} MB at the end (bound +{RSS_BOUND_MB} MB)")
    check(rss_end - rss_warm <= RSS_BOUND_MB, f"RSS grew {rss_end - rss_warm:.0f} MB")
    check(tally[("whole", 200)] and tally[("stream", 200)], "no answer completed")


main()
