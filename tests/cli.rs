//! The `paligemma` binary as users and checks call it.

mod common;

use std::process::Command;

fn fixture(p: &str) -> String {
    common::fixture_path(p).display().to_string()
}

/// The binary cargo built, or `PALIGEMMA_BIN` when the tests run on another machine.
fn binary() -> String {
    std::env::var("PALIGEMMA_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_paligemma").to_string())
}

fn run(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(binary()).args(args).output().unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into(),
        String::from_utf8_lossy(&out.stderr).into(),
    )
}

#[test]
fn json_output_matches_the_fixture() {
    let expected: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(fixture("mqa/expected.json")).unwrap())
            .unwrap();
    let dump = std::env::temp_dir().join(format!(
        "paligemma-cli-logits-{}.safetensors",
        std::process::id()
    ));
    let (ok, stdout, stderr) = run(&[
        "--model",
        &fixture("mqa/model"),
        "--image",
        &fixture("mqa/image.png"),
        "--prompt",
        "caption en",
        "--max-new-tokens",
        "12",
        "--precision",
        "f32",
        "--json",
        "--dump-logits",
        dump.to_str().unwrap(),
    ]);
    assert!(ok, "stderr: {stderr}");
    let last = stdout.lines().last().unwrap();
    let json: serde_json::Value = serde_json::from_str(last).unwrap();
    assert_eq!(json["prompt_ids"], expected["input_ids"]);
    // The reference generated 12 tokens without stopping; the CLI stops at <eos> (id 1),
    // which the fixture's greedy ids do not contain.
    assert_eq!(json["generated_ids"], expected["generated_ids"]);
    assert!(json["timings"]["prefill_ms"].is_number());
    let bytes = std::fs::read(&dump).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let t = st.tensor("step_logits").unwrap();
    assert_eq!(t.shape(), &[12, 1600]);
}

/// A single answer's arguments: `--model`, `--image`, `--prompt`, then `extra`.
fn answer_args<'a>(
    model: &'a str,
    image: &'a str,
    prompt: &'a str,
    extra: &[&'a str],
) -> Vec<&'a str> {
    let mut args = vec!["--model", model, "--image", image, "--prompt", prompt];
    args.extend(extra);
    args
}

#[test]
fn bad_input_is_one_error_line_and_a_nonzero_exit() {
    let (model, image, json) = (
        fixture("mqa/model"),
        fixture("mqa/image.png"),
        fixture("mqa/expected.json"),
    );
    let no_config =
        std::env::temp_dir().join(format!("paligemma-no-config-{}", std::process::id()));
    std::fs::create_dir_all(&no_config).unwrap();
    std::fs::copy(
        fixture("mqa/model/model.safetensors"),
        no_config.join("model.safetensors"),
    )
    .unwrap();
    let cases = [
        answer_args("/nonexistent", &image, "x", &[]),
        answer_args(&model, "/nonexistent.png", "x", &[]),
        answer_args(&model, &json, "x", &[]),
        answer_args(&model, &image, "x", &["--top-p", "0"]),
        // An unwritable output fails before the model runs.
        answer_args(
            &model,
            &image,
            "x",
            &["--draw", "/nonexistent-folder/out.png"],
        ),
        // The server's rule too: the library refuses an empty prompt.
        answer_args(&model, &image, " ", &[]),
        // A folder without config.json.
        answer_args(no_config.to_str().unwrap(), &image, "x", &[]),
    ];
    for args in &cases {
        let (ok, _, stderr) = run(args);
        assert!(!ok, "{args:?} succeeded");
        let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
        assert_eq!(lines.len(), 1, "{args:?}: {stderr}");
        assert!(lines[0].starts_with("error: "), "{args:?}: {stderr}");
        assert_each_cause_once(lines[0]);
    }
    let _ = std::fs::remove_dir_all(&no_config);
}

/// `a: b: b` (a cause printed by its error and again as its source) is what users saw.
fn assert_each_cause_once(line: &str) {
    let parts: Vec<&str> = line.split(": ").collect();
    for (i, part) in parts.iter().enumerate() {
        assert!(!parts[i + 1..].contains(part), "{part:?} twice in {line:?}");
    }
}

#[test]
fn negative_numbers_reach_the_range_checks() {
    let (model, image) = (fixture("mqa/model"), fixture("mqa/image.png"));
    let cases = [
        (
            ["--temperature", "-1"],
            "--temperature must be a finite number >= 0, got -1",
        ),
        (["--top-k", "-1"], "--top-k must be at least 0, got -1"),
        (
            ["--max-new-tokens", "-5"],
            "--max-new-tokens must be at least 1, got -5",
        ),
        (["--top-p", "-0.5"], "--top-p"),
    ];
    for (extra, message) in cases {
        let (ok, _, stderr) = run(&answer_args(&model, &image, "x", &extra));
        assert!(!ok && stderr.contains(message), "{extra:?}: {stderr}");
    }
    let (ok, _, stderr) = run(&[
        "batch",
        "--model",
        &fixture("mqa/model"),
        "--prompt",
        "x",
        "--out",
        "/dev/null",
        "--temperature",
        "-2",
        &fixture("mqa/image.png"),
    ]);
    assert!(!ok && stderr.contains("--temperature must be"), "{stderr}");
}

