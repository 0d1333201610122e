//! `paligemma serve`: the library's OpenAI-compatible server on a port.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use paligemma::PaliGemma;
use paligemma::segmentation::SegDecoder;
use paligemma::serve::engine::{EngineOptions, Loaded, Reload};
use paligemma::serve::{Limits, ServerOptions, router};

use crate::load_model;

#[derive(clap::Args, Debug)]
pub struct ServeArgs {
    #[command(flatten)]
    model: crate::ModelArgs,
    /// The address to listen on (127.0.0.1: this machine only).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// 0 picks a free port; the address is printed either way.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Sequences decoding together at most.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Requests waiting to start at most; more get 503.
    #[arg(long, default_value_t = 256)]
    max_queue: usize,
    /// Tokens generated at most for requests that give no `max_tokens`.
    #[arg(long, visible_alias = "default-max-tokens", default_value_t = 256)]
    max_new_tokens: usize,
    /// big_vision's segmentation-mask decoder (`vae-oid.npz`): `segment` answers get masks.
    #[arg(long)]
    seg_decoder: Option<std::path::PathBuf>,
    /// Largest request body in MiB.
    #[arg(long, default_value_t = 32)]
    max_body_mb: usize,
    /// Connections open at once at most (more wait to be accepted).
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a request's headers, and then its body, may take to arrive (a client that
    /// trickles them is cut off: 408 for a body).
    #[arg(long, default_value_t = 30)]
    read_timeout: u64,
    /// Accept `image_url`s that name files on this machine (absolute paths or file:// URLs).
    #[arg(long)]
    allow_local_images: bool,
    /// The model id `/v1/models` lists (default: the folder's name, or the hub id).
    #[arg(long)]
    model_name: Option<String>,
}

pub fn serve(args: &ServeArgs) -> anyhow::Result<()> {
    if args.max_batch == 0 || args.max_queue == 0 {
        anyhow::bail!("--max-batch and --max-queue must be at least 1");
    }
    let m = &args.model;
    let dir = crate::model_folder(&m.model)?;
    let model = load_model(&dir, m.precision, m.adapter.as_deref())?;
    let seg_decoder = crate::seg_decoder(&model, args.seg_decoder.as_deref())?.map(Arc::new);
    // After a device loss: the same folder, precision, adapter and decoder, on a new device.
    let (load, seg) = (
        crate::load_options(m.precision, m.adapter.as_deref()),
        args.seg_decoder.clone(),
    );
    let reload = Reload(Arc::new(move || {
        let model = PaliGemma::load(&dir, &load)?;
        let seg_decoder = seg
            .as_ref()
            .map(|p| SegDecoder::load(model.gpu(), p))
            .transpose()?;
        Ok(Loaded { model, seg_decoder })
    }));
    // A folder's name, or the hub id as given.
    let name = args
        .model_name
        .clone()
        .unwrap_or_else(|| match m.model.is_dir() {
            true => m
                .model
                .file_name()
                .map_or("paligemma".into(), |n| n.to_string_lossy().to_string()),
            false => m.model.to_string_lossy().to_string(),
        });
    let opts = ServerOptions {
        model_name: name,
        max_body_bytes: args.max_body_mb << 20,
        body_timeout: Duration::from_secs(args.read_timeout.max(1)),
        default_max_tokens: crate::at_least("--max-new-tokens", args.max_new_tokens as i64, 1)?,
        seg_decoder,
        reload: Some(reload),
        allow_local_images: args.allow_local_images,
        engine: EngineOptions {
            max_batch: args.max_batch,
            max_queue: args.max_queue,
            ..Default::default()
        },
        ..Default::default()
    };
    let adapter = model.gpu().adapter_name();
    let limits = Limits {
        max_connections: args.max_connections.max(1),
        header_timeout: Duration::from_secs(args.read_timeout.max(1)),
        ..Limits::default()
    };
    let app = router(Arc::new(model), opts)?;
    let rt = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    rt.block_on(async {
        let addr = format!("{}:{}", args.host, args.port);
        let listener = tokio::net::TcpListener::bind(&addr)
            .await
            .with_context(|| format!("listening on {addr}"))?;
        let local = listener.local_addr()?;
        // One line tests and scripts can wait for.
        println!("listening on http://{local} ({adapter})");
        use std::io::Write;
        std::io::stdout().flush()?;
        paligemma::serve::serve(listener, app, limits).await?;
        Ok(())
    })
}
