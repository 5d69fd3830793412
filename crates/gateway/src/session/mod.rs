//! BAL sessions (SPEC §3): the listener and one task per TCP connection,
//! which owns the line codec and the LOGON handshake, validates DOWNSTREAMs
//! (on its own task, so validation runs in parallel with the engine, see
//! [`prepare`]) and turns lines into engine [`Cmd`]s. A writer task per
//! connection writes what the engine hands it through the connection's
//! output queue ([`out`], which also holds the backpressure policy),
//! flushing when the queue is empty. With `bal.tls_cert_file` set, each
//! connection first does a TLS handshake in its own task ([`tls`], SPEC
//! §11); the connection code is generic over the stream, so the plain path
//! runs on the TCP socket's halves as before.

pub mod out;
pub mod prepare;
pub mod tls;

use self::out::{out_channel, Out, OutRx, OutTx, BACKPRESSURE_LINES};
use crate::config::{BalConfig, Secret};
use crate::engine::{Cmd, ConnId};
use crate::lograte::{tokio_ms, LogLimit, WARN_EVERY_MS};
use bal::proto::{line, BalError, FromBalRef};
use bytes::Bytes;
use futures::StreamExt;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, BufWriter};
use tokio::net::TcpListener;
use tokio::sync::{mpsc, Semaphore};
use tokio_util::codec::{AnyDelimiterCodec, AnyDelimiterCodecError, FramedRead};
use tokio_util::sync::CancellationToken;

/// Shared by all connections.
struct Shared {
    cfg: BalConfig,
    tokens: HashMap<String, Secret>,
    sessions: HashMap<String, Arc<str>>,
    engine: mpsc::Sender<Cmd>,
    next_conn: AtomicU64,
    ids: prepare::IdSource,
    rules: prepare::Rules,
}

/// Accepts BAL connections until `shutdown`; with `tls`, over TLS (the
/// handshake runs in the connection's task, so a slow or silent client
/// never holds up the accept loop).
pub async fn serve(
    listener: TcpListener,
    cfg: BalConfig,
    tls: Option<tls::TlsConfig>,
    rules: prepare::Rules,
    engine: mpsc::Sender<Cmd>,
    shutdown: CancellationToken,
) {
    let acceptor = tls.map(tokio_rustls::TlsAcceptor::from);
    let tokens = cfg
        .sessions
        .iter()
        .map(|s| (s.session_id.clone(), s.token.clone()))
        .collect();
    let sessions = cfg
        .sessions
        .iter()
        .map(|s| (s.session_id.clone(), Arc::from(s.session_id.as_str())))
        .collect();
    let limit = Arc::new(Semaphore::new(cfg.max_connections.max(1)));
    let shared = Arc::new(Shared {
        cfg,
        tokens,
        sessions,
        engine,
        next_conn: AtomicU64::new(1),
        ids: prepare::IdSource::new(),
        rules,
    });
    // A client can make these repeat: logged at most every 10 s.
    let mut accept_log = LogLimit::new(WARN_EVERY_MS);
    let mut full_log = LogLimit::new(WARN_EVERY_MS);
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = shutdown.cancelled() => break,
        };
        let (sock, peer) = match accepted {
            Ok(x) => x,
            Err(e) => {
                if let Some(more) = accept_log.allow(tokio_ms()) {
                    tracing::warn!(error = %e, suppressed = more, "BAL accept failed");
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            if let Some(more) = full_log.allow(tokio_ms()) {
                tracing::warn!(%peer, suppressed = more, "too many BAL connections; refusing");
            }
            drop(sock);
            continue;
        };
        let _ = sock.set_nodelay(true);
        let shared = shared.clone();
        let shutdown = shutdown.clone();
        // One deadline from accept for the TLS handshake and the LOGON.
        let deadline =
            tokio::time::Instant::now() + Duration::from_secs(shared.cfg.logon_timeout_secs);
        let acceptor = acceptor.clone();
        tokio::spawn(async move {
            match acceptor {
                // The hot path: the socket's own halves, no lock, no copy.
                None => {
                    let (r, w) = sock.into_split();
                    connection(r, w, deadline, shared, shutdown).await;
                }
                Some(acceptor) => {
                    let accepted = tokio::select! {
                        r = tokio::time::timeout_at(deadline, acceptor.accept(sock)) => r,
                        _ = shutdown.cancelled() => return,
                    };
                    match accepted {
                        Ok(Ok(stream)) => {
                            let (r, w) = tokio::io::split(stream);
                            connection(r, w, deadline, shared, shutdown).await;
                        }
                        // A client with another CA, plain TCP on the TLS
                        // port, a scanner: its problem, told at debug level
                        // so a port scan does not fill the log.
                        Ok(Err(e)) => {
                            tracing::debug!(%peer, error = %e, "BAL TLS handshake failed")
                        }
                        Err(_) => tracing::debug!(
                            %peer,
                            "BAL TLS handshake not done within logon_timeout_secs"
                        ),
                    }
                }
            }
            drop(permit);
        });
    }
}

