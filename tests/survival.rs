//! What keeps a server up. `/metrics` counts what was sent. A server that loses its GPU
//! mid-generation under load: the answers in flight end with a
//! 503 (an SSE error event, then the end of the stream), `/health` turns 503 with the reason
//! while the model is made again on a new device, new requests get 503 with `Retry-After`, then
//! `/health` is 200 again and a request answers as before the loss. The loss is real:
//! `wgpu::Device::destroy`, which fires the device-lost callback a driver reset would.

mod common;

use std::io::{BufRead, BufReader};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::time::{Duration, Instant};

use paligemma::serve::engine::{Loaded, Reload};
use paligemma::serve::{Limits, ServerOptions, router, serve_until};
use paligemma::{LoadOptions, PaliGemma};
use serde_json::{Value, json};

fn body(max_tokens: usize, stream: bool) -> String {
    let png = std::fs::read(common::fixture_path("mqa/image.png")).unwrap();
    use base64::Engine as _;
    let url = format!(
        "data:image/png;base64,{}",
        base64::engine::general_purpose::STANDARD.encode(png)
    );
    json!({
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "caption en"},
            {"type": "image_url", "image_url": {"url": url}}]}],
        "max_tokens": max_tokens,
        "stream": stream,
    })
    .to_string()
}

/// (status, `Retry-After`, body) of a request, whatever its status.
fn call(req: ureq::Request, body: Option<&str>) -> (u16, Option<String>, String) {
    let response = match body {
        Some(b) => req.set("Content-Type", "application/json").send_string(b),
        None => req.call(),
    };
    let r = match response {
        Ok(r) | Err(ureq::Error::Status(_, r)) => r,
        Err(e) => panic!("{e}"),
    };
    let (status, retry) = (r.status(), r.header("Retry-After").map(str::to_string));
    (status, retry, r.into_string().unwrap())
}

fn generated_ids(url: &str) -> Value {
    let (status, _, text) = call(
        ureq::post(&format!("{url}/v1/chat/completions")),
        Some(&body(8, false)),
    );
    assert_eq!(status, 200, "{text}");
    serde_json::from_str::<Value>(&text).unwrap()["paligemma"]["generated_ids"].clone()
}

/// Held by each test that serves in-process: destroying a device (lavapipe) was seen to mark
/// another device of the same process lost, so the test that destroys one runs alone.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Starts the server on a free port; the reload waits for `go`.
fn start(go: mpsc::Receiver<()>, reloads: Arc<AtomicUsize>) -> (String, paligemma::Gpu) {
    start_with(go, reloads, Limits::default(), Duration::from_secs(30))
}

fn start_with(
    go: mpsc::Receiver<()>,
    reloads: Arc<AtomicUsize>,
    limits: Limits,
    body_timeout: Duration,
) -> (String, paligemma::Gpu) {
    let dir = common::fixture_path("mqa/model");
    let model = PaliGemma::load(&dir, &LoadOptions::default()).unwrap();
    let gpu = model.gpu().clone();
    let go = Mutex::new(go);
    let reload = Reload(Arc::new(move || {
        go.lock().unwrap().recv().ok();
        reloads.fetch_add(1, Ordering::SeqCst);
        let model = PaliGemma::load(&dir, &LoadOptions::default())?;
        Ok(Loaded {
            model,
            seg_decoder: None,
        })
    }));
    let opts = ServerOptions {
        reload: Some(reload),
        body_timeout,
        ..Default::default()
    };
    let app = router(Arc::new(model), opts).unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let forever = std::future::pending::<()>();
    std::thread::spawn(move || rt.block_on(serve_until(listener, app, limits, forever)));
    (url, gpu)
}

/// A streamed request: says when it has 3 tokens, then returns every `data:` payload.
fn stream(url: String, started: mpsc::Sender<()>) -> Vec<String> {
    let r = ureq::post(&format!("{url}/v1/chat/completions"))
        .set("Content-Type", "application/json")
        .send_string(&body(2000, true))
        .unwrap();
    let mut events = Vec::new();
    for line in BufReader::new(r.into_reader()).lines() {
        let Some(data) = line.unwrap().strip_prefix("data: ").map(str::to_string) else {
            continue;
        };
        events.push(data);
        if events.len() == 3 {
            started.send(()).unwrap();
        }
    }
    events
}

