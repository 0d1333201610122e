//! Gemma 3 against transformers, on the fixtures scripts/make_gemma3_fixtures.py makes (a tiny
//! Gemma 3 in the published config form with one image and a sliding window shorter than the
//! image; one in transformers 5's form with two images in one prompt, bf16 weights): the vision
//! tower, the pooled projector, every prompt position's logits, greedy decoding through the KV
//! cache, and a text-only conversation. f32 within 1e-4 of max |ref| and identical tokens;
//! KV-cache decoding equal to recomputing the sequence; the CPU model equal to both.

mod common;

use std::path::{Path, PathBuf};

use common::{assert_close, gpu};
use paligemma::Reference;
use paligemma::{ImageFeatures, PaliGemma, Precision};
use safetensors::SafeTensors;

const TOL: f64 = 1e-4;

struct Case {
    name: &'static str,
    dir: PathBuf,
    expected: serde_json::Value,
    tensors: Vec<u8>,
}

impl Case {
    fn open(name: &'static str) -> Case {
        let dir = common::fixture_path(name);
        let json = std::fs::read_to_string(dir.join("expected.json")).unwrap();
        Case {
            name,
            expected: serde_json::from_str(&json).unwrap(),
            tensors: std::fs::read(dir.join("expected.safetensors")).unwrap(),
            dir,
        }
    }
    fn tensor(&self, name: &str) -> Vec<f32> {
        let st = SafeTensors::deserialize(&self.tensors).unwrap();
        let t = st
            .tensor(name)
            .unwrap_or_else(|_| panic!("{}: no {name}", self.name));
        bytemuck::pod_collect_to_vec(t.data())
    }
    fn ids(&self, key: &str) -> Vec<u32> {
        let ids = self.expected[key].as_array().unwrap();
        ids.iter().map(|v| v.as_u64().unwrap() as u32).collect()
    }
    fn model(&self) -> PaliGemma {
        let opts = paligemma::LoadOptions::in_precision(Some(Precision::F32));
        PaliGemma::load_on(gpu().clone(), &self.dir.join("model"), &opts)
            .unwrap_or_else(|e| panic!("{}: {e}", self.name))
    }
    /// Each image encoded from the fixture's own pixel values.
    fn features(&self, model: &PaliGemma) -> Vec<ImageFeatures> {
        let pixels = self.tensor("pixel_values");
        let per_image = pixels.len() / self.expected["images"].as_array().unwrap().len();
        pixels
            .chunks(per_image)
            .map(|p| {
                model
                    .block_on(model.encode(paligemma::ImageInput::pixels(p)))
                    .unwrap()
            })
            .collect()
    }
}

const CASES: [&str; 2] = ["gemma3", "gemma3_two"];

/// Prefill then greedy steps: (ids, the logits each was chosen from).
fn decode(
    model: &PaliGemma,
    ids: &[u32],
    images: &[&ImageFeatures],
    n: usize,
) -> (Vec<u32>, Vec<f32>) {
    let mut s = model.new_state(ids.len(), n).unwrap();
    let mut next = model
        .block_on(model.prefill_images(&mut s, ids, images))
        .unwrap();
    let mut scratch = model.decode_scratch().unwrap();
    let (mut toks, mut logits) = (Vec::new(), Vec::new());
    for i in 0..n {
        logits.extend(model.block_on(model.logits(&s)).unwrap());
        toks.push(next);
        if i + 1 < n {
            let step = model.block_on(model.step(&mut scratch, &mut [&mut s], &[next]));
            next = step.unwrap()[0];
        }
    }
    (toks, logits)
}

#[test]
fn vision_and_pooled_projector_match_transformers() {
    for name in CASES {
        let case = Case::open(name);
        let model = case.model();
        let c = model.config().clone();
        let (patches, dv, dt) = (
            c.vision.num_patches(),
            c.vision.hidden_size,
            c.text.hidden_size,
        );
        let n = model.num_image_tokens();
        assert_eq!(
            n,
            case.expected["mm_tokens_per_image"].as_u64().unwrap() as usize
        );
        let feats = case.features(&model);
        let read = |b: &wgpu::Buffer, len| model.gpu().read_f32(b, 0, len).unwrap();
        let vision: Vec<f32> = feats
            .iter()
            .flat_map(|f| read(&f.vision, patches * dv))
            .collect();
        assert_close(
            &format!("{name}: vision_out"),
            &vision,
            &case.tensor("vision_out"),
            TOL,
        );
        let rows: Vec<f32> = feats.iter().flat_map(|f| read(&f.buffer, n * dt)).collect();
        assert_close(
            &format!("{name}: image_features"),
            &rows,
            &case.tensor("image_features"),
            TOL,
        );
    }
}

