//! `--model owner/name`: found in a Hugging Face cache laid out as `huggingface_hub` lays it
//! out, downloaded from a hub (a fake one on loopback, speaking the hub's `resolve` protocol)
//! when missing, and the gated-license refusal explained. No test touches the network.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use axum::extract::{Path as UrlPath, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn fixture(p: &str) -> PathBuf {
    common::fixture_path(p)
}

/// A fresh, empty `HF_HOME`.
fn hf_home(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("paligemma-hub-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// `paligemma --model <model> --image <the fixture's> --prompt "caption en" --json`, with
/// `env` set; (success, the JSON line or stderr).
fn answer(model: &str, env: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_paligemma"));
    cmd.args(["--model", model, "--image"])
        .arg(fixture("mqa/image.png"))
        .args(["--prompt", "caption en", "--max-new-tokens", "4", "--json"]);
    for var in [
        "HF_HOME",
        "HF_HUB_CACHE",
        "HF_TOKEN",
        "HF_ENDPOINT",
        "HF_HUB_OFFLINE",
    ] {
        cmd.env_remove(var);
    }
    let out = cmd.envs(env.iter().copied()).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    match out.status.success() {
        true => (true, stdout.lines().last().unwrap_or("").to_string()),
        false => (false, String::from_utf8_lossy(&out.stderr).into()),
    }
}

fn generated_ids(json_line: &str) -> serde_json::Value {
    let json: serde_json::Value = serde_json::from_str(json_line).unwrap();
    json["generated_ids"].clone()
}

/// The tiny model under `hub/models--test--tiny/snapshots/<commit>`, `refs/main` naming it.
fn fill_cache(hub: &Path) {
    let repo = hub.join("models--test--tiny");
    let snapshot = repo.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(&snapshot).unwrap();
    for f in ["config.json", "tokenizer.json", "model.safetensors"] {
        std::fs::copy(fixture("mqa/model").join(f), snapshot.join(f)).unwrap();
    }
    std::fs::create_dir_all(repo.join("refs")).unwrap();
    std::fs::write(repo.join("refs/main"), COMMIT).unwrap();
}

#[test]
fn a_hub_id_is_found_in_the_cache() {
    let (ok, want) = answer(&fixture("mqa/model").display().to_string(), &[]);
    assert!(ok, "{want}");
    let home = hf_home("cache");
    fill_cache(&home.join("hub"));
    let home_s = home.display().to_string();
    let offline = [("HF_HOME", home_s.as_str()), ("HF_HUB_OFFLINE", "1")];
    for id in [
        "test/tiny",
        "test/tiny@main",
        &format!("test/tiny@{COMMIT}"),
    ] {
        let (ok, got) = answer(id, &offline);
        assert!(ok, "{id}: {got}");
        assert_eq!(generated_ids(&got), generated_ids(&want), "{id}");
    }
    // HF_HUB_CACHE names the hub folder itself.
    let hub = home.join("hub").display().to_string();
    let (ok, got) = answer(
        "test/tiny",
        &[("HF_HUB_CACHE", &hub), ("HF_HUB_OFFLINE", "1")],
    );
    assert!(ok, "{got}");
    // Missing and offline: one line saying where it looked.
    let (ok, err) = answer("test/other", &offline);
    assert!(!ok);
    assert!(
        err.contains("test/other") && err.contains("not in the Hugging Face cache"),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    // Neither a folder nor an id; a path under an existing folder is a path, not an id.
    for (model, want) in [
        ("nothere", "nor a hub model id"),
        ("tests/nothere", "not a folder"),
    ] {
        let (ok, err) = answer(model, &offline);
        assert!(!ok && err.contains(want), "{model}: {err}");
    }
}

/// The files a fake hub serves, and the token its gated repo wants.
#[derive(Clone)]
struct Hub {
    files: HashMap<String, Vec<u8>>,
    token: &'static str,
}

/// `GET /{owner}/{name}/resolve/{revision}/{file}` with a `Range`, as `hf_hub` asks: 206 with
/// `Content-Range`, `ETag` and `X-Repo-Commit`. Only `*/tiny` exists; `gated/tiny` wants the token.
async fn resolve(
    State(hub): State<Hub>,
    UrlPath((owner, name, _rev, file)): UrlPath<(String, String, String, String)>,
    headers: HeaderMap,
) -> Response {
    let bearer = format!("Bearer {}", hub.token);
    let authorized = headers
        .get(header::AUTHORIZATION)
        .is_some_and(|v| v == &bearer);
    if owner == "gated" && !authorized {
        return (StatusCode::UNAUTHORIZED, "gated").into_response();
    }
    let Some(bytes) = hub.files.get(&file).filter(|_| name == "tiny") else {
        return (StatusCode::NOT_FOUND, "no such file").into_response();
    };
    let range = headers.get(header::RANGE).and_then(|v| v.to_str().ok());
    let (start, end) = match range.and_then(|r| r.strip_prefix("bytes=")?.split_once('-')) {
        Some((a, b)) => (a.parse().unwrap_or(0), b.parse().unwrap_or(bytes.len() - 1)),
        None => (0, bytes.len() - 1),
    };
    let part = bytes[start..=end.min(bytes.len() - 1)].to_vec();
    let headers = [
        (
            header::CONTENT_RANGE,
            format!("bytes {start}-{end}/{}", bytes.len()),
        ),
        (header::ETAG, format!("\"etag-{file}\"")),
        (
            header::HeaderName::from_static("x-repo-commit"),
            COMMIT.into(),
        ),
    ];
    (StatusCode::PARTIAL_CONTENT, headers, part).into_response()
}

/// Starts the fake hub on a free loopback port; returns its URL.
fn start_hub(hub: Hub) -> String {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let listener = rt
        .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
        .unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let app = axum::Router::new()
        .route(
            "/{owner}/{name}/resolve/{rev}/{*file}",
            axum::routing::get(resolve),
        )
        .with_state(hub);
    std::thread::spawn(move || rt.block_on(async { axum::serve(listener, app).await }));
    url
}

#[test]
fn a_missing_model_is_downloaded_once_and_a_gated_one_says_what_to_do() {
    let files = ["config.json", "tokenizer.json", "model.safetensors"].map(|f| {
        (
            f.to_string(),
            std::fs::read(fixture("mqa/model").join(f)).unwrap(),
        )
    });
    let url = start_hub(Hub {
        files: files.into_iter().collect(),
        token: "hf_secret",
    });
    let (ok, want) = answer(&fixture("mqa/model").display().to_string(), &[]);
    assert!(ok, "{want}");
    let home = hf_home("download");
    let home_s = home.display().to_string();
    let env = [("HF_HOME", home_s.as_str()), ("HF_ENDPOINT", url.as_str())];

    let (ok, got) = answer("test/tiny", &env);
    assert!(ok, "{got}");
    assert_eq!(generated_ids(&got), generated_ids(&want));
    let snapshot = home.join("hub/models--test--tiny/snapshots").join(COMMIT);
    assert!(snapshot.join("model.safetensors").is_file());
    // The second run needs no hub.
    let (ok, got) = answer("test/tiny", &[env[0], ("HF_HUB_OFFLINE", "1")]);
    assert!(ok, "{got}");

    let (ok, err) = answer("gated/tiny", &env);
    assert!(!ok);
    for want in [
        "gated/tiny",
        "401",
        "accept the license",
        "HF_TOKEN",
        "https://huggingface.co/gated/tiny",
    ] {
        assert!(err.contains(want), "{want:?} in {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "{err}");
    let (ok, got) = answer("gated/tiny", &[env[0], env[1], ("HF_TOKEN", "hf_secret")]);
    assert!(ok, "{got}");
    assert_eq!(generated_ids(&got), generated_ids(&want));

    let (ok, err) = answer("test/typo", &env);
    assert!(
        !ok && err.contains("config.json: not found on the hub"),
        "{err}"
    );
}
