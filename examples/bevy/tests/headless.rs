//! The Bevy example, headless, end to end (CI runs it on lavapipe): the scene renders, every
//! capture is answered from Bevy's own render target on Bevy's device, the answers equal the
//! CPU preprocessor's on the same frames, and the view (scene, answer, boxes) is written.

use std::process::Command;

#[test]
fn headless_captures_are_answered_on_bevys_device_as_the_cpu_path_answers_them() {
    let shot = std::env::temp_dir().join(format!("paligemma-bevy-{}.png", std::process::id()));
    let out = Command::new(env!("CARGO_BIN_EXE_paligemma-bevy"))
        .args(["--headless", "--check", "--captures", "3", "--every", "4"])
        .args(["--prompt", "caption en", "--prompt", "detect cat"])
        .arg("--screenshot")
        .arg(&shot)
        .output()
        .expect("running the example");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    println!("{stdout}");

    assert!(stdout.contains("sharing Bevy's device"), "{stdout}");
    // Three captures, the prompts in turn, each on a later frame than the one before.
    let captures: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("capture "))
        .collect();
    assert_eq!(captures.len(), 3, "{stdout}");
    for (i, (line, prompt)) in captures
        .iter()
        .zip(["caption en", "detect cat", "caption en"])
        .enumerate()
    {
        assert!(line.starts_with(&format!("capture {i} ")), "{line}");
        assert!(line.contains(&format!("{prompt:?}")), "{line}");
        assert!(line.contains(" ids ["), "{line}");
    }
    assert!(
        stdout.contains("check: on all 3 captured frames"),
        "the CPU comparison did not run or failed:\n{stdout}\n{stderr}"
    );

    // The view: the scene rendered (not a flat clear colour) with the answer under it.
    let view = image::open(&shot).expect("the screenshot").to_rgb8();
    let _ = std::fs::remove_file(&shot);
    assert_eq!(view.dimensions(), (520, 500));
    let colours: std::collections::HashSet<_> = view.pixels().map(|p| p.0).collect();
    assert!(
        colours.len() > 200,
        "{} colours: the view looks blank",
        colours.len()
    );
}