#[test]
fn prompts_with_images_match_transformers() {
    for name in CASES {
        let case = Case::open(name);
        let model = case.model();
        let feats = case.features(&model);
        let images: Vec<&ImageFeatures> = feats.iter().collect();
        let ids = case.ids("input_ids");
        let all = model
            .block_on(model.all_logits_images(&ids, &images, ids.len()))
            .unwrap();
        let prefill_err = assert_close(
            &format!("{name}: prefill_logits"),
            &all,
            &case.tensor("prefill_logits"),
            TOL,
        );
        let want = case.ids("generated_ids");
        let (toks, logits) = decode(&model, &ids, &images, want.len());
        assert_eq!(toks, want, "{name}: greedy ids");
        let step_err = assert_close(
            &format!("{name}: step_logits"),
            &logits,
            &case.tensor("step_logits"),
            TOL,
        );
        eprintln!("{name}: prefill/step rel err {prefill_err:.2e}/{step_err:.2e}");
    }
}

#[test]
fn text_only_conversations_match_transformers() {
    for name in CASES {
        let case = Case::open(name);
        let model = case.model();
        let ids = case.ids("text_input_ids");
        let all = model
            .block_on(model.all_logits_images(&ids, &[], ids.len()))
            .unwrap();
        let want_all = case.tensor("text_prefill_logits");
        assert_close(
            &format!("{name}: text prefill_logits"),
            &all,
            &want_all,
            TOL,
        );
        let want = case.ids("text_generated_ids");
        let (toks, logits) = decode(&model, &ids, &[], want.len());
        assert_eq!(toks, want, "{name}: text greedy ids");
        let want_steps = case.tensor("text_step_logits");
        assert_close(
            &format!("{name}: text step_logits"),
            &logits,
            &want_steps,
            TOL,
        );
    }
}

#[test]
fn kv_cache_decoding_equals_recomputing_the_sequence() {
    for name in CASES {
        let case = Case::open(name);
        let model = case.model();
        let v = model.config().text.vocab_size;
        let feats = case.features(&model);
        let images: Vec<&ImageFeatures> = feats.iter().collect();
        let ids = case.ids("input_ids");
        let (toks, steps) = decode(&model, &ids, &images, 8);
        let mut seq = ids.clone();
        seq.extend(&toks[..toks.len() - 1]);
        let all = model
            .block_on(model.all_logits_images(&seq, &images, ids.len()))
            .unwrap();
        let what = format!("{name}: KV cache vs recompute");
        assert_close(&what, &steps, &all[(ids.len() - 1) * v..], 2e-5);
    }
}

#[test]
fn the_cpu_model_matches_transformers() {
    let case = Case::open("gemma3");
    let r = Reference::open(&case.dir.join("model")).unwrap();
    let vision = r.vision(&case.tensor("pixel_values")).unwrap();
    assert_close("cpu vision_out", &vision, &case.tensor("vision_out"), TOL);
    let feats = r.project(&vision).unwrap();
    assert_close(
        "cpu image_features",
        &feats,
        &case.tensor("image_features"),
        TOL,
    );
    let ids = case.ids("input_ids");
    let at = ids
        .iter()
        .position(|&t| t == r.cfg.image_token_index)
        .unwrap();
    let logits = r.logits_with(&ids, &[(at, &feats)], ids.len()).unwrap();
    assert_close(
        "cpu prefill_logits",
        &logits,
        &case.tensor("prefill_logits"),
        TOL,
    );
}

#[test]
fn image_tokens_must_match_the_images() {
    let case = Case::open("gemma3_two");
    let model = case.model();
    let feats = case.features(&model);
    let ids = case.ids("input_ids");
    let mut s = model.new_state(ids.len(), 4).unwrap();
    let one = model.block_on(model.prefill_images(&mut s, &ids, &[&feats[0]]));
    let e = one.unwrap_err().to_string();
    assert!(
        e.contains("2 runs of image tokens") && e.contains("1 images"),
        "{e}"
    );
    let mut short = ids.clone();
    let first = short
        .iter()
        .position(|&t| t == model.config().image_token_index)
        .unwrap();
    short.remove(first);
    let mut s = model.new_state(short.len(), 4).unwrap();
    let images = [&feats[0], &feats[1]];
    let e = model
        .block_on(model.prefill_images(&mut s, &short, &images))
        .unwrap_err();
    assert!(e.to_string().contains("image 0's run"), "{e}");
}

