//! Per-connection I/O: TLS accept, XMPP negotiation, then a reader, a writer
//! and (for delayed answers) a responder task.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::{sleep_until, timeout, Instant};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};
use xmpp::negotiate::ServerParams;
use xmpp::reader::{Event, StanzaReader};
use xmpp::stream::XmppStream;
use xmpp::XmppError;

use crate::state::{Batch, Flow, Out, ReceiptReq, Shared};

/// Accept TCP connections until `stop_accept` fires.
pub(crate) async fn accept_loop(shared: Arc<Shared>, listener: TcpListener, acceptor: TlsAcceptor) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop_accept.cancelled() => return,
            r = listener.accept() => r,
        };
        match accepted {
            Ok((tcp, peer)) => {
                let sh = Arc::clone(&shared);
                let acc = acceptor.clone();
                shared.tracker.spawn(handle_conn(sh, tcp, peer, acc));
            }
            Err(e) => {
                // E.g. EMFILE: back off a little instead of spinning.
                warn!(error = %e, "emulator: accept failed");
                tokio::select! {
                    _ = shared.stop_accept.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(20)) => {}
                }
            }
        }
    }
}

/// Deliver delayed receipts (fault `receipt_delay`) in order.
pub(crate) async fn receipt_scheduler(
    shared: Arc<Shared>,
    mut rx: mpsc::UnboundedReceiver<(Instant, ReceiptReq)>,
) {
    loop {
        let item = tokio::select! {
            _ = shared.root.cancelled() => return,
            r = rx.recv() => r,
        };
        let Some((due, r)) = item else { return };
        tokio::select! {
            _ = shared.root.cancelled() => return,
            _ = sleep_until(due) => {}
        }
        shared.enqueue_receipt(r);
    }
}

/// SASL PLAIN check: authcid `<sender_id>@<domain>` and the server key.
fn credentials_ok(sender_id: &str, server_key: &str, authcid: &str, password: &str) -> bool {
    let user_ok = match authcid.split_once('@') {
        Some((local, domain)) => local == sender_id && !domain.is_empty(),
        None => false,
    };
    // Compare the key without an early exit on the first differing byte.
    let a = password.as_bytes();
    let b = server_key.as_bytes();
    let mut diff = a.len() ^ b.len();
    for (x, y) in a.iter().zip(b.iter()) {
        diff |= usize::from(x ^ y);
    }
    user_ok && diff == 0
}

fn stream_id() -> String {
    format!("{:016X}", rand::random::<u64>())
}

async fn handle_conn(shared: Arc<Shared>, tcp: TcpStream, peer: SocketAddr, acceptor: TlsAcceptor) {
    let _ = tcp.set_nodelay(true);
    let (id, rx, kill) = shared.conn_opened();
    debug!(conn = id, %peer, "emulator: connection accepted");
    let hs = shared.tun.handshake_timeout;

    let tls = tokio::select! {
        _ = kill.cancelled() => None,
        r = timeout(hs, acceptor.accept(tcp)) => match r {
            Ok(Ok(tls)) => Some(tls),
            Ok(Err(e)) => {
                debug!(conn = id, error = %e, "emulator: TLS handshake failed");
                None
            }
            Err(_) => None,
        },
    };
    let Some(tls) = tls else {
        shared.conn_closed(id);
        return;
    };

    let mut xs = XmppStream::new(tls, shared.tun.max_stanza_bytes);
    let params = ServerParams {
        domain: "fcm.googleapis.com".to_owned(),
        stream_id: stream_id(),
    };
    let sender_id = shared.sender_id.clone();
    let server_key = shared.server_key.clone();
    let check = move |authcid: &str, password: &str| {
        credentials_ok(&sender_id, &server_key, authcid, password)
    };
    let negotiated = tokio::select! {
        _ = kill.cancelled() => None,
        r = timeout(hs, xs.negotiate_server(params, check)) => Some(r),
    };
    match negotiated {
        Some(Ok(Ok(jid))) => {
            debug!(conn = id, %jid, "emulator: session ready");
        }
        Some(Ok(Err(XmppError::AuthFailed(_)))) => {
            shared.auth_failed();
            debug!(conn = id, "emulator: authentication failed");
            let _ = timeout(Duration::from_secs(1), async {
                let _ = xs.send(xmpp::writer::STREAM_END.as_bytes()).await;
                let (mut io, _) = xs.into_parts();
                let _ = io.shutdown().await;
            })
            .await;
            shared.conn_closed(id);
            return;
        }
        Some(Ok(Err(e))) => {
            debug!(conn = id, error = %e, "emulator: negotiation failed");
            shared.conn_closed(id);
            return;
        }
        Some(Err(_)) | None => {
            shared.conn_closed(id);
            return;
        }
    }

    let (io, parser) = xs.into_parts();
    let (rd, wr) = tokio::io::split(io);
    let reader_done = CancellationToken::new();
    let (resp_tx, resp_rx) = std::sync::mpsc::channel();
    shared.tracker.spawn(writer_loop(
        Arc::clone(&shared),
        id,
        wr,
        rx,
        kill.clone(),
        reader_done.clone(),
    ));
    {
        let (sh, kill) = (Arc::clone(&shared), kill.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("emu-responder-{id}"))
            .spawn(move || responder_thread(&sh, id, &resp_rx, &kill));
        if let Err(e) = spawned {
            warn!(conn = id, error = %e, "emulator: cannot start the ack-delay thread");
        }
    }
    shared.conn_ready(id);

    let end = reader_loop(&shared, id, rd, parser, &kill, resp_tx).await;
    if end == End::Abrupt {
        kill.cancel();
    }
    reader_done.cancel();
    // Drops the writer's sender: the writer ends the stream after what is queued.
    shared.conn_closed(id);
    debug!(conn = id, ?end, "emulator: connection closed");
}

