//! Counters the emulator keeps (SPEC §5 "Counts what it saw").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What happened to one downstream `message_id`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MsgStats {
    /// Times a downstream message with this id arrived.
    pub received: u64,
    /// Acks sent for it.
    pub acked: u64,
    /// Nacks sent for it.
    pub nacked: u64,
    /// Times it was "delivered to the device" (acked, not `dry_run`).
    pub delivered: u64,
    /// Error code of the last nack, if any.
    pub last_error: Option<String>,
}

/// One XMPP connection the emulator accepted (kept after it closed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConnStats {
    /// Connection number, from 1, in accept order.
    pub id: u64,
    /// The TCP connection is still open.
    pub open: bool,
    /// SASL and bind succeeded.
    pub authenticated: bool,
    /// CONNECTION_DRAINING was sent on it.
    pub draining: bool,
    /// Downstream messages received on it.
    pub received: u64,
    /// Downstream messages received and not answered yet.
    pub pending: u64,
    /// Highest value `pending` reached.
    pub pending_high_water: u64,
    /// Messages that arrived while `pending` was already at `max_pending`
    /// (violations of FCM's 100-message window).
    pub window_violations: u64,
    /// Upstream messages and receipts written on it (first sends and resends).
    pub upstream_sent: u64,
}

/// Snapshot of everything the emulator counted. `Serialize` gives the JSON
/// served at `GET /stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stats {
    /// Per downstream `message_id`. Empty in summary snapshots
    /// ([`crate::Emulator::stats_summary`], `GET /stats?summary=true`).
    pub messages: BTreeMap<String, MsgStats>,
    /// Every connection accepted so far, in accept order.
    pub connections: Vec<ConnStats>,
    /// Downstream messages received (all connections, all outcomes).
    pub downstream_received: u64,
    /// Acks sent for downstream messages.
    pub acks_sent: u64,
    /// Nacks sent (downstream messages and malformed acks).
    pub nacks_sent: u64,
    /// Nacks sent, by error code.
    pub nacks_by_code: BTreeMap<String, u64>,
    /// Downstream messages delivered (acked, not dry_run), duplicates included.
    pub delivered: u64,
    /// Downstream messages received again after their id had been acked.
    pub duplicates: u64,
    /// Delivery receipts sent (first sends).
    pub receipts_sent: u64,
    /// Delivery receipts acked by the app server.
    pub receipts_acked: u64,
    /// Delivery receipts sent again on another connection because the first
    /// one closed before the ack came.
    pub receipts_resent: u64,
    /// Upstream messages sent (first sends).
    pub upstream_sent: u64,
    /// Upstream messages acked by the app server.
    pub upstream_acked: u64,
    /// Upstream messages sent again on another connection because the first
    /// one closed before the ack came.
    pub upstream_resent: u64,
    /// Upstream messages and receipts not acked yet (in flight or waiting for
    /// a connection).
    pub upstream_unacked: u64,
    /// Well-formed app-server acks whose message_id the emulator did not have
    /// in flight.
    pub unknown_acks: u64,
    /// Malformed app-server acks (answered with a BAD_ACK nack).
    pub bad_acks: u64,
    /// Other stanzas from the app server that were ignored (unknown
    /// `message_type`, `<message>` without `gcm`).
    pub ignored: u64,
    /// Failed SASL authentications.
    pub auth_failures: u64,
    /// CONNECTION_DRAINING control messages sent.
    pub drains_sent: u64,
    /// Connections dropped abruptly (fault `drop_after` or `drop_all`).
    pub drops: u64,
    /// Window violations, all connections.
    pub window_violations: u64,
}

impl Stats {
    /// Stats of one message id (all zero when never seen).
    pub fn msg(&self, message_id: &str) -> MsgStats {
        self.messages.get(message_id).cloned().unwrap_or_default()
    }

    /// Number of connections currently open.
    pub fn open_connections(&self) -> usize {
        self.connections.iter().filter(|c| c.open).count()
    }

    /// Number of open connections that completed SASL and bind.
    pub fn ready_connections(&self) -> usize {
        self.connections
            .iter()
            .filter(|c| c.open && c.authenticated)
            .count()
    }

    /// Highest pending high-water mark over all connections.
    pub fn max_pending_high_water(&self) -> u64 {
        self.connections
            .iter()
            .map(|c| c.pending_high_water)
            .max()
            .unwrap_or(0)
    }
}
