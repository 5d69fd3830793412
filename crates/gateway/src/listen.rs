//! Listening sockets for the BAL (SPEC §3), admin (SPEC §6) and ingress
//! (SPEC §10) listeners: bound with a deep accept queue.
//!
//! tokio's `TcpListener::bind` asks for a backlog of 128 (the standard
//! library's value): a burst of a few hundred connects — devices after a
//! push, every BAL after a deploy — then loses SYNs, and each lost one
//! costs its client a second (the SYN retransmission timeout). RELIABILITY
//! HOLE 5 measured it on the ingress. The kernel caps the backlog at
//! `net.core.somaxconn`.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpSocket};

/// Connections the kernel may hold for us before we accept them.
pub const LISTEN_BACKLOG: u32 = 4096;

/// Binds `addr` (`host:port`; a name is resolved, its first address used)
/// with [`LISTEN_BACKLOG`] and `SO_REUSEADDR` (a restart does not wait for
/// the old connections' TIME_WAIT).
pub async fn bind(addr: &str) -> std::io::Result<TcpListener> {
    let resolved: SocketAddr = match addr.parse() {
        Ok(a) => a,
        Err(_) => tokio::net::lookup_host(addr).await?.next().ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::AddrNotAvailable,
                "the name resolves to no address",
            )
        })?,
    };
    let socket = if resolved.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(resolved)?;
    socket.listen(LISTEN_BACKLOG)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// 600 connects at once (fewer if the kernel's cap is lower) all
    /// complete although nothing accepts until they are all in: none waits
    /// in a full accept queue. (With tokio's backlog of 128 the rest wait
    /// for ever, their SYNs dropped and retransmitted: the 5 s deadline
    /// fails the test.)
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_burst_of_connects_fits_the_queue() {
        // The kernel caps the queue at net.core.somaxconn (4096 on kernels
        // since 5.4; 128 before): stay under it, above tokio's 128.
        let cap = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
            .ok()
            .and_then(|s| s.trim().parse::<usize>().ok())
            .unwrap_or(4096);
        let n = 600.min(cap.saturating_sub(8)).max(1);
        let l = bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let connects: Vec<_> = (0..n)
            .map(|_| tokio::spawn(tokio::net::TcpStream::connect(addr)))
            .collect();
        let all = async {
            let mut streams = Vec::new();
            for c in connects {
                streams.push(c.await.unwrap().unwrap());
            }
            streams
        };
        let _streams = tokio::time::timeout(std::time::Duration::from_secs(5), all)
            .await
            .expect("connects still waiting after 5 s: the accept queue is full");
        for _ in 0..n {
            l.accept().await.unwrap();
        }
    }

    #[tokio::test]
    async fn names_resolve_and_bad_addresses_are_errors() {
        let l = bind("localhost:0").await.unwrap();
        assert!(l.local_addr().unwrap().ip().is_loopback());
        assert!(bind("not an address").await.is_err());
    }
}