#[derive(Debug, PartialEq, Eq)]
enum End {
    /// Peer ended the stream / closed, or we closed: end our side politely.
    Graceful,
    /// Drop fault or shutdown: just let go of the socket.
    Abrupt,
}

async fn reader_loop<R: AsyncRead + Unpin>(
    shared: &Shared,
    id: u64,
    mut rd: R,
    mut parser: StanzaReader,
    kill: &CancellationToken,
    resp_tx: std::sync::mpsc::Sender<(std::time::Instant, Batch)>,
) -> End {
    let mut buf = vec![0u8; 32 * 1024];
    let mut batch = Batch::default();
    let mut scratch = String::with_capacity(256);
    loop {
        let view = shared.view();
        let mut end = None;
        loop {
            match parser.next_event() {
                Ok(Some(Event::Message(m))) => match m.gcm.as_deref() {
                    Some(json) => {
                        let flow = shared.handle_gcm(
                            id,
                            m.id.as_deref(),
                            json,
                            &view,
                            &mut batch,
                            &mut scratch,
                        );
                        if flow == Flow::Drop {
                            return End::Abrupt;
                        }
                    }
                    None => shared.ignored(),
                },
                Ok(Some(Event::StreamEnd)) | Ok(Some(Event::StreamError { .. })) => {
                    end = Some(End::Graceful);
                    break;
                }
                // Keepalives, iq, unknown stanzas: nothing to do.
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) => {
                    debug!(conn = id, error = %e, "emulator: bad XML from client");
                    let condition = match e {
                        XmppError::StanzaTooLarge { .. } => "policy-violation",
                        XmppError::Forbidden(_) => "restricted-xml",
                        _ => "not-well-formed",
                    };
                    shared.send_bytes(id, xmpp::writer::stream_error(condition).into_bytes());
                    end = Some(End::Graceful);
                    break;
                }
            }
        }
        if !batch.is_empty() {
            if view.ack_delay.is_zero() {
                shared.commit(id, &mut batch);
            } else {
                // Real time on purpose: the responder thread releases the
                // answers with a precise sleep (see `responder_thread`).
                #[allow(clippy::disallowed_methods)]
                let due = std::time::Instant::now() + view.ack_delay;
                let _ = resp_tx.send((due, std::mem::take(&mut batch)));
            }
        }
        if let Some(end) = end {
            return end;
        }
        let read = tokio::select! {
            biased;
            _ = kill.cancelled() => return End::Abrupt,
            r = rd.read(&mut buf) => r,
        };
        match read {
            Ok(0) => return End::Graceful,
            Ok(n) => parser.feed(&buf[..n]),
            Err(e) => {
                debug!(conn = id, error = %e, "emulator: read failed");
                return End::Abrupt;
            }
        }
    }
}

/// Answers held back by fault `ack_delay`, released in order. A thread
/// rather than a task: tokio's timer has 1 ms resolution (a "1 ms" delay
/// lasted 1–2 ms), which made the emulator, not the client, the bound of
/// window-limited runs. Ends when the reader drops its sender or on `kill`.
#[allow(clippy::disallowed_methods)] // a thread, on real time by design
fn responder_thread(
    shared: &Shared,
    id: u64,
    rx: &std::sync::mpsc::Receiver<(std::time::Instant, Batch)>,
    kill: &CancellationToken,
) {
    while let Ok((due, mut batch)) = rx.recv() {
        loop {
            if kill.is_cancelled() {
                return;
            }
            let now = std::time::Instant::now();
            if now >= due {
                break;
            }
            // Short slices, so a kill is noticed during long delays.
            std::thread::sleep((due - now).min(Duration::from_millis(20)));
        }
        shared.commit(id, &mut batch);
    }
}

/// Largest batch the writer coalesces into one write.
const MAX_WRITE: usize = 256 * 1024;

async fn write_out<W: AsyncWrite + Unpin>(
    wr: &mut W,
    data: &[u8],
    chunk: Option<usize>,
) -> io::Result<()> {
    match chunk {
        Some(n) if n > 0 => {
            for c in data.chunks(n) {
                wr.write_all(c).await?;
                wr.flush().await?;
            }
        }
        _ => {
            wr.write_all(data).await?;
            wr.flush().await?;
        }
    }
    Ok(())
}