#[test]
fn a_lost_device_is_reloaded_and_the_server_answers_again() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (go, wait) = mpsc::channel();
    let reloads = Arc::new(AtomicUsize::new(0));
    let (url, gpu) = start(wait, reloads.clone());
    let before = generated_ids(&url);

    let (started, started_rx) = mpsc::channel();
    let streams: Vec<_> = (0..4)
        .map(|_| {
            let (url, started) = (url.clone(), started.clone());
            std::thread::spawn(move || stream(url, started))
        })
        .collect();
    for _ in 0..4 {
        started_rx
            .recv_timeout(Duration::from_secs(120))
            .expect("4 streams under way");
    }
    gpu.device().destroy();

    for s in streams {
        let events = s.join().unwrap();
        let (last, error) = (events.last().unwrap(), &events[events.len() - 2]);
        assert_eq!(last, "[DONE]");
        let error: Value = serde_json::from_str(error).unwrap();
        let message = error["error"]["message"].as_str().unwrap_or_default();
        assert!(
            message.contains("lost") && message.contains("reloading"),
            "{error}"
        );
        eprintln!("a stream of {} events ended with {error}", events.len());
    }
    let (status, retry, text) = call(ureq::get(&format!("{url}/health")), None);
    assert_eq!((status, retry.as_deref()), (503, Some("2")), "{text}");
    let health: Value = serde_json::from_str(&text).unwrap();
    assert_eq!(health["status"], "recovering", "{health}");
    assert!(
        health["error"]["message"]
            .as_str()
            .unwrap()
            .contains("lost"),
        "{health}"
    );
    eprintln!("/health while reloading: {health}");
    let (status, retry, text) = call(
        ureq::post(&format!("{url}/v1/chat/completions")),
        Some(&body(4, false)),
    );
    assert_eq!((status, retry.as_deref()), (503, Some("2")), "{text}");

    go.send(()).unwrap();
    let t0 = Instant::now();
    while call(ureq::get(&format!("{url}/health")), None).0 != 200 {
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "never healthy again"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(reloads.load(Ordering::SeqCst), 1);
    assert_eq!(
        generated_ids(&url),
        before,
        "the reloaded model answers otherwise"
    );
    let (_, _, metrics) = call(ureq::get(&format!("{url}/metrics")), None);
    assert!(
        metrics.contains("paligemma_device_resets_total 1"),
        "{metrics}"
    );
}

/// The value of an exposition line `name{labels} value` (0 when absent).
fn metric(text: &str, name: &str) -> f64 {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(0.0)
}

#[test]
fn metrics_count_the_requests_sent() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (_go, wait) = mpsc::channel();
    let (url, _gpu) = start(wait, Arc::new(AtomicUsize::new(0)));
    let completions = format!("{url}/v1/chat/completions");
    let mut tokens = 0;
    for max_tokens in [3, 5, 7] {
        let (status, _, text) = call(ureq::post(&completions), Some(&body(max_tokens, false)));
        assert_eq!(status, 200);
        let v: Value = serde_json::from_str(&text).unwrap();
        tokens += v["usage"]["completion_tokens"].as_u64().unwrap();
    }
    let (status, _, text) = call(ureq::post(&completions), Some(&body(4, true)));
    assert_eq!(status, 200);
    tokens += text.lines().filter(|l| l.contains("\"content\"")).count() as u64;
    for bad in ["{", r#"{"messages":[]}"#] {
        assert_eq!(call(ureq::post(&completions), Some(bad)).0, 400);
    }
    let (status, _, text) = call(ureq::get(&format!("{url}/metrics")), None);
    assert_eq!(status, 200);
    eprintln!("{text}");
    let m = |name: &str| metric(&text, name);
    assert_eq!(m("paligemma_requests_total{status=\"200\"}"), 4.0);
    assert_eq!(m("paligemma_requests_total{status=\"400\"}"), 2.0);
    assert_eq!(m("paligemma_generation_tokens_total"), tokens as f64);
    assert_eq!(m("paligemma_prompt_tokens_total"), 4.0 * 19.0);
    assert_eq!(m("paligemma_time_to_first_token_seconds_count"), 4.0);
    assert_eq!(
        m("paligemma_time_per_output_token_seconds_count"),
        (tokens - 4) as f64
    );
    assert_eq!(
        m("paligemma_requests_waiting") + m("paligemma_requests_running"),
        0.0
    );
    assert_eq!(m("paligemma_device_resets_total"), 0.0);
    assert!(m("paligemma_gpu_memory_bytes") > 0.0);
}

