//! A loopback port that refuses connections (SPEC §4: FCM unreachable),
//! without the race of "bind port 0, drop, hope nobody takes it".
//!
//! The socket is bound but never listens: connecting gets a reset
//! (connection refused), and no other socket can bind the port while the
//! [`ClosedPort`] lives.

use std::net::SocketAddr;
use tokio::net::TcpSocket;

/// A bound, never listening loopback TCP port.
pub struct ClosedPort {
    _socket: TcpSocket,
    addr: SocketAddr,
}

impl ClosedPort {
    /// Reserves a port on 127.0.0.1.
    pub fn new() -> std::io::Result<ClosedPort> {
        let socket = TcpSocket::new_v4()?;
        socket.bind(SocketAddr::from(([127, 0, 0, 1], 0)))?;
        let addr = socket.local_addr()?;
        Ok(ClosedPort {
            _socket: socket,
            addr,
        })
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:port`.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[tokio::test]
    async fn refuses_connections_and_cannot_be_taken() {
        let closed = ClosedPort::new().unwrap();
        let e = tokio::net::TcpStream::connect(closed.addr())
            .await
            .unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
        assert!(tokio::net::TcpListener::bind(closed.addr()).await.is_err());
    }
}
