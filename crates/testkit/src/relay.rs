//! A TCP relay on a fixed loopback address in front of a gateway whose
//! address changes (SPEC §3.1: a BAL reconnects to the address it knows).
//!
//! Gateways under test bind `127.0.0.1:0`, so a restarted one has a new
//! port. A client that cannot be told the new port (an example program run
//! as a child) connects to the relay instead. While the relay has no target
//! it accepts and closes every connection at once, which the client sees as
//! a lost connection; with a target it copies bytes both ways, and when
//! either side closes it closes the other.

use std::net::SocketAddr;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio::task::JoinHandle;

/// A relay; stops (and closes its connections) when dropped.
pub struct Relay {
    addr: SocketAddr,
    target: watch::Sender<Option<SocketAddr>>,
    task: JoinHandle<()>,
}

impl Relay {
    /// Listens on `127.0.0.1:0`, with no target yet.
    pub async fn start() -> std::io::Result<Relay> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let addr = listener.local_addr()?;
        let (target, rx) = watch::channel(None);
        let task = tokio::spawn(accept_loop(listener, rx));
        Ok(Relay { addr, target, task })
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Relays new connections to `target` (`None`: close them at once).
    /// Connections already relayed stay with their old target.
    pub fn set_target(&self, target: Option<SocketAddr>) {
        self.target.send_replace(target);
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn accept_loop(listener: TcpListener, target: watch::Receiver<Option<SocketAddr>>) {
    // Connections live in this set, so aborting the accept loop ends them.
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => {
                let Ok((client, _)) = accepted else { continue };
                let to = *target.borrow();
                conns.spawn(relay(client, to));
            }
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

async fn relay(mut client: TcpStream, to: Option<SocketAddr>) {
    let Some(to) = to else { return };
    let Ok(mut server) = TcpStream::connect(to).await else {
        return;
    };
    let _ = server.set_nodelay(true);
    let _ = client.set_nodelay(true);
    // Ends when either side closes or fails; dropping both closes both.
    let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use std::time::Duration;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const WAIT: Duration = Duration::from_secs(10);

    #[tokio::test]
    async fn closes_without_a_target_relays_with_one_and_follows_it() {
        let relay = Relay::start().await.unwrap();
        let mut c = TcpStream::connect(relay.addr()).await.unwrap();
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(WAIT, c.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0, "closed at once without a target");

        let backend = TcpListener::bind("127.0.0.1:0").await.unwrap();
        relay.set_target(Some(backend.local_addr().unwrap()));
        let mut c = TcpStream::connect(relay.addr()).await.unwrap();
        c.write_all(b"ping").await.unwrap();
        let (mut s, _) = tokio::time::timeout(WAIT, backend.accept())
            .await
            .unwrap()
            .unwrap();
        let mut got = [0u8; 4];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"ping");
        s.write_all(b"pong").await.unwrap();
        c.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"pong");
        // The backend goes away: so does the client's connection.
        drop(s);
        let n = tokio::time::timeout(WAIT, c.read(&mut buf))
            .await
            .unwrap()
            .unwrap_or(0);
        assert_eq!(n, 0);
    }
}