/// A conversation as the fixture's expected.json gives it (transformers' message format).
fn messages(v: &serde_json::Value) -> Vec<paligemma::chat::Message> {
    use paligemma::chat::{Message, Part};
    let parts = |c: &serde_json::Value| match c {
        serde_json::Value::String(text) => vec![Part::Text { text: text.clone() }],
        list => (list.as_array().unwrap().iter())
            .map(|p| match p["type"].as_str().unwrap() {
                "image" => Part::Image,
                _ => Part::Text {
                    text: p["text"].as_str().unwrap().into(),
                },
            })
            .collect(),
    };
    let turns = v.as_array().unwrap().iter();
    turns
        .map(|m| Message {
            role: m["role"].as_str().unwrap().into(),
            content: parts(&m["content"]),
        })
        .collect()
}

#[test]
fn the_chat_template_lays_out_prompts_as_the_processor_does() {
    for name in CASES {
        let case = Case::open(name);
        let model = case.model();
        let ids = model
            .chat_ids(&messages(&case.expected["messages"]))
            .unwrap();
        assert_eq!(ids, case.ids("input_ids"), "{name}: prompt with images");
        let text = model
            .chat_ids(&messages(&case.expected["text_messages"]))
            .unwrap();
        assert_eq!(text, case.ids("text_input_ids"), "{name}: conversation");
    }
    // One image and a prompt, as the command line asks.
    let case = Case::open("gemma3");
    let model = case.model();
    let ids = model.prompt_ids("What is in this picture?").unwrap();
    assert_eq!(ids, case.ids("input_ids"));
    assert!(
        model
            .prompt_ids(" ")
            .unwrap_err()
            .to_string()
            .contains("empty")
    );
}

#[test]
fn images_are_resized_bilinear_as_gemma3s_processor_does() {
    use paligemma::preprocess::{Resample, load_image, preprocess_with};
    for name in CASES {
        let case = Case::open(name);
        let size = case.model().image_size() as u32;
        // A PNG: no JPEG decoder's rounding in the way, so to the bit.
        let photo = load_image(&case.dir.join("photo.png")).unwrap();
        let got = preprocess_with(&photo, size, Resample::Bilinear);
        let want = case.tensor("photo_pixel_values");
        assert_close(&format!("{name}: photo"), &got, &want, 1e-6);
    }
}

/// `paligemma --model DIR [--image F]... --prompt P --json`: (success, the answer's JSON or
/// the error's text).
fn cli(model: &Path, images: &[PathBuf], prompt: &str) -> (bool, String) {
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_paligemma"));
    cmd.args(["--model", model.to_str().unwrap(), "--prompt", prompt]);
    for image in images {
        cmd.args(["--image", image.to_str().unwrap()]);
    }
    let out = cmd
        .args(["--max-new-tokens", "12", "--precision", "f32", "--json"])
        .output()
        .unwrap();
    // The answer's text is streamed first; the JSON is the last line.
    let stdout = String::from_utf8_lossy(&out.stdout);
    match out.status.success() {
        true => (true, stdout.lines().last().unwrap_or_default().to_string()),
        false => (false, String::from_utf8_lossy(&out.stderr).to_string()),
    }
}

