//! Memory while loading: a bf16 checkpoint of ~310 MB, loaded and answering one token, must
//! peak at no more than 1.3x its weight bytes + 150 MB of anonymous + shared memory (on
//! lavapipe GPU buffers are host memory, so they show here). wgpu keeps the staging copy of every
//! buffer made `mapped_at_creation` until the next submission; without flushing while loading,
//! the whole checkpoint sat twice in memory (685 MB for this one).
#![cfg(target_os = "linux")]

mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use safetensors::Dtype;
use safetensors::tensor::TensorView;

/// (name, shape) of a PaliGemma with a 1024-wide, 8-layer Gemma, a 32768-row vocabulary and a
/// small SigLIP at 112px (64 image tokens: the bytes are the test's, the prefill's arithmetic
/// only costs time on lavapipe): 155 M weights.
fn tensors() -> Vec<(String, Vec<usize>)> {
    let (h, i, layers, heads, kv, hd, vocab) = (1024, 4096, 8, 8, 1, 128, 32768);
    let (d, di, dl, n) = (256, 1024, 2, 64);
    let v = "vision_tower.vision_model.";
    let mut t = vec![
        (
            format!("{v}embeddings.patch_embedding.weight"),
            vec![d, 3, 14, 14],
        ),
        (format!("{v}embeddings.patch_embedding.bias"), vec![d]),
        (
            format!("{v}embeddings.position_embedding.weight"),
            vec![n, d],
        ),
        (format!("{v}post_layernorm.weight"), vec![d]),
        (format!("{v}post_layernorm.bias"), vec![d]),
        ("multi_modal_projector.linear.weight".into(), vec![h, d]),
        ("multi_modal_projector.linear.bias".into(), vec![h]),
        (
            "language_model.model.embed_tokens.weight".into(),
            vec![vocab, h],
        ),
        ("language_model.model.norm.weight".into(), vec![h]),
    ];
    for l in 0..dl {
        let p = format!("{v}encoder.layers.{l}.");
        for m in ["q_proj", "k_proj", "v_proj", "out_proj"] {
            t.push((format!("{p}self_attn.{m}.weight"), vec![d, d]));
            t.push((format!("{p}self_attn.{m}.bias"), vec![d]));
        }
        for m in ["layer_norm1", "layer_norm2"] {
            t.push((format!("{p}{m}.weight"), vec![d]));
            t.push((format!("{p}{m}.bias"), vec![d]));
        }
        t.push((format!("{p}mlp.fc1.weight"), vec![di, d]));
        t.push((format!("{p}mlp.fc1.bias"), vec![di]));
        t.push((format!("{p}mlp.fc2.weight"), vec![d, di]));
        t.push((format!("{p}mlp.fc2.bias"), vec![d]));
    }
    for l in 0..layers {
        let p = format!("language_model.model.layers.{l}.");
        t.push((format!("{p}self_attn.q_proj.weight"), vec![heads * hd, h]));
        t.push((format!("{p}self_attn.k_proj.weight"), vec![kv * hd, h]));
        t.push((format!("{p}self_attn.v_proj.weight"), vec![kv * hd, h]));
        t.push((format!("{p}self_attn.o_proj.weight"), vec![h, heads * hd]));
        t.push((format!("{p}mlp.gate_proj.weight"), vec![i, h]));
        t.push((format!("{p}mlp.up_proj.weight"), vec![i, h]));
        t.push((format!("{p}mlp.down_proj.weight"), vec![h, i]));
        t.push((format!("{p}input_layernorm.weight"), vec![h]));
        t.push((format!("{p}post_attention_layernorm.weight"), vec![h]));
    }
    t
}

/// Writes the checkpoint folder; returns its weight bytes.
fn write_checkpoint(dir: &Path) -> u64 {
    std::fs::create_dir_all(dir).unwrap();
    let mut cfg: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(common::fixture_path("mqa/model/config.json")).unwrap(),
    )
    .unwrap();
    let text = &mut cfg["text_config"];
    for (k, v) in [
        ("hidden_size", 1024),
        ("intermediate_size", 4096),
        ("num_hidden_layers", 8),
        ("num_attention_heads", 8),
        ("num_key_value_heads", 1),
        ("head_dim", 128),
        ("vocab_size", 32768),
    ] {
        text[k] = v.into();
    }
    let vision = &mut cfg["vision_config"];
    for (k, v) in [
        ("hidden_size", 256),
        ("intermediate_size", 1024),
        ("num_hidden_layers", 2),
        ("num_attention_heads", 4),
        ("image_size", 112),
        ("patch_size", 14),
        ("projection_dim", 1024),
    ] {
        vision[k] = v.into();
    }
    cfg["vocab_size"] = 32768.into();
    for part in ["text_config", "vision_config"] {
        cfg[part]["num_image_tokens"] = 64.into();
    }
    std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    std::fs::copy(
        common::fixture_path("mqa/model/tokenizer.json"),
        dir.join("tokenizer.json"),
    )
    .unwrap();
    // bf16 values of about 0.02 from a fixed-seed generator.
    let mut state = 0x2545_f491_4f6c_dd1du64;
    let data: Vec<(String, Vec<usize>, Vec<u8>)> = tensors()
        .into_iter()
        .map(|(name, shape)| {
            let n: usize = shape.iter().product();
            let bytes = (0..n)
                .flat_map(|_| {
                    state ^= state << 13;
                    state ^= state >> 7;
                    state ^= state << 17;
                    let v = ((state >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 0.04;
                    half::bf16::from_f32(v).to_le_bytes()
                })
                .collect();
            (name, shape, bytes)
        })
        .collect();
    let total = data.iter().map(|t| t.2.len() as u64).sum();
    let views = data.iter().map(|(name, shape, bytes)| {
        (
            name.clone(),
            TensorView::new(Dtype::BF16, shape.clone(), bytes).unwrap(),
        )
    });
    safetensors::serialize_to_file(views, None, &dir.join("model.safetensors")).unwrap();
    total
}

/// Anonymous + shared resident kB of process `pid`, if it still runs.
fn anon_and_shared_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let kb = |key: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Some(kb("RssAnon:") + kb("RssShmem:"))
}

#[test]
fn loading_a_checkpoint_peaks_near_its_size() {
    let dir = std::env::temp_dir().join(format!("paligemma-memory-{}", std::process::id()));
    let weights = write_checkpoint(&dir);
    let bin = std::env::var("PALIGEMMA_BIN")
        .unwrap_or_else(|_| env!("CARGO_BIN_EXE_paligemma").to_string());
    let mut child = Command::new(bin)
        .args(["--model", dir.to_str().unwrap(), "--image"])
        .arg(common::fixture_path("mqa/photo.jpg"))
        .args(["--prompt", "caption en", "--max-new-tokens", "1"])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut peak_kb = 0;
    while child.try_wait().unwrap().is_none() {
        if let Some(kb) = anon_and_shared_kb(child.id()) {
            peak_kb = peak_kb.max(kb);
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let (peak, limit) = (peak_kb * 1024, weights * 13 / 10 + 150_000_000);
    eprintln!(
        "{} MB of bf16 weights: peak anonymous + shared {} MB (limit {} MB)",
        weights / 1_000_000,
        peak / 1_000_000,
        limit / 1_000_000
    );
    assert!(peak <= limit, "peak {peak} bytes over {limit}");
}
