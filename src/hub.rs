//! Models named by their Hugging Face hub id (feature `hub`, in the command line): `--model
//! google/paligemma2-3b-pt-224` finds the checkpoint where `huggingface_hub` (and transformers,
//! and candle) keep it, `$HF_HUB_CACHE` or `$HF_HOME/hub` or `~/.cache/huggingface/hub`, in the
//! layout `models--google--paligemma2-3b-pt-224/{refs/main, snapshots/<commit>/}`, and downloads
//! what is missing with the [`hf_hub`] crate (a token from `HF_TOKEN` or `hf auth login`).
//! `owner/name@revision` takes a branch, tag or commit; `HF_HUB_OFFLINE=1` never downloads.

use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use hf_hub::{Cache, Repo, RepoType};

use crate::error::{Error, Result};

/// The files of a checkpoint besides its weights.
const FILES: [&str; 2] = ["config.json", "tokenizer.json"];
const INDEX: &str = "model.safetensors.index.json";
const SINGLE: &str = "model.safetensors";

/// A hub model id and revision, as `owner/name[@revision]` spells them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubId {
    pub repo: String,
    pub revision: String,
}

impl HubId {
    /// `None` when `s` cannot be a hub id (not `owner/name`, or characters the hub refuses).
    pub fn parse(s: &str) -> Option<HubId> {
        let (repo, revision) = s.split_once('@').unwrap_or((s, "main"));
        let (owner, name) = repo.split_once('/')?;
        let part = |p: &str| {
            !p.is_empty()
                && !p.starts_with(['.', '-'])
                && p.chars()
                    .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
        };
        (part(owner) && part(name) && !revision.is_empty()).then(|| HubId {
            repo: repo.to_string(),
            revision: revision.to_string(),
        })
    }

    fn url(&self) -> String {
        format!("https://huggingface.co/{}", self.repo)
    }
}

/// The folder `model` names: itself when it is a folder, else the snapshot of the hub id it
/// spells, downloaded into the cache when missing (with a progress bar when `progress`).
pub fn resolve(model: &Path, progress: bool) -> Result<PathBuf> {
    if model.is_dir() {
        return Ok(model.to_path_buf());
    }
    let text = model.to_string_lossy();
    // `models/pg` where `models/` is a folder here is a path with a typo, not a hub id.
    let local = model
        .parent()
        .is_some_and(|p| !p.as_os_str().is_empty() && p.is_dir());
    let Some(id) = HubId::parse(&text).filter(|_| !local) else {
        let why = match local {
            true => "not a folder",
            false => {
                "not a folder, nor a hub model id (owner/name, e.g. google/paligemma2-3b-pt-224)"
            }
        };
        return Err(Error::Io {
            path: model.to_path_buf(),
            source: std::io::Error::new(std::io::ErrorKind::NotFound, why),
        });
    };
    if let Some(dir) = cached(&cache(), &id) {
        return Ok(dir);
    }
    if std::env::var("HF_HUB_OFFLINE").is_ok_and(|v| !v.is_empty() && v != "0") {
        return Err(hub_error(
            &id,
            format!(
                "not in the Hugging Face cache ({}), and HF_HUB_OFFLINE is set",
                cache().path().display()
            ),
        ));
    }
    download(&id, progress)
}

/// `HF_HUB_CACHE`, else the `hf_hub` crate's choice (`$HF_HOME/hub`, `~/.cache/huggingface/hub`).
fn cache() -> Cache {
    match std::env::var_os("HF_HUB_CACHE") {
        Some(dir) => Cache::new(dir.into()),
        None => Cache::from_env(),
    }
}

/// The snapshot folder, when it holds a whole checkpoint (config, tokenizer and every shard).
/// The revision is a ref (`refs/main`, a tag) or a commit (a snapshot's own name), as
/// `huggingface_hub` reads them; `hf_hub`'s cache lookup knows refs only.
fn cached(cache: &Cache, id: &HubId) -> Option<PathBuf> {
    let root = cache.path().join(repo(id).folder_name());
    let commit = std::fs::read_to_string(root.join("refs").join(&id.revision))
        .map_or_else(|_| id.revision.clone(), |c| c.trim().to_string());
    let dir = root.join("snapshots").join(commit);
    let weights = match dir.join(INDEX).is_file() {
        true => shards(&dir.join(INDEX)).ok()?,
        false => vec![SINGLE.to_string()],
    };
    let mut files = FILES.iter().map(|f| f.to_string()).chain(weights);
    files.all(|f| dir.join(f).is_file()).then_some(dir)
}

