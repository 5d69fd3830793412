//! A scripted link factory for tests: every link the engine starts is handed
//! to the test as a [`ScriptedLink`], which sees the commands the engine
//! sends and plays the link's part by sending events. With the in-memory
//! store (`store::memory`) it lets a test run the whole engine under paused
//! tokio time, without sockets or threads.

use super::{LinkCmd, LinkEvent, LinkEvents, LinkFactory, LinkHandle, LinkId};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// One link the engine started.
#[derive(Debug)]
pub struct ScriptedLink {
    /// Its id.
    pub id: LinkId,
    /// The delay the engine asked for before connecting.
    pub delay: Duration,
    /// What the engine sends it.
    pub cmds: mpsc::UnboundedReceiver<LinkCmd>,
    /// Where to send its events.
    pub events: LinkEvents,
    /// Cancelled when the engine aborts its links.
    pub stop: CancellationToken,
}

impl ScriptedLink {
    /// Sends an event as this link.
    pub fn event(&self, ev: LinkEvent) {
        let _ = self.events.send(ev);
    }

    /// Reports `Ready` with `capacity`.
    pub fn ready(&self, capacity: usize) {
        self.event(LinkEvent::Ready {
            link: self.id,
            capacity,
        });
    }
}

/// A factory handing each new link to the test.
#[derive(Debug)]
pub struct ScriptedFactory {
    tx: mpsc::UnboundedSender<ScriptedLink>,
}

impl ScriptedFactory {
    /// The factory and the stream of links it starts.
    pub fn new() -> (ScriptedFactory, mpsc::UnboundedReceiver<ScriptedLink>) {
        let (tx, rx) = mpsc::unbounded_channel();
        (ScriptedFactory { tx }, rx)
    }
}

impl LinkFactory for ScriptedFactory {
    fn spawn(
        &self,
        id: LinkId,
        delay: Duration,
        events: LinkEvents,
        stop: CancellationToken,
    ) -> LinkHandle {
        let (handle, cmds) = LinkHandle::channel();
        let _ = self.tx.send(ScriptedLink {
            id,
            delay,
            cmds,
            events,
            stop,
        });
        handle
    }

    fn kind(&self) -> &'static str {
        "scripted"
    }

    fn peer(&self) -> &'static str {
        "FCM"
    }
}
