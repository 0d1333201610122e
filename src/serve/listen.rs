//! Accepting connections within limits: at most `max_connections` open at once (the rest wait
//! in the kernel's backlog), request headers that must arrive within `header_timeout` and fit
//! in `max_header_bytes` (a client that trickles them in is disconnected), and a graceful end on
//! Ctrl-C (open connections finish their answers). axum's own `serve` sets none of these, so
//! connections are served by hyper's HTTP/1.1 builder here.

use std::future::Future;
use std::pin::pin;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;

/// How many connections, and how long and large their requests' heads may be.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    pub max_connections: usize,
    /// The time a request's line and headers may take to arrive (also a kept-alive
    /// connection's idle time before its next request).
    pub header_timeout: Duration,
    /// Largest request head (hyper's read buffer; at least 8 KiB).
    pub max_header_bytes: usize,
    /// How long open connections may take to finish after Ctrl-C.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_connections: 1024,
            header_timeout: Duration::from_secs(30),
            max_header_bytes: 64 << 10,
            shutdown_grace: Duration::from_secs(30),
        }
    }
}

/// Serves `app` on `listener` within `limits` until `shutdown` completes, then lets open
/// connections finish (up to `limits.shutdown_grace`).
pub async fn serve_until(
    listener: TcpListener,
    app: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()>,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let graceful = GracefulShutdown::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => p.expect("the semaphore is never closed"),
            () = &mut shutdown => break,
        };
        let stream = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    log::warn!("accepting a connection: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            },
            () = &mut shutdown => break,
        };
        let mut http = hyper::server::conn::http1::Builder::new();
        http.timer(TokioTimer::new())
            .header_read_timeout(limits.header_timeout)
            .max_buf_size(limits.max_header_bytes.max(8192));
        let service = TowerToHyperService::new(app.clone());
        let conn = graceful.watch(http.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                log::debug!("a connection ended: {e}");
            }
            drop(permit);
        });
    }
    if tokio::time::timeout(limits.shutdown_grace, graceful.shutdown())
        .await
        .is_err()
    {
        log::warn!(
            "connections still open after {:?}: closing them",
            limits.shutdown_grace
        );
    }
    Ok(())
}
