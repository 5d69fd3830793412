//! Counters of the FCM HTTP v1 emulator (SPEC §9, "Stats").

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// What happened to one message, keyed by [`super::message_key`] (its
/// target plus a hash of its `data` and `notification`: v1 has no client
/// message id, and `android.ttl` shrinks between attempts).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1MsgStats {
    /// Authenticated requests carrying this message.
    pub received: u64,
    /// Of those, answered 200.
    pub ok: u64,
    /// Answered 200 without `validate_only` (the device "got" it).
    pub delivered: u64,
    /// Answered with an error.
    pub errors: u64,
    /// HTTP status of the last answer (0 while unanswered).
    pub last_status: u16,
    /// `errorCode` (or HTTP status when there was none) of the last error.
    pub last_error: Option<String>,
}

/// One TLS connection the emulator accepted (kept after it closed).
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1ConnStats {
    /// Connection number, from 1, in accept order.
    pub id: u64,
    /// Still open.
    pub open: bool,
    /// ALPN result: `"h2"`, `"http/1.1"`, or `""` when the client sent no ALPN
    /// (then the protocol is detected from the first bytes).
    pub alpn: String,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised on it.
    pub max_concurrent_streams: u32,
    /// Requests received on it (every path).
    pub requests: u64,
    /// Requests being handled right now.
    pub in_flight: u64,
    /// Highest `in_flight` seen.
    pub streams_high_water: u64,
    /// Requests that arrived while `max_concurrent_streams` were already in
    /// flight. A conformant HTTP/2 stack refuses such streams itself
    /// (RST_STREAM REFUSED_STREAM) before they reach the emulator, so this
    /// stays 0 unless the limit failed to hold.
    pub over_limit: u64,
    /// A graceful shutdown (GOAWAY, or `Connection: close` on HTTP/1.1) was
    /// started on it.
    pub goaway_sent: bool,
    /// Dropped abruptly (fault `drop_after` or `drop_all`).
    pub dropped: bool,
}

/// Snapshot of everything the HTTP v1 emulator counted. `Serialize` gives the
/// JSON served at `GET /stats`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct V1Stats {
    /// Per message ([`V1MsgStats`]). Empty in summary snapshots
    /// ([`super::V1Emulator::stats_summary`], `GET /stats?summary=true`) and
    /// when [`super::V1Config::track_messages`] is off.
    pub messages: BTreeMap<String, V1MsgStats>,
    /// Every connection accepted so far, in accept order.
    pub connections: Vec<V1ConnStats>,
    /// TLS connections accepted.
    pub connections_opened: u64,
    /// TLS handshakes that failed or timed out.
    pub tls_failures: u64,
    /// `messages:send` requests received (every outcome, dropped ones too).
    pub requests: u64,
    /// `messages:send` answers by HTTP status.
    pub by_status: BTreeMap<u16, u64>,
    /// `messages:send` error answers by FcmError `errorCode` (answers without
    /// an FcmError are only in `by_status`).
    pub by_error_code: BTreeMap<String, u64>,
    /// 401 answers for a missing, unknown or expired access token.
    pub unauthenticated: u64,
    /// 403 answers for another project.
    pub permission_denied: u64,
    /// Successful sends (200), `validate_only` included.
    pub ok: u64,
    /// Successful sends without `validate_only`, duplicates included.
    pub delivered: u64,
    /// Successful `validate_only` sends.
    pub validated_only: u64,
    /// Deliveries of a message key that had been delivered before.
    pub duplicates: u64,
    /// Errors injected by `error_fraction` and `gateway_error_fraction`.
    pub injected_errors: u64,
    /// 429 answers from the project quota or the device rate.
    pub quota_rejections: u64,
    /// Graceful shutdowns started on HTTP/2 connections (GOAWAY frames).
    pub goaways_sent: u64,
    /// Graceful shutdowns on HTTP/1.1 connections (`Connection: close`).
    pub http1_closes: u64,
    /// Connections dropped abruptly.
    pub drops: u64,
    /// Requests left unanswered because their connection was dropped.
    pub dropped_requests: u64,
    /// Requests over a connection's advertised stream limit (see
    /// [`V1ConnStats::over_limit`]).
    pub over_limit: u64,
    /// Requests to other paths (answered 404).
    pub not_found: u64,
    /// Requests to `POST /token`.
    pub token_requests: u64,
    /// Access tokens issued.
    pub tokens_issued: u64,
    /// Token requests refused (every reason, injected failures included).
    pub tokens_refused: u64,
    /// Token refusals by reason: `grant_type`, `assertion_missing`,
    /// `malformed`, `signature`, `issuer`, `audience`, `scope`, `lifetime`,
    /// `iat`, `fault`.
    pub token_refusals: BTreeMap<String, u64>,
}

impl V1Stats {
    /// Stats of one message key (all zero when never seen).
    pub fn msg(&self, key: &str) -> V1MsgStats {
        self.messages.get(key).cloned().unwrap_or_default()
    }

    /// Answers with this HTTP status.
    pub fn status(&self, status: u16) -> u64 {
        self.by_status.get(&status).copied().unwrap_or(0)
    }

    /// Answers with this FcmError code.
    pub fn error_code(&self, code: &str) -> u64 {
        self.by_error_code.get(code).copied().unwrap_or(0)
    }

    /// Token refusals for this reason.
    pub fn token_refusal(&self, reason: &str) -> u64 {
        self.token_refusals.get(reason).copied().unwrap_or(0)
    }

    /// Connections currently open.
    pub fn open_connections(&self) -> usize {
        self.connections.iter().filter(|c| c.open).count()
    }

    /// Highest concurrent-stream high-water mark over all connections.
    pub fn max_streams_high_water(&self) -> u64 {
        self.connections
            .iter()
            .map(|c| c.streams_high_water)
            .max()
            .unwrap_or(0)
    }

    /// Requests answered so far (sum of `by_status`).
    pub fn answered(&self) -> u64 {
        self.by_status.values().sum()
    }
}