fn repo(id: &HubId) -> Repo {
    Repo::with_revision(id.repo.clone(), RepoType::Model, id.revision.clone())
}

/// The shard files a `model.safetensors.index.json` names, once each.
fn shards(index: &Path) -> Result<Vec<String>> {
    let bad = |message: String| Error::Config {
        path: index.to_path_buf(),
        message,
    };
    let text = std::fs::read_to_string(index).map_err(|e| bad(e.to_string()))?;
    let json: serde_json::Value = serde_json::from_str(&text).map_err(|e| bad(e.to_string()))?;
    let map = json["weight_map"]
        .as_object()
        .ok_or_else(|| bad("no weight_map".into()))?;
    let mut files: Vec<String> = map
        .values()
        .filter_map(|v| v.as_str().map(str::to_string))
        .collect();
    files.sort();
    files.dedup();
    Ok(files)
}

/// Downloads the checkpoint's files into the cache (those already there are kept).
fn download(id: &HubId, progress: bool) -> Result<PathBuf> {
    let token = std::env::var("HF_TOKEN").ok().filter(|t| !t.is_empty());
    let mut builder = ApiBuilder::from_cache(cache()).with_progress(progress);
    if let Ok(endpoint) = std::env::var("HF_ENDPOINT") {
        builder = builder.with_endpoint(endpoint);
    }
    if token.is_some() {
        builder = builder.with_token(token);
    }
    let api = builder
        .build()
        .map_err(|e| hub_error(id, format!("the hub client: {e}")))?;
    let repo = api.repo(repo(id));
    let config = get(&repo, id, "config.json")?;
    get(&repo, id, "tokenizer.json")?;
    match repo.get(INDEX) {
        Ok(index) => {
            for shard in shards(&index)? {
                get(&repo, id, &shard)?;
            }
        }
        Err(e) if status(&e) == Some(404) => {
            get(&repo, id, SINGLE)?;
        }
        Err(e) => return Err(fetch_error(id, INDEX, &e)),
    }
    Ok(config.parent().map(Path::to_path_buf).unwrap_or_default())
}

fn get(repo: &ApiRepo, id: &HubId, file: &str) -> Result<PathBuf> {
    repo.get(file).map_err(|e| fetch_error(id, file, &e))
}

fn status(e: &ApiError) -> Option<u16> {
    match e {
        ApiError::RequestError(e) => match e.as_ref() {
            ureq::Error::Status(code, _) => Some(*code),
            ureq::Error::Transport(_) => None,
        },
        _ => None,
    }
}

/// What a failed download means for the user, and what to do.
fn fetch_error(id: &HubId, file: &str, e: &ApiError) -> Error {
    let message = match status(e) {
        Some(401) | Some(403) => format!(
            "{file}: the hub refused access ({}). PaliGemma's checkpoints are gated: accept the \
             license at {} with your account, then set HF_TOKEN to one of its tokens \
             (https://huggingface.co/settings/tokens) or run `hf auth login`",
            status(e).unwrap_or_default(),
            id.url()
        ),
        Some(404) => format!(
            "{file}: not found on the hub at revision {:?} (is the id right? {})",
            id.revision,
            id.url()
        ),
        _ => format!(
            "downloading {file} from {}: {e} (offline? a local folder that is not there?)",
            id.url()
        ),
    };
    hub_error(id, message)
}

fn hub_error(id: &HubId, message: String) -> Error {
    Error::Hub {
        id: id.repo.clone(),
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hub_ids_parse() {
        let id = HubId::parse("google/paligemma2-3b-pt-224@v1.0").unwrap();
        assert_eq!(
            (id.repo.as_str(), id.revision.as_str()),
            ("google/paligemma2-3b-pt-224", "v1.0")
        );
        assert_eq!(HubId::parse("a/b").unwrap().revision, "main");
        for bad in [
            "model",
            "a/b/c",
            "/abs/path",
            "./x",
            "a/",
            "a/b@",
            "../up",
            "a b/c",
        ] {
            assert_eq!(HubId::parse(bad), None, "{bad}");
        }
    }
}
