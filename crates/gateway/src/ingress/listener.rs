//! The ingress listener (SPEC §10): TCP accept, the connection limit
//! ([`super::conns`]), the TLS handshake (rustls, aws-lc-rs provider) when
//! `tls_cert_file` / `tls_key_file` are set, then HTTP/1.1 served by hyper
//! into the axum router.
//!
//! Slow clients are cut off: the TLS handshake, every request head
//! (hyper's header read timeout, which also closes a connection idle
//! between requests) and every body ([`super::handler`]) must each arrive
//! within `read_timeout_secs`. Request heads are bounded by hyper's buffer
//! ([`MAX_HEAD_BYTES`]; larger heads get 431).

use super::conns::{Admit, ConnGuard, Conns};
use axum::Router;
use hyper_util::rt::{TokioIo, TokioTimer};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

/// hyper's read buffer, which bounds a request head (a JWT in the
/// `Authorization` header fits easily).
pub(crate) const MAX_HEAD_BYTES: usize = 16 * 1024;

/// What every connection needs.
#[derive(Clone)]
pub(crate) struct Serving {
    pub(crate) app: Router,
    pub(crate) tls: Option<TlsAcceptor>,
    pub(crate) conns: Arc<Conns>,
    pub(crate) read_timeout: Duration,
    pub(crate) shutdown: CancellationToken,
}

/// Accepts until `shutdown`; each connection runs on its own task. Returns
/// once every connection has finished, so that nothing it holds (the store)
/// outlives the gateway: a restart in the same process opens the store
/// again at once.
pub(crate) async fn accept_loop(listener: TcpListener, s: Serving) {
    let tasks = tokio_util::task::TaskTracker::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = s.shutdown.cancelled() => break,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                // EMFILE and the like: back off a little instead of spinning.
                tracing::warn!(error = %e, "ingress accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let guard = match s.conns.admit() {
            Admit::In { conn, evicted } => {
                if evicted {
                    metrics::counter!(crate::metrics::INGRESS_CONNECTIONS_EVICTED).increment(1);
                }
                conn
            }
            Admit::Full => {
                tracing::debug!(%peer, "ingress: every connection is busy; refusing");
                metrics::counter!(crate::metrics::INGRESS_CONNECTIONS_REFUSED).increment(1);
                drop(sock);
                continue;
            }
        };
        let _ = sock.set_nodelay(true);
        tasks.spawn(connection(sock, guard, s.clone()));
    }
    drop(listener);
    tasks.close();
    tasks.wait().await;
}

async fn connection(sock: TcpStream, guard: Arc<ConnGuard>, s: Serving) {
    match &s.tls {
        None => serve_http(TokioIo::new(sock), guard, &s).await,
        Some(acceptor) => {
            let handshake = tokio::time::timeout(s.read_timeout, acceptor.accept(sock));
            let tls = tokio::select! {
                r = handshake => r,
                _ = guard.stop().cancelled() => return,
                _ = s.shutdown.cancelled() => return,
            };
            match tls {
                Ok(Ok(tls)) => serve_http(TokioIo::new(tls), guard, &s).await,
                Ok(Err(e)) => {
                    tracing::debug!(error = %e, "ingress: TLS handshake failed");
                    metrics::counter!(crate::metrics::INGRESS_TLS_FAILURES).increment(1);
                }
                Err(_) => {
                    tracing::debug!("ingress: TLS handshake timed out");
                    metrics::counter!(crate::metrics::INGRESS_TLS_FAILURES).increment(1);
                }
            }
        }
    }
}

async fn serve_http<I>(io: I, guard: Arc<ConnGuard>, s: &Serving)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
{
    let app = s.app.clone();
    let g = guard.clone();
    let svc = hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
        // Inside a request the connection is not evicted.
        let busy = g.busy();
        let app = app.clone();
        async move {
            let r = app.oneshot(req.map(axum::body::Body::new)).await;
            drop(busy);
            r
        }
    });
    let mut builder = hyper::server::conn::http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(s.read_timeout)
        .keep_alive(true)
        .max_buf_size(MAX_HEAD_BYTES);
    let conn = builder.serve_connection(io, svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "ingress connection ended with an error");
            }
        }
        // Evicted to make room: drop it.
        _ = guard.stop().cancelled() => {}
        _ = s.shutdown.cancelled() => {
            // Finish the request in progress, then close.
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(s.read_timeout, conn.as_mut()).await;
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use axum::extract::State;
    use axum::routing::get;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::sync::{mpsc, Mutex};

    /// What the test's handler holds: it says when a request is inside and
    /// waits for the test's word before answering.
    struct Gate {
        entered: mpsc::Sender<()>,
        release: Mutex<mpsc::Receiver<()>>,
    }

    /// A request is in progress when the shutdown comes: the accept loop
    /// returns only after that request was answered and its connection let
    /// go of the router (and so of the store it holds), so a restart in the
    /// same process finds the store free.
    #[tokio::test(flavor = "current_thread")]
    async fn returns_only_after_every_connection_let_go() {
        let (entered_tx, mut entered) = mpsc::channel(1);
        let (release, release_rx) = mpsc::channel(1);
        let gate = Arc::new(Gate {
            entered: entered_tx,
            release: Mutex::new(release_rx),
        });
        let app = Router::new()
            .route(
                "/",
                get(|State(g): State<Arc<Gate>>| async move {
                    g.entered.send(()).await.unwrap();
                    g.release.lock().await.recv().await;
                    "ok"
                }),
            )
            .with_state(gate.clone());
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        let s = Serving {
            app,
            tls: None,
            conns: Conns::new(4),
            read_timeout: Duration::from_secs(30),
            shutdown: shutdown.clone(),
        };
        let serving = tokio::spawn(accept_loop(listener, s));
        let mut c = TcpStream::connect(addr).await.unwrap();
        c.write_all(b"GET / HTTP/1.1\r\nhost: x\r\n\r\n")
            .await
            .unwrap();
        entered.recv().await.unwrap();
        shutdown.cancel();
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(
            !serving.is_finished(),
            "returned with a request in progress"
        );
        release.send(()).await.unwrap();
        serving.await.unwrap();
        assert_eq!(
            Arc::strong_count(&gate),
            1,
            "a connection still holds the router"
        );
        let mut answer = Vec::new();
        c.read_to_end(&mut answer).await.unwrap();
        assert!(answer.starts_with(b"HTTP/1.1 200"), "{answer:?}");
    }
}