fn earliest(ts: &[Option<Instant>]) -> Option<Instant> {
    ts.iter().flatten().min().copied()
}

async fn sleep_opt(t: Option<Instant>) {
    match t {
        Some(t) => sleep_until(t).await,
        None => std::future::pending().await,
    }
}

async fn writer_loop<W: AsyncWrite + Unpin>(
    shared: Arc<Shared>,
    id: u64,
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Out>,
    kill: CancellationToken,
    reader_done: CancellationToken,
) {
    let mut faults_rx = shared.faults.subscribe();
    let (mut ka_every, mut drain_every) = {
        let f = faults_rx.borrow_and_update();
        (f.keepalive_every, f.drain_every)
    };
    let now = Instant::now();
    let mut ka_at = ka_every.map(|d| now + d);
    let mut drain_at = drain_every.map(|d| now + d);
    let mut grace_at: Option<Instant> = None;
    let mut hard_at: Option<Instant> = None;
    let mut buf: Vec<u8> = Vec::with_capacity(16 * 1024);

    let graceful = loop {
        let next = earliest(&[ka_at, drain_at, grace_at, hard_at]);
        tokio::select! {
            biased;
            _ = kill.cancelled() => break false,
            item = rx.recv() => {
                buf.clear();
                let mut close = false;
                let mut item = item;
                loop {
                    match item {
                        None => { close = true; break; }
                        Some(Out::Bytes(b)) => {
                            if buf.is_empty() && b.len() > buf.capacity() {
                                buf = b;
                            } else {
                                buf.extend_from_slice(&b);
                            }
                        }
                        Some(Out::DrainStarted) => {
                            let now = Instant::now();
                            grace_at = Some(now + shared.tun.drain_grace);
                            hard_at = Some(now + shared.tun.drain_timeout);
                            drain_at = None;
                        }
                        Some(Out::Close) => { close = true; break; }
                    }
                    if buf.len() >= MAX_WRITE {
                        break;
                    }
                    match rx.try_recv() {
                        Ok(x) => item = Some(x),
                        Err(_) => break,
                    }
                }
                if !buf.is_empty() {
                    let chunk = shared.faults.borrow().chunk_size;
                    if let Err(e) = write_out(&mut wr, &buf, chunk).await {
                        debug!(conn = id, error = %e, "emulator: write failed");
                        break false;
                    }
                }
                if close {
                    break true;
                }
            }
            _ = sleep_opt(next) => {
                let now = Instant::now();
                if ka_at.is_some_and(|t| t <= now) {
                    ka_at = ka_every.map(|d| now + d);
                    if let Err(e) = write_out(&mut wr, xmpp::writer::KEEPALIVE, None).await {
                        debug!(conn = id, error = %e, "emulator: keepalive failed");
                        break false;
                    }
                }
                if drain_at.is_some_and(|t| t <= now) {
                    drain_at = None;
                    shared.drain(id);
                }
                if grace_at.is_some_and(|t| t <= now) {
                    grace_at = None;
                    shared.drain_grace_elapsed(id);
                }
                if hard_at.is_some_and(|t| t <= now) {
                    hard_at = None;
                    shared.drain_timed_out(id);
                }
            }
            changed = faults_rx.changed() => {
                if changed.is_err() {
                    // Emulator gone.
                    break false;
                }
                let f = faults_rx.borrow_and_update();
                let now = Instant::now();
                if f.keepalive_every != ka_every {
                    ka_every = f.keepalive_every;
                    ka_at = ka_every.map(|d| now + d);
                }
                if f.drain_every != drain_every {
                    drain_every = f.drain_every;
                    if grace_at.is_none() && hard_at.is_none() {
                        drain_at = drain_every.map(|d| now + d);
                    }
                }
            }
        }
    };

    if graceful {
        let close_timeout = shared.tun.close_timeout;
        let _ = timeout(close_timeout, async {
            wr.write_all(xmpp::writer::STREAM_END.as_bytes()).await?;
            wr.flush().await?;
            wr.shutdown().await
        })
        .await;
        // Give the client time to end its side; the reader sees that.
        tokio::select! {
            _ = reader_done.cancelled() => {}
            _ = kill.cancelled() => {}
            _ = tokio::time::sleep(close_timeout) => {}
        }
    }
    kill.cancel();
}

#[cfg(test)]
mod tests {
    use super::credentials_ok;

    #[test]
    fn sasl_user_and_key_checked() {
        assert!(credentials_ok("123", "k", "123@fcm.googleapis.com", "k"));
        assert!(credentials_ok("123", "k", "123@gcm.googleapis.com", "k"));
        assert!(!credentials_ok("123", "k", "123@gcm.googleapis.com", "kk"));
        assert!(!credentials_ok("123", "k", "123@gcm.googleapis.com", ""));
        assert!(!credentials_ok("123", "k", "124@gcm.googleapis.com", "k"));
        assert!(!credentials_ok("123", "k", "123", "k"));
        assert!(!credentials_ok("123", "k", "123@", "k"));
    }
}
