//! Output of one BAL connection (SPEC §3): the counted queue of lines the
//! engine and the connection's reader hand its writer, and the policy for a
//! BAL that does not read what it is sent.
//!
//! Two thresholds, both on the number of queued lines:
//! * above [`BACKPRESSURE_LINES`] the connection's reader stops reading
//!   from the socket until the writer has caught up to half of it: TCP then
//!   pushes back on the BAL, which cannot make gimmm buffer without bound;
//! * above [`SLOW_CONSUMER_LINES`] (lines the engine still produces, e.g.
//!   answers to what was read before the pause) the connection is closed:
//!   its sequenced messages stay stored and are redelivered when the BAL
//!   logs on again.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use tokio::sync::{mpsc, Notify};

/// Lines queued for one BAL beyond which its reader pauses.
pub const BACKPRESSURE_LINES: usize = 1024;
/// Lines queued for one BAL beyond which it is disconnected.
pub const SLOW_CONSUMER_LINES: usize = 16 * 1024;

/// Something written to a BAL connection.
#[derive(Debug, Clone)]
pub enum Out {
    /// One JSON line (without the newline), shared with the outbox.
    Line(Arc<str>),
    /// One JSON line (without the newline) sent once.
    Owned(String),
    /// Close the connection after what was queued.
    Close,
}

/// The sending side of a connection's output queue.
#[derive(Debug, Clone)]
pub struct OutTx {
    tx: mpsc::UnboundedSender<Out>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
}

/// The writer's side of an [`OutTx`].
#[derive(Debug)]
pub struct OutRx {
    rx: mpsc::UnboundedReceiver<Out>,
    queued: Arc<AtomicUsize>,
    drained: Arc<Notify>,
}

/// A counted queue of lines for one BAL connection.
pub fn out_channel() -> (OutTx, OutRx) {
    let (tx, rx) = mpsc::unbounded_channel();
    let queued = Arc::new(AtomicUsize::new(0));
    let drained = Arc::new(Notify::new());
    (
        OutTx {
            tx,
            queued: queued.clone(),
            drained: drained.clone(),
        },
        OutRx {
            rx,
            queued,
            drained,
        },
    )
}

/// What [`OutTx::deliver`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Queued for the writer (or the writer is gone: the connection is
    /// closing and its Detach follows).
    Queued,
    /// The BAL does not read: the connection is being closed instead.
    SlowConsumer,
}

impl OutTx {
    /// Queues one item; fails when the writer is gone.
    pub fn send(&self, o: Out) -> Result<(), mpsc::error::SendError<Out>> {
        self.queued.fetch_add(1, Ordering::Relaxed);
        self.tx.send(o)
    }

    /// Queues a line unless the BAL stopped reading: past
    /// [`SLOW_CONSUMER_LINES`] the connection is closed instead.
    pub fn deliver(&self, o: Out) -> Delivery {
        if self.backlog() > SLOW_CONSUMER_LINES {
            let _ = self.send(Out::Close);
            return Delivery::SlowConsumer;
        }
        let _ = self.send(o);
        Delivery::Queued
    }

    /// Items queued and not yet written.
    pub fn backlog(&self) -> usize {
        self.queued.load(Ordering::Relaxed)
    }

    /// Waits until the backlog is at most `limit` (or the writer is gone).
    pub async fn wait_below(&self, limit: usize) {
        while self.backlog() > limit {
            if self.tx.is_closed() {
                return;
            }
            self.drained.notified().await;
        }
    }
}

impl OutRx {
    /// The next item.
    pub async fn recv(&mut self) -> Option<Out> {
        let o = self.rx.recv().await;
        self.took(o.is_some());
        o
    }

    /// The next item if one is queued.
    pub fn try_recv(&mut self) -> Option<Out> {
        let o = self.rx.try_recv().ok();
        self.took(o.is_some());
        o
    }

    fn took(&self, some: bool) {
        if some {
            self.queued.fetch_sub(1, Ordering::Relaxed);
        }
    }

    /// Tells a paused reader that the queue was written out.
    pub fn written(&self) {
        self.drained.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn counts_and_closes_slow_consumers() {
        let (tx, mut rx) = out_channel();
        for i in 0..=SLOW_CONSUMER_LINES {
            assert_eq!(tx.deliver(Out::Owned(i.to_string())), Delivery::Queued);
        }
        assert_eq!(tx.backlog(), SLOW_CONSUMER_LINES + 1);
        assert_eq!(tx.deliver(Out::Owned("x".into())), Delivery::SlowConsumer);
        // Everything queued is still written, then the close.
        let mut n = 0;
        while let Some(o) = rx.try_recv() {
            match o {
                Out::Owned(_) => n += 1,
                Out::Close => break,
                Out::Line(_) => unreachable!(),
            }
        }
        assert_eq!(n, SLOW_CONSUMER_LINES + 1);
        assert_eq!(tx.backlog(), 0);
    }

    #[tokio::test]
    async fn wait_below_wakes_when_written() {
        let (tx, mut rx) = out_channel();
        for _ in 0..10 {
            tx.send(Out::Owned(String::new())).unwrap();
        }
        let waiter = {
            let tx = tx.clone();
            tokio::spawn(async move { tx.wait_below(2).await })
        };
        while rx.try_recv().is_some() {}
        rx.written();
        tokio::time::timeout(std::time::Duration::from_secs(5), waiter)
            .await
            .unwrap()
            .unwrap();
    }
}