fn answer_ids(json: &str) -> Vec<u32> {
    let answer: serde_json::Value = serde_json::from_str(json).unwrap();
    let ids = answer["generated_ids"].as_array();
    let ids = ids.unwrap_or_else(|| panic!("no generated_ids in {answer}"));
    ids.iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

#[test]
fn the_command_line_answers_as_transformers() {
    // One image, two images, none.
    let case = Case::open("gemma3");
    let (model, image) = (case.dir.join("model"), case.dir.join("image.png"));
    let (ok, out) = cli(&model, &[image], "What is in this picture?");
    assert!(ok, "{out}");
    assert_eq!(answer_ids(&out), case.ids("generated_ids"));
    let case = Case::open("gemma3_two");
    let images = [case.dir.join("image.png"), case.dir.join("image2.png")];
    let model = case.dir.join("model");
    let (ok, out) = cli(&model, &images, "  Compare the two pictures.  ");
    assert!(ok, "{out}");
    assert_eq!(answer_ids(&out), case.ids("generated_ids"));
    let (ok, out) = cli(&model, &[], "Say something.");
    assert!(ok, "{out}");
    assert_eq!(answer_ids(&out), case.ids("text_generated_ids"));
    // PaliGemma takes one image.
    let mqa = common::fixture_path("mqa");
    let (ok, out) = cli(&mqa.join("model"), &[], "caption en");
    assert!(!ok && out.contains("one image, got 0"), "{out}");
}

/// `paligemma serve` on `model` (a free port), killed when dropped.
struct Server(std::process::Child, String);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn serve(model: &Path) -> Server {
    use std::io::BufRead;
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_paligemma"))
        .args(["serve", "--model", model.to_str().unwrap(), "--port", "0"])
        .args(["--precision", "f32"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    out.read_line(&mut line).unwrap();
    let url = line.split_whitespace().find(|w| w.starts_with("http://"));
    let addr = url.unwrap_or_else(|| panic!("no address in {line:?}"));
    Server(
        child,
        addr.trim_start_matches("http://")
            .trim_end_matches('/')
            .into(),
    )
}

/// POSTs a chat completion of `messages` (OpenAI's format); the answer's ids.
fn chat(server: &Server, messages: serde_json::Value) -> Vec<u32> {
    use std::io::{Read, Write};
    let body = serde_json::json!({"messages": messages, "max_tokens": 12}).to_string();
    let mut s = std::net::TcpStream::connect(&server.1).unwrap();
    write!(
        s,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let json = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b)
        .unwrap_or_default();
    let json: serde_json::Value = serde_json::from_str(json).unwrap_or_default();
    let ids = json["paligemma"]["generated_ids"].as_array();
    let ids = ids.unwrap_or_else(|| panic!("no ids in {out}"));
    ids.iter().map(|v| v.as_u64().unwrap() as u32).collect()
}

/// The fixture's messages in OpenAI's format, each image part an image_url of `images` in turn.
fn openai_messages(v: &serde_json::Value, images: &[PathBuf]) -> serde_json::Value {
    use base64::Engine as _;
    let mut next = images.iter().map(|p| {
        let b64 = base64::engine::general_purpose::STANDARD.encode(std::fs::read(p).unwrap());
        serde_json::json!({"type": "image_url", "image_url": {"url": format!("data:image/png;base64,{b64}")}})
    });
    let mut out = v.clone();
    for m in out.as_array_mut().unwrap() {
        if let Some(parts) = m["content"].as_array_mut() {
            for p in parts.iter_mut().filter(|p| p["type"] == "image") {
                *p = next.next().unwrap();
            }
        }
    }
    out
}

#[test]
fn the_server_answers_conversations_as_transformers() {
    for name in CASES {
        let case = Case::open(name);
        let server = serve(&case.dir.join("model"));
        let n = case.expected["images"].as_array().unwrap().len();
        let images: Vec<_> = ["image.png", "image2.png"][..n]
            .iter()
            .map(|f| case.dir.join(f))
            .collect();
        let messages = openai_messages(&case.expected["messages"], &images);
        assert_eq!(
            chat(&server, messages),
            case.ids("generated_ids"),
            "{name}: with images"
        );
        let text = openai_messages(&case.expected["text_messages"], &[]);
        assert_eq!(
            chat(&server, text),
            case.ids("text_generated_ids"),
            "{name}: text only"
        );
    }
}

#[test]
fn batch_answers_each_image_as_transformers() {
    // A folder holding the fixture's image twice, decoded together in one batch: each answer
    // as transformers gives it alone.
    let case = Case::open("gemma3");
    let dir = std::env::temp_dir().join(format!("paligemma-g3-batch-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    for name in ["a.png", "b.png"] {
        std::fs::copy(case.dir.join("image.png"), dir.join(name)).unwrap();
    }
    let out = dir.join("answers.jsonl");
    let run = std::process::Command::new(env!("CARGO_BIN_EXE_paligemma"))
        .args(["batch", "--model", case.dir.join("model").to_str().unwrap()])
        .args([
            "--prompt",
            "What is in this picture?",
            "--max-new-tokens",
            "12",
        ])
        .args([
            "--precision",
            "f32",
            "--max-batch",
            "2",
            "--out",
            out.to_str().unwrap(),
        ])
        .arg(&dir)
        .output()
        .unwrap();
    assert!(
        run.status.success(),
        "{}",
        String::from_utf8_lossy(&run.stderr)
    );
    let lines = std::fs::read_to_string(&out).unwrap();
    let answers: Vec<serde_json::Value> = lines
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(answers.len(), 2, "{lines}");
    for a in &answers {
        let ids: Vec<u32> = (a["generated_ids"].as_array().unwrap().iter())
            .map(|v| v.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(ids, case.ids("generated_ids"), "{a}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}