/// Constant-time comparison of secrets (BAL tokens, ingress keys): the
/// time depends only on the lengths.
pub(crate) fn same_secret(a: &[u8], b: &[u8]) -> bool {
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= (x ^ y) as usize;
    }
    diff == 0
}

/// One BAL connection on its read and write halves (of a TCP socket, or of
/// a TLS stream), until it closes. The LOGON must arrive by `deadline`.
async fn connection<R, W>(
    r: R,
    w: W,
    deadline: tokio::time::Instant,
    shared: Arc<Shared>,
    shutdown: CancellationToken,
) where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let conn: ConnId = shared.next_conn.fetch_add(1, Ordering::Relaxed);
    let (out_tx, out_rx) = out_channel();
    let closed = CancellationToken::new();
    let writer = tokio::spawn(write_loop(w, out_rx, closed.clone()));
    let codec = AnyDelimiterCodec::new_with_max_length(
        b"\n".to_vec(),
        Vec::new(),
        shared.cfg.max_line_bytes,
    );
    let mut lines = FramedRead::with_capacity(r, codec, 64 * 1024);

    let session = match logon(
        &mut lines, deadline, &shared, &out_tx, conn, &closed, &shutdown,
    )
    .await
    {
        Some(s) => s,
        None => {
            let _ = out_tx.send(Out::Close);
            let _ = writer.await;
            return;
        }
    };
    loop {
        // Backpressure: while the BAL does not read what it is sent, stop
        // reading what it sends.
        // A shutdown does not end the connection: it stays open while the
        // engine drains, so results still reach the BAL and its ACKs still
        // count; the engine closes it at the end (SPEC §11).
        if out_tx.backlog() > BACKPRESSURE_LINES {
            tokio::select! {
                _ = out_tx.wait_below(BACKPRESSURE_LINES / 2) => {}
                _ = closed.cancelled() => break,
            }
        }
        let next = tokio::select! {
            n = lines.next() => n,
            _ = closed.cancelled() => break,
        };
        let line = match next {
            None => break,
            Some(Ok(l)) => l,
            Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded)) => {
                send(
                    &out_tx,
                    line::error(
                        BalError::LineTooLong,
                        &format!("line longer than {} bytes", shared.cfg.max_line_bytes),
                    ),
                );
                break;
            }
            Some(Err(AnyDelimiterCodecError::Io(_))) => break,
        };
        let line = trim_cr(&line);
        if line.is_empty() {
            continue;
        }
        match FromBalRef::parse(line) {
            Ok(FromBalRef::Ping) => send(&out_tx, line::pong()),
            Ok(FromBalRef::Ack { sequence_id }) => {
                if shared
                    .engine
                    .send(Cmd::Ack {
                        session: session.clone(),
                        conn,
                        seq: sequence_id,
                    })
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(FromBalRef::Downstream { fcm_data, .. }) if shutdown.is_cancelled() => {
                let id = prepare::message_id_of(fcm_data.get()).unwrap_or_default();
                send(
                    &out_tx,
                    line::error(
                        BalError::ShuttingDown,
                        &format!("message {id} not accepted: gimmm is shutting down"),
                    ),
                );
            }
            Ok(FromBalRef::Downstream { group_id, fcm_data }) => {
                let inc = prepare::downstream(
                    &shared.ids,
                    shared.rules,
                    &session,
                    conn,
                    group_id.map(|g| g.into_owned()),
                    fcm_data.get(),
                );
                if shared
                    .engine
                    .send(Cmd::Downstream(Box::new(inc)))
                    .await
                    .is_err()
                {
                    break;
                }
            }
            Ok(FromBalRef::Logon { .. }) => send(
                &out_tx,
                line::error(BalError::UnknownMessageType, "already logged on"),
            ),
            Err((code, desc)) => send(&out_tx, line::error(code, &desc)),
        }
    }
    let _ = shared.engine.send(Cmd::Detach { session, conn }).await;
    let _ = out_tx.send(Out::Close);
    let _ = writer.await;
}