#[test]
fn a_batch_that_can_read_nothing_fails_and_says_why() {
    let dir = std::env::temp_dir().join(format!("paligemma-batch-none-{}", std::process::id()));
    std::fs::create_dir_all(dir.join("empty")).unwrap();
    let out = dir.join("out.jsonl");
    let batch = |what: &str| {
        let p = dir.join(what);
        run(&[
            "batch",
            "--model",
            &fixture("mqa/model"),
            "--prompt",
            "x",
            "--out",
            out.to_str().unwrap(),
            p.to_str().unwrap(),
        ])
    };
    let (ok, _, stderr) = batch("empty");
    assert!(!ok && stderr.contains("no image files in"), "{stderr}");
    let (ok, _, stderr) = batch("nothere.png");
    assert!(
        !ok && stderr.contains("none of the 1 images could be read"),
        "{stderr}"
    );
    let skipped = stderr.lines().find(|l| l.starts_with("skipped")).unwrap();
    assert_eq!(skipped.matches("nothere.png").count(), 1, "{skipped}");
    assert_each_cause_once(skipped);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn quantize_writes_a_folder_that_answers_as_quantizing_on_load() {
    let out = std::env::temp_dir().join(format!("paligemma-cli-q8-{}", std::process::id()));
    let (ok, stdout, stderr) = run(&[
        "quantize",
        "--model",
        &fixture("mqa/model"),
        "--precision",
        "q8",
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "stderr: {stderr}");
    assert!(stdout.contains("matrices quantized"), "{stdout}");
    let image = fixture("mqa/image.png");
    let ids = |model: &str, extra: &[&str]| {
        let mut args = answer_args(
            model,
            &image,
            "caption en",
            &["--max-new-tokens", "6", "--json"],
        );
        args.extend(extra);
        let (ok, stdout, stderr) = run(&args);
        assert!(ok, "stderr: {stderr}");
        let json: serde_json::Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
        (json["generated_ids"].clone(), json["precision"].clone())
    };
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let mode = |f: &str| std::fs::metadata(out.join(f)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode("model.safetensors"), mode("config.json"), "file modes");
    }
    let written = ids(out.to_str().unwrap(), &[]);
    assert_eq!(written, ids(&fixture("mqa/model"), &["--precision", "q8"]));
    assert_eq!(written.1, "q8");
    // Quantizing a quantized folder, or into the model's own folder, is refused.
    let (ok, _, stderr) = run(&[
        "quantize",
        "--model",
        out.to_str().unwrap(),
        "--precision",
        "q4",
        "--out",
        "/tmp/never",
    ]);
    assert!(!ok && stderr.contains("already quantized"), "{stderr}");
    // Writing over a folder that holds something takes --force.
    let model = fixture("mqa/model");
    let again = |extra: &[&str]| {
        let mut args = vec!["quantize", "--model", &model, "--precision", "q4"];
        args.extend(["--out", out.to_str().unwrap()]);
        args.extend(extra);
        run(&args)
    };
    let (ok, _, stderr) = again(&[]);
    assert!(!ok && stderr.contains("pass --force"), "{stderr}");
    let (ok, _, stderr) = again(&["--force"]);
    assert!(ok, "{stderr}");
    let _ = std::fs::remove_dir_all(&out);
}

#[test]
fn draw_puts_an_answer_on_the_picture() {
    let out = std::env::temp_dir().join(format!("paligemma-cli-draw-{}.png", std::process::id()));
    let segs: String = (0..16).map(|i| format!("<seg{:03}>", i * 7)).collect();
    let scene = common::repo_root().join("docs/examples/scene.png");
    let (ok, stdout, stderr) = run(&[
        "draw",
        "--image",
        scene.to_str().unwrap(),
        "--answer",
        &format!(
            "<loc0192><loc0597><loc0704><loc0896>{segs} box ; <loc0384><loc0128><loc0832><loc0427> ball ; <loc12>"
        ),
        "--seg-decoder",
        &fixture("seg/vae.npz"),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(ok, "stderr: {stderr}");
    assert!(
        stdout.contains("2 objects (1 malformed groups skipped)"),
        "{stdout}"
    );
    assert!(stdout.contains("mask of"), "{stdout}");
    let drawn = image::open(&out).unwrap().to_rgb8();
    let scene = image::open(&scene).unwrap().to_rgb8();
    assert_eq!(drawn.dimensions(), scene.dimensions());
    // The first label's colour on the box's left edge; the corner untouched.
    assert_eq!(drawn.get_pixel(279, 150).0, [230, 25, 75]);
    assert_eq!(drawn.get_pixel(5, 5), scene.get_pixel(5, 5));
    let _ = std::fs::remove_file(out);
}

#[test]
fn draw_says_why_nothing_was_drawn() {
    let out = std::env::temp_dir().join(format!(
        "paligemma-cli-draw-none-{}.png",
        std::process::id()
    ));
    let scene = common::repo_root().join("docs/examples/scene.png");
    let draw = |answer: &str| {
        run(&[
            "draw",
            "--image",
            scene.to_str().unwrap(),
            "--answer",
            answer,
            "--out",
            out.to_str().unwrap(),
        ])
    };
    // Inverted in y, in x, a zero-height box, and a short run: all skipped, each kind named.
    let (ok, stdout, stderr) = draw(
        "<loc0700><loc0100><loc0650><loc0400> cat ; <loc0100><loc0700><loc0650><loc0400> dog ; \
         <loc0300><loc0100><loc0300><loc0400> line ; <loc0012> x",
    );
    assert!(ok, "stderr: {stderr}");
    assert!(
        stdout.contains("0 objects (4 malformed groups skipped)"),
        "{stdout}"
    );
    assert!(
        stderr.contains("4 malformed groups skipped, nothing to draw")
            && stderr.contains("3 inverted or empty")
            && stderr.contains("1 short"),
        "{stderr}"
    );
    // No group at all: said too.
    let (ok, _, stderr) = draw("a cat on a mat");
    assert!(ok && stderr.contains("no <loc> group"), "{stderr}");
    let _ = std::fs::remove_file(out);
}
