//! `paligemma serve` driven by the official `openai` Python client (tests/serve_client.py) on
//! the shipped tiny model: the command line's ids, streaming, 32 concurrent clients, the
//! bad-request battery, a client that disconnects, memory over 1000 requests. And
//! `paligemma batch`: resumable, a bad image skipped, the command line's ids.
//!
//! Needs `python3` with `openai` (`pip install openai`; `.ci/run` installs it). Without it the
//! test fails, saying so: a skipped server test proves nothing.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

fn fixture(p: &str) -> String {
    common::fixture_path(p).display().to_string()
}

fn binary() -> String {
    std::env::var("PALIGEMMA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_paligemma").to_string())
}

/// The command line's answer: (generated ids, text).
fn cli_answer(image: &str, prompt: &str, max_tokens: usize) -> (Vec<u64>, String) {
    let out = Command::new(binary())
        .args([
            "--model",
            &fixture("mqa/model"),
            "--image",
            image,
            "--prompt",
            prompt,
        ])
        .args(["--max-new-tokens", &max_tokens.to_string(), "--json"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    let ids = json["generated_ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    (ids, json["text"].as_str().unwrap().to_string())
}

/// A server on a free port, killed when dropped.
struct Server {
    child: Child,
    url: String,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_server(extra: &[&str]) -> Server {
    let mut child = Command::new(binary())
        .args(["serve", "--model", &fixture("mqa/model"), "--port", "0"])
        .args(["--max-body-mb", "2", "--default-max-tokens", "8"])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap_or_else(|| panic!("no address in {line:?}"))
        .to_string();
    Server { child, url }
}

#[test]
fn the_openai_client_gets_what_the_command_line_gets() {
    let cases = [
        (fixture("mqa/image.png"), "caption en", 8),
        (fixture("mqa/photo.jpg"), "detect cat", 6),
        (fixture("gqa/image.png"), "answer en what is this?", 5),
    ];
    let expect: Vec<serde_json::Value> = cases
        .iter()
        .map(|(image, prompt, n)| {
            let (ids, text) = cli_answer(image, prompt, *n);
            serde_json::json!({"image": image, "prompt": prompt, "max_tokens": n,
                "generated_ids": ids, "text": text})
        })
        .collect();
    let path = std::env::temp_dir().join(format!("paligemma-serve-{}.json", std::process::id()));
    std::fs::write(&path, serde_json::to_string(&expect).unwrap()).unwrap();
    let server = start_server(&[]);
    let script = common::repo_root().join("tests/serve_client.py");
    let out = Command::new("python3")
        .arg(&script)
        .args([&server.url, &server.child.id().to_string()])
        .arg(&path)
        .output()
        .expect("python3 runs (the server tests need python3 with `pip install openai`)");
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    eprintln!("{stdout}");
    assert!(
        out.status.success(),
        "serve_client.py failed:\n{stdout}\n{stderr}"
    );
    let _ = std::fs::remove_file(path);
}

#[test]
fn batch_answers_every_readable_image_once_and_resumes() {
    let dir = std::env::temp_dir().join(format!("paligemma-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for (i, src) in ["mqa/image.png", "mqa/photo.jpg", "gqa/image.png"]
        .iter()
        .enumerate()
    {
        let ext = src.rsplit('.').next().unwrap();
        std::fs::copy(fixture(src), dir.join(format!("{i}.{ext}"))).unwrap();
    }
    std::fs::write(dir.join("9-broken.jpg"), b"not a jpeg").unwrap();
    let out = dir.join("results.jsonl");
    let run_with = |prompt: &str, images: &std::path::Path, max_new_tokens: &str| {
        Command::new(binary())
            .args([
                "batch",
                "--model",
                &fixture("mqa/model"),
                "--prompt",
                prompt,
            ])
            .args([
                "--max-new-tokens",
                max_new_tokens,
                "--max-batch",
                "2",
                "--top-p",
                "1",
            ])
            .args([
                "--top-k",
                "0",
                "--seg-decoder",
                &fixture("seg/vae.npz"),
                "--out",
            ])
            .arg(&out)
            .arg(images)
            .output()
            .unwrap()
    };
    let run_on = |prompt: &str, images: &std::path::Path| run_with(prompt, images, "7");
    let run = || run_on("caption en", &dir);
    let first = run();
    let stderr = String::from_utf8_lossy(&first.stderr);
    assert!(first.status.success(), "{stderr}");
    assert!(
        stderr.contains("9-broken.jpg"),
        "the bad image is not reported: {stderr}"
    );
    assert!(stderr.contains("3 answered, 1 skipped"), "{stderr}");
    let lines = std::fs::read_to_string(&out).unwrap();
    let results: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(results.len(), 3, "{lines}");
    for r in &results {
        let image = r["image"].as_str().unwrap();
        let (ids, text) = cli_answer(image, "caption en", 7);
        let got: Vec<u64> = r["generated_ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_u64().unwrap())
            .collect();
        assert_eq!(got, ids, "{image}");
        assert_eq!(r["text"].as_str().unwrap(), text, "{image}");
    }
    // Run again: nothing new to answer, the file unchanged.
    let again = run();
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("0 answered, 1 skipped as unreadable, 3 already"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap(), lines);
    // The same images through another path: known by their canonical paths, nothing redone.
    let other_path = dir.join("..").join(dir.file_name().unwrap());
    let again = run_on("caption en", &other_path);
    let stderr = String::from_utf8_lossy(&again.stderr);
    assert!(
        stderr.contains("0 answered, 1 skipped as unreadable, 3 already"),
        "{stderr}"
    );
    // Another prompt: its answers are added, and the file's other prompt is mentioned.
    let other = run_on("caption es", &dir);
    let stderr = String::from_utf8_lossy(&other.stderr);
    assert!(other.status.success(), "{stderr}");
    assert!(
        stderr.contains("3 answered, 1 skipped as unreadable, 0 already"),
        "{stderr}"
    );
    assert!(
        stderr.contains("other prompts or options (\"caption en\" {"),
        "{stderr}"
    );
    assert_eq!(std::fs::read_to_string(&out).unwrap().lines().count(), 6);
    // Options that change the answer are part of the key: another length is answered anew.
    let longer = run_with("caption en", &dir, "8");
    let stderr = String::from_utf8_lossy(&longer.stderr);
    assert!(
        stderr.contains("3 answered, 1 skipped as unreadable, 0 already"),
        "{stderr}"
    );
    assert!(stderr.contains("\"max_new_tokens\":7"), "{stderr}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A server that can run one sequence and queue one more answers the rest of a burst with 503
/// and OpenAI-style errors, answers every accepted request in full, and stays up.
#[test]
fn a_full_queue_is_refused_with_503() {
    let server = start_server(&["--max-batch", "1", "--max-queue", "1"]);
    let image = std::fs::read(fixture("mqa/image.png")).unwrap();
    let b64 = base64_encode(&image);
    let body = serde_json::json!({
        "model": "paligemma",
        "max_tokens": 200,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": "caption en"},
            {"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}")}}]}],
    })
    .to_string();
    let addr = server.url.trim_start_matches("http://").to_string();
    let handles: Vec<_> = (0..12)
        .map(|_| {
            let (addr, body) = (addr.clone(), body.clone());
            std::thread::spawn(move || post(&addr, "/v1/chat/completions", &body))
        })
        .collect();
    let answers: Vec<(u16, serde_json::Value)> =
        handles.into_iter().map(|h| h.join().unwrap()).collect();
    let busy = answers.iter().filter(|(s, _)| *s == 503).count();
    let ok: Vec<_> = answers.iter().filter(|(s, _)| *s == 200).collect();
    assert!(busy > 0, "no request was refused: {answers:?}");
    assert!(!ok.is_empty(), "no request was answered: {answers:?}");
    assert_eq!(busy + ok.len(), answers.len(), "{answers:?}");
    for (_, e) in answers.iter().filter(|(s, _)| *s == 503) {
        assert!(
            e["error"]["message"].as_str().unwrap().contains("busy"),
            "{e}"
        );
    }
    for (_, a) in &ok {
        let reason = a["choices"][0]["finish_reason"].as_str().unwrap();
        assert!(reason == "stop" || reason == "length", "{a}");
    }
    eprintln!(
        "12 at once against a batch of 1 and a queue of 1: {} answered, {busy} refused",
        ok.len()
    );
}

/// One HTTP/1.1 request (POST with a JSON body); the status and the JSON answer.
fn post(addr: &str, path: &str, body: &str) -> (u16, serde_json::Value) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "POST {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let status = out[9..12].parse().unwrap();
    let json = out
        .split_once("\r\n\r\n")
        .and_then(|(_, b)| serde_json::from_str(b).ok())
        .unwrap_or(serde_json::Value::Null);
    (status, json)
}

fn base64_encode(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// 32 clients for a bounded time (`PALIGEMMA_SOAK_SECONDS`, 30 by default): tests/soak.py checks
/// every answer against the same request alone, that no request is lost (the server's /metrics
/// agree with the clients), and that memory stays flat; it prints the figures.
#[test]
fn a_soak_of_32_clients_loses_nothing_and_holds_memory_flat() {
    let server = start_server(&["--max-batch", "8", "--max-queue", "8"]);
    let seconds = std::env::var("PALIGEMMA_SOAK_SECONDS").unwrap_or_else(|_| "30".into());
    // The figures go straight to the test's output (not captured), so CI's log shows them.
    let status = Command::new("python3")
        .arg(common::repo_root().join("tests/soak.py"))
        .args([
            &server.url,
            &server.child.id().to_string(),
            "--seconds",
            &seconds,
        ])
        .stdout(std::process::Stdio::inherit())
        .stderr(std::process::Stdio::inherit())
        .status()
        .expect("python3 runs");
    assert!(status.success(), "soak.py failed (its message is above)");
}