fn trim_cr(b: &Bytes) -> &[u8] {
    let s: &[u8] = b;
    s.strip_suffix(b"\r").unwrap_or(s)
}

fn send(out: &OutTx, line: String) {
    let _ = out.send(Out::Owned(line));
}

async fn logon<R: AsyncRead + Unpin>(
    lines: &mut FramedRead<R, AnyDelimiterCodec>,
    deadline: tokio::time::Instant,
    shared: &Shared,
    out: &OutTx,
    conn: ConnId,
    closed: &CancellationToken,
    shutdown: &CancellationToken,
) -> Option<Arc<str>> {
    let first = tokio::select! {
        r = tokio::time::timeout_at(deadline, lines.next()) => r,
        _ = closed.cancelled() => return None,
        _ = shutdown.cancelled() => return None,
    };
    let line = match first {
        Err(_) => {
            tracing::debug!(conn, "BAL logon timeout");
            send(
                out,
                line::error(BalError::NotLoggedOn, "no LOGON within logon_timeout_secs"),
            );
            return None;
        }
        Ok(None) | Ok(Some(Err(AnyDelimiterCodecError::Io(_)))) => return None,
        Ok(Some(Err(AnyDelimiterCodecError::MaxChunkLengthExceeded))) => {
            send(out, line::error(BalError::LineTooLong, "line too long"));
            return None;
        }
        Ok(Some(Ok(l))) => l,
    };
    match FromBalRef::parse(trim_cr(&line)) {
        Ok(FromBalRef::Logon { session_id, token }) => {
            let (session_id, token) = (session_id.into_owned(), token.into_owned());
            let ok = match shared.tokens.get(&session_id) {
                Some(t) => same_secret(t.expose().as_bytes(), token.as_bytes()),
                None => {
                    // Same work and answer for an unknown session.
                    let _ = same_secret(token.as_bytes(), token.as_bytes());
                    false
                }
            };
            let session = shared.sessions.get(&session_id).cloned();
            match (ok, session) {
                (true, Some(session)) => {
                    let cmd = Cmd::Attach {
                        session: session.clone(),
                        conn,
                        out: out.clone(),
                    };
                    shared.engine.send(cmd).await.ok()?;
                    Some(session)
                }
                _ => {
                    tracing::info!(conn, "BAL logon refused");
                    metrics::counter!(crate::metrics::BAL_LOGON_FAILURES).increment(1);
                    send(
                        out,
                        line::logon_response(&session_id, Some("unknown session or wrong token")),
                    );
                    None
                }
            }
        }
        Ok(_) => {
            send(
                out,
                line::error(BalError::NotLoggedOn, "the first message must be LOGON"),
            );
            None
        }
        Err((code, desc)) => {
            send(out, line::error(code, &desc));
            None
        }
    }
}

async fn write_loop<W: AsyncWrite + Unpin>(w: W, mut rx: OutRx, closed: CancellationToken) {
    let mut w = BufWriter::with_capacity(64 * 1024, w);
    'outer: while let Some(first) = rx.recv().await {
        let mut next = Some(first);
        while let Some(item) = next {
            match item {
                Out::Line(l) => {
                    if w.write_all(l.as_bytes()).await.is_err() || w.write_all(b"\n").await.is_err()
                    {
                        break 'outer;
                    }
                }
                Out::Owned(l) => {
                    if w.write_all(l.as_bytes()).await.is_err() || w.write_all(b"\n").await.is_err()
                    {
                        break 'outer;
                    }
                }
                Out::Close => {
                    let _ = w.flush().await;
                    let _ = w.shutdown().await;
                    break 'outer;
                }
            }
            next = rx.try_recv();
        }
        if w.flush().await.is_err() {
            break;
        }
        rx.written();
    }
    closed.cancel();
}

#[cfg(test)]
mod tests {
    use super::same_secret;

    #[test]
    fn secret_comparison() {
        assert!(same_secret(b"abc", b"abc"));
        assert!(!same_secret(b"abc", b"abd"));
        assert!(!same_secret(b"abc", b"abcd"));
        assert!(!same_secret(b"", b"a"));
        assert!(same_secret(b"", b""));
    }
}