/// `paligemma batch` whose device is lost at its 4th step reloads the model and answers every
/// image as a run without the loss does.
#[test]
fn a_batch_whose_device_is_lost_resumes_on_a_new_one() {
    let dir = std::env::temp_dir().join(format!("paligemma-lost-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for i in 0..6 {
        let src = ["mqa/image.png", "mqa/photo.jpg"][i % 2];
        let ext = src.rsplit('.').next().unwrap();
        std::fs::copy(common::fixture_path(src), dir.join(format!("{i}.{ext}"))).unwrap();
    }
    let run = |out: &str, lose: Option<&str>| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_paligemma"));
        cmd.args(["batch", "--model"])
            .arg(common::fixture_path("mqa/model"))
            .args(["--prompt", "caption en", "--max-batch", "3", "--out"])
            .arg(dir.join(out))
            .arg(&dir);
        if let Some(step) = lose {
            cmd.env("PALIGEMMA_TEST_LOSE_DEVICE_AT_STEP", step);
        }
        let o = cmd.output().unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr).to_string();
        assert!(o.status.success(), "{stderr}");
        let answers: std::collections::BTreeMap<String, Value> =
            std::fs::read_to_string(dir.join(out))
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str::<Value>(l).unwrap())
                .map(|v| {
                    (
                        v["image"].as_str().unwrap().to_string(),
                        v["generated_ids"].clone(),
                    )
                })
                .collect();
        (answers, stderr)
    };
    let (want, _) = run("plain.jsonl", None);
    let (got, stderr) = run("lost.jsonl", Some("3"));
    assert!(
        stderr.contains("device lost") && stderr.contains("reloading"),
        "{stderr}"
    );
    assert!(stderr.contains("6 answered"), "{stderr}");
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A raw connection to the server at `url` that gives up reading after `wait`.
fn connect(url: &str, wait: Duration) -> std::net::TcpStream {
    let s = std::net::TcpStream::connect(url.trim_start_matches("http://")).unwrap();
    s.set_read_timeout(Some(wait)).unwrap();
    s
}

/// What the server sends before closing or going quiet (empty if nothing).
fn reply(mut s: &std::net::TcpStream) -> String {
    use std::io::Read;
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    String::from_utf8_lossy(&buf).into()
}

#[test]
fn trickling_clients_are_cut_off_and_connections_are_limited() {
    let _alone = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    use std::io::Write;
    let limits = Limits {
        max_connections: 2,
        header_timeout: Duration::from_secs(1),
        ..Limits::default()
    };
    let (_go, wait) = mpsc::channel();
    let zero = Arc::new(AtomicUsize::new(0));
    let (url, _gpu) = start_with(wait, zero, limits, Duration::from_secs(1));
    // Headers that never end: the connection is closed.
    let mut slow = connect(&url, Duration::from_secs(10));
    slow.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n")
        .unwrap();
    let t0 = Instant::now();
    let got = reply(&slow);
    assert!(
        t0.elapsed() < Duration::from_secs(5),
        "a trickled head held on: {got:?}"
    );
    // A body that never comes whole: 408.
    let mut slow = connect(&url, Duration::from_secs(10));
    let head = "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{";
    slow.write_all(head.as_bytes()).unwrap();
    let got = reply(&slow);
    assert!(got.starts_with("HTTP/1.1 408"), "{got}");
    assert!(got.contains("request body took over"), "{got}");

    // Two connections held open: a third waits until one goes (held open: a long timeout).
    let (_go, wait) = mpsc::channel();
    let patient = Limits {
        header_timeout: Duration::from_secs(60),
        ..limits
    };
    let zero = Arc::new(AtomicUsize::new(0));
    let (url, _gpu) = start_with(wait, zero, patient, Duration::from_secs(60));
    let held: Vec<_> = (0..2)
        .map(|_| connect(&url, Duration::from_secs(1)))
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    let mut third = connect(&url, Duration::from_millis(500));
    third
        .write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        .unwrap();
    let early = reply(&third);
    assert_eq!(
        early, "",
        "a third connection was served while two were open"
    );
    drop(held);
    third
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let late = reply(&third);
    assert!(late.starts_with("HTTP/1.1 200"), "{late:?}");
}
