//! The command line.

use std::path::PathBuf;

use bevy::prelude::*;

#[derive(Resource, Clone, Debug)]
pub struct Settings {
    pub model_dir: PathBuf,
    pub prompts: Vec<String>,
    pub max_new_tokens: usize,
    pub headless: bool,
    pub every: u32,
    pub captures: usize,
    pub screenshot: Option<PathBuf>,
    pub check: bool,
}

impl Settings {
    pub fn from_args() -> Result<Settings, String> {
        let mut s = Settings {
            model_dir: PathBuf::from(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/../../tests/fixtures/bf16/model"
            )),
            prompts: Vec::new(),
            max_new_tokens: 16,
            headless: false,
            every: 10,
            captures: 2,
            screenshot: None,
            check: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut value = |name: &str| args.next().ok_or(format!("{name} needs a value"));
            let number = |name: &str, v: String| {
                v.parse::<usize>()
                    .ok()
                    .filter(|&n| n > 0)
                    .ok_or(format!("{name} wants a positive number, not {v:?}"))
            };
            match a.as_str() {
                "--prompt" => s.prompts.push(value("--prompt")?),
                "--max" => s.max_new_tokens = number("--max", value("--max")?)?,
                "--headless" => s.headless = true,
                "--every" => s.every = number("--every", value("--every")?)? as u32,
                "--captures" => s.captures = number("--captures", value("--captures")?)?,
                "--screenshot" => s.screenshot = Some(value("--screenshot")?.into()),
                "--check" => s.check = true,
                _ if a.starts_with("--") => return Err(format!("unknown option {a}")),
                _ => s.model_dir = a.into(),
            }
        }
        if s.prompts.is_empty() {
            s.prompts = vec!["caption en".into(), "detect cube".into()];
        }
        if !s.headless && (s.check || s.screenshot.is_some()) {
            return Err("--check and --screenshot belong to --headless".into());
        }
        if !cfg!(feature = "window") && !s.headless {
            return Err("built without the `window` feature: only --headless runs".into());
        }
        Ok(s)
    }

    /// The prompt of the `n`th capture: the prompts in turn.
    pub fn prompt(&self, n: usize) -> &str {
        &self.prompts[n % self.prompts.len()]
    }
}
