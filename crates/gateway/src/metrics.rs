//! Metrics (SPEC §6 `/metrics`, §8.4, §11): one table of names, used by
//! every part that records and by the admin API that exports them, and the
//! process-wide Prometheus recorder.
//!
//! Gauges derived from the engine's state at scrape time (links, sessions,
//! store rows) are rendered by `admin.rs` from a snapshot, so a link or
//! session that went away leaves no stale series; they are listed in
//! [`SCRAPE_GAUGES`].

use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use std::sync::OnceLock;

/// DOWNSTREAM messages received from BALs.
pub const DOWNSTREAM_RECEIVED: &str = "gimmm_downstream_received_total";
/// Downstream messages handed to FCM.
pub const DOWNSTREAM_SENT: &str = "gimmm_downstream_sent_total";
/// Final downstream results by state.
pub const DOWNSTREAM_FINAL: &str = "gimmm_downstream_final_total";
/// DOWNSTREAM_REJECTs by code.
pub const DOWNSTREAM_REJECTED: &str = "gimmm_downstream_rejected_total";
/// CCS nacks by code.
pub const NACKS: &str = "gimmm_nacks_total";
/// Retries scheduled.
pub const RETRIES: &str = "gimmm_retries_total";
/// Messages resent because their connection died before an answer.
pub const FCM_RESENT: &str = "gimmm_fcm_resent_total";
/// Upstream messages received.
pub const UPSTREAM_RECEIVED: &str = "gimmm_upstream_received_total";
/// Upstream for no configured session.
pub const UPSTREAM_UNROUTABLE: &str = "gimmm_upstream_unroutable_total";
/// Delivery receipts received.
pub const RECEIPTS_RECEIVED: &str = "gimmm_receipts_received_total";
/// Links that became ready.
pub const LINK_READY: &str = "gimmm_link_ready_total";
/// Failed connection attempts.
pub const LINK_CONNECT_FAILURES: &str = "gimmm_link_connect_failures_total";
/// Links lost and reopened.
pub const LINK_RECONNECTS: &str = "gimmm_link_reconnects_total";
/// Drains (CONNECTION_DRAINING, GOAWAY).
pub const LINK_DRAINS: &str = "gimmm_link_drains_total";
/// Refused BAL LOGONs.
pub const BAL_LOGON_FAILURES: &str = "gimmm_bal_logon_failures_total";
/// BAL connections disconnected for not reading.
pub const BAL_SLOW_CONSUMERS: &str = "gimmm_bal_slow_consumer_disconnects_total";
/// Sequenced lines written to BALs (redeliveries included).
pub const BAL_SEQUENCED_SENT: &str = "gimmm_bal_sequenced_sent_total";
/// Sequenced lines ACKed by BALs.
pub const BAL_SEQUENCED_ACKED: &str = "gimmm_bal_sequenced_acked_total";
/// Upstream messages and receipts FCM sent again (already stored).
pub const UPSTREAM_RESENT: &str = "gimmm_upstream_resent_total";
/// Store batches that could not be committed at first (disk full …).
pub const STORE_COMMIT_ERRORS: &str = "gimmm_store_commit_errors_total";
/// From DOWNSTREAM_ACCEPTED to the final result.
pub const DOWNSTREAM_FINAL_SECONDS: &str = "gimmm_downstream_final_seconds";
/// Links open or being opened.
pub const LINKS: &str = "gimmm_links";
/// Sessions with a logged-on BAL.
pub const BAL_SESSIONS_CONNECTED: &str = "gimmm_bal_sessions_connected";
/// FCM HTTP v1 answers by HTTP status.
pub const FCM_HTTP_RESPONSES: &str = "gimmm_fcm_http_responses_total";
/// FCM HTTP v1 errors by errorCode (else `HTTP_<status>`, `TIMEOUT`,
/// `STREAM_RESET`).
pub const FCM_ERRORS: &str = "gimmm_fcm_errors_total";
/// OAuth token fetches by result (`ok`, `error`, `refused`).
pub const FCM_TOKEN_REFRESH: &str = "gimmm_fcm_token_refresh_total";
/// HTTP/2 streams in flight per HTTP v1 connection (rendered at scrape
/// time by the link factory).
pub const FCM_STREAMS_IN_FLIGHT: &str = "gimmm_fcm_streams_in_flight";
/// Store commit latency.
pub const STORE_COMMIT_SECONDS: &str = "gimmm_store_commit_seconds";
/// Batches per store transaction.
pub const STORE_BATCH_GROUP_SIZE: &str = "gimmm_store_batch_group_size";
/// Ingress requests by session and outcome (SPEC §10).
pub const INGRESS_REQUESTS: &str = "gimmm_ingress_requests_total";
/// Ingress request latency, first byte of the request to the answer.
pub const INGRESS_REQUEST_SECONDS: &str = "gimmm_ingress_request_seconds";
/// Ingress connections open.
pub const INGRESS_CONNECTIONS: &str = "gimmm_ingress_connections";
/// Idle ingress connections closed to make room for new ones.
pub const INGRESS_CONNECTIONS_EVICTED: &str = "gimmm_ingress_connections_evicted_total";
/// Ingress connections refused (every slot busy with a request).
pub const INGRESS_CONNECTIONS_REFUSED: &str = "gimmm_ingress_connections_refused_total";
/// Ingress TLS handshakes that failed or timed out.
pub const INGRESS_TLS_FAILURES: &str = "gimmm_ingress_tls_failures_total";

/// The `outcome` label values of [`INGRESS_REQUESTS`].
pub const INGRESS_OUTCOMES: &[&str] = &[
    "accepted",
    "duplicate",
    "invalid",
    "unauthorized",
    "unknown_category",
    "too_large",
    "rate_limited",
    "timeout",
    "unavailable",
    "not_found",
];

/// Every metric the recorder exports: name, kind, help.
pub const METRICS: &[(&str, &str, &str)] = &[
    (
        DOWNSTREAM_RECEIVED,
        "counter",
        "DOWNSTREAM messages received from BALs (invalid ones and idempotent resends included)",
    ),
    (
        DOWNSTREAM_SENT,
        "counter",
        "Downstream messages handed to FCM, resends and retries included",
    ),
    (
        DOWNSTREAM_FINAL,
        "counter",
        "Final downstream results by state (ack, reject)",
    ),
    (
        DOWNSTREAM_REJECTED,
        "counter",
        "DOWNSTREAM_REJECTs by error code (validation, final nacks, MAX_RETRIES, EXPIRED)",
    ),
    (NACKS, "counter", "Nacks received from CCS by error code"),
    (
        RETRIES,
        "counter",
        "Downstream retries scheduled after a retryable failure",
    ),
    (
        FCM_RESENT,
        "counter",
        "Downstream messages resent because their connection ended before FCM answered (FCM may deliver these twice)",
    ),
    (
        UPSTREAM_RECEIVED,
        "counter",
        "Upstream messages received from CCS (resends by FCM included)",
    ),
    (
        UPSTREAM_UNROUTABLE,
        "counter",
        "Upstream messages and receipts for no configured session, stored as unroutable",
    ),
    (
        RECEIPTS_RECEIVED,
        "counter",
        "Delivery receipts received from CCS",
    ),
    (
        LINK_READY,
        "counter",
        "FCM connections that became ready (authenticated)",
    ),
    (
        LINK_CONNECT_FAILURES,
        "counter",
        "Failed FCM connection attempts (auth=true: FCM refused the credentials)",
    ),
    (
        LINK_RECONNECTS,
        "counter",
        "FCM connections lost unexpectedly and reopened",
    ),
    (
        LINK_DRAINS,
        "counter",
        "Connections FCM asked to drain (CONNECTION_DRAINING, GOAWAY)",
    ),
    (
        BAL_LOGON_FAILURES,
        "counter",
        "Refused BAL LOGONs (unknown session or wrong token)",
    ),
    (
        BAL_SLOW_CONSUMERS,
        "counter",
        "BAL connections closed because they did not read what they were sent",
    ),
    (
        FCM_HTTP_RESPONSES,
        "counter",
        "FCM HTTP v1 answers to messages:send by HTTP status",
    ),
    (
        FCM_ERRORS,
        "counter",
        "FCM HTTP v1 errors by errorCode (else HTTP_<status>; TIMEOUT, STREAM_RESET for answers that never came)",
    ),
    (
        FCM_TOKEN_REFRESH,
        "counter",
        "OAuth access token fetches for FCM HTTP v1 by result (ok, error, refused)",
    ),
    (
        BAL_SEQUENCED_SENT,
        "counter",
        "Sequenced lines (UPSTREAM, DOWNSTREAM_ACK/REJECT/RECEIPT) written to BALs, redeliveries included",
    ),
    (
        BAL_SEQUENCED_ACKED,
        "counter",
        "Sequenced lines ACKed by BALs",
    ),
    (
        UPSTREAM_RESENT,
        "counter",
        "Upstream messages and receipts FCM sent again although they were stored (acked again, not delivered twice)",
    ),
    (
        STORE_COMMIT_ERRORS,
        "counter",
        "Store batches whose commit failed at first (disk full, read-only …); their new messages were refused, the rest retried",
    ),
    (
        DOWNSTREAM_FINAL_SECONDS,
        "histogram",
        "Time from DOWNSTREAM_ACCEPTED to the final result (DOWNSTREAM_ACK or DOWNSTREAM_REJECT)",
    ),
    (LINKS, "gauge", "FCM connections open or being opened"),
    (
        BAL_SESSIONS_CONNECTED,
        "gauge",
        "BAL sessions with a logged-on connection",
    ),
    (
        STORE_COMMIT_SECONDS,
        "histogram",
        "Time to commit one store batch (apply, commit and fsync)",
    ),
    (
        STORE_BATCH_GROUP_SIZE,
        "histogram",
        "Engine batches committed together in one store transaction",
    ),
    (
        INGRESS_REQUESTS,
        "counter",
        "Ingress requests (POST /v1/upstream) by session and outcome; session is empty when no session was named",
    ),
    (
        INGRESS_REQUEST_SECONDS,
        "histogram",
        "Ingress request latency: request head read to answer (the 202 waits for the store's commit)",
    ),
    (INGRESS_CONNECTIONS, "gauge", "Ingress connections open"),
    (
        INGRESS_CONNECTIONS_EVICTED,
        "counter",
        "Idle ingress connections closed to make room for a new one (ingress.max_connections reached)",
    ),
    (
        INGRESS_CONNECTIONS_REFUSED,
        "counter",
        "Ingress connections refused because every slot was busy with a request",
    ),
    (
        INGRESS_TLS_FAILURES,
        "counter",
        "Ingress TLS handshakes that failed or timed out",
    ),
];

/// Gauges rendered at scrape time from the engine's snapshot and the
/// store's counts (see `admin.rs`).
pub const SCRAPE_GAUGES: &[&str] = &[
    "gimmm_engine_up",
    "gimmm_link_pending",
    "gimmm_links_by_state",
    "gimmm_session_queue_depth",
    "gimmm_session_downstream_queued",
    "gimmm_session_unacked",
    "gimmm_session_spilled",
    "gimmm_session_connected",
    "gimmm_downstream_in_memory",
    "gimmm_fcm_auth_failing",
    "gimmm_store_queued_downstream",
    "gimmm_store_outbox",
    "gimmm_store_unroutable",
    FCM_STREAMS_IN_FLIGHT,
];

/// Counters with labels, pre-created for each label value so that rate()
/// and alerts see 0 rather than nothing.
const LABELLED: &[(&str, &str, &[&str])] = &[
    (DOWNSTREAM_FINAL, "state", &["ack", "reject"]),
    (LINK_CONNECT_FAILURES, "auth", &["true", "false"]),
    (FCM_TOKEN_REFRESH, "result", &["ok", "error", "refused"]),
    // Open-ended labels, with the values alerts watch pre-created.
    (FCM_HTTP_RESPONSES, "status", &["200"]),
    (
        FCM_ERRORS,
        "code",
        &[
            "UNREGISTERED",
            "INVALID_ARGUMENT",
            "QUOTA_EXCEEDED",
            "UNAVAILABLE",
            "INTERNAL",
        ],
    ),
];

/// Counters whose labels are open-ended (codes) or known only at start
/// (sessions: the ingress creates its series), created on first use.
const OPEN_LABELS: &[&str] = &[DOWNSTREAM_REJECTED, NACKS, INGRESS_REQUESTS];

/// Buckets of the store commit latency histogram, in seconds.
const COMMIT_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
];
/// Buckets of the accepted → final latency histogram, in seconds.
const FINAL_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0,
    3600.0,
];
/// Buckets of the store group size histogram.
const GROUP_BUCKETS: &[f64] = &[1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0];
/// Buckets of the ingress latency histogram, in seconds.
const INGRESS_BUCKETS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The process-wide Prometheus recorder (installed on first use). Install
/// it before anything records: handles resolved earlier go nowhere.
pub fn prometheus() -> Option<&'static PrometheusHandle> {
    static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();
    HANDLE.get_or_init(install).as_ref()
}

fn install() -> Option<PrometheusHandle> {
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(STORE_COMMIT_SECONDS.into()), COMMIT_BUCKETS)
        .and_then(|b| {
            b.set_buckets_for_metric(Matcher::Full(STORE_BATCH_GROUP_SIZE.into()), GROUP_BUCKETS)
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(DOWNSTREAM_FINAL_SECONDS.into()),
                FINAL_BUCKETS,
            )
        })
        .and_then(|b| {
            b.set_buckets_for_metric(
                Matcher::Full(INGRESS_REQUEST_SECONDS.into()),
                INGRESS_BUCKETS,
            )
        })
        .ok()?
        .install_recorder()
        .ok()?;
    for (name, kind, help) in METRICS {
        match *kind {
            "counter" => metrics::describe_counter!(*name, *help),
            "gauge" => metrics::describe_gauge!(*name, *help),
            _ => metrics::describe_histogram!(*name, *help),
        }
    }
    for (name, kind, _) in METRICS {
        let labelled = LABELLED.iter().any(|(n, _, _)| n == name) || OPEN_LABELS.contains(name);
        if *kind == "counter" && !labelled {
            metrics::counter!(*name).increment(0);
        }
    }
    for (name, label, values) in LABELLED {
        for v in *values {
            metrics::counter!(*name, *label => *v).increment(0);
        }
    }
    // Requests that named no session; each session's series are created
    // when the ingress starts ([`ingress_series`]).
    ingress_series("");
    metrics::gauge!(INGRESS_CONNECTIONS).set(0.0);
    let _ = metrics::histogram!(INGRESS_REQUEST_SECONDS);
    Some(handle)
}

/// Creates the [`INGRESS_REQUESTS`] series of `session` (every outcome at
/// 0), so that rate() and alerts see 0 rather than nothing.
pub fn ingress_series(session: &str) {
    for o in INGRESS_OUTCOMES {
        metrics::counter!(INGRESS_REQUESTS, "session" => session.to_string(), "outcome" => *o)
            .increment(0);
    }
}

/// Handles of the hot-path metrics, resolved once (the hot path then only
/// bumps atomics).
pub(crate) struct Meters {
    pub(crate) received: metrics::Counter,
    pub(crate) sent: metrics::Counter,
    pub(crate) final_ack: metrics::Counter,
    pub(crate) final_reject: metrics::Counter,
    pub(crate) upstream: metrics::Counter,
    pub(crate) receipts: metrics::Counter,
    pub(crate) retries: metrics::Counter,
    pub(crate) resent: metrics::Counter,
    pub(crate) commit_seconds: metrics::Histogram,
    pub(crate) group_size: metrics::Histogram,
    pub(crate) final_seconds: metrics::Histogram,
    pub(crate) bal_sent: metrics::Counter,
    pub(crate) bal_acked: metrics::Counter,
    pub(crate) upstream_resent: metrics::Counter,
    pub(crate) commit_errors: metrics::Counter,
}

impl Meters {
    pub(crate) fn new() -> Meters {
        Meters {
            received: metrics::counter!(DOWNSTREAM_RECEIVED),
            sent: metrics::counter!(DOWNSTREAM_SENT),
            final_ack: metrics::counter!(DOWNSTREAM_FINAL, "state" => "ack"),
            final_reject: metrics::counter!(DOWNSTREAM_FINAL, "state" => "reject"),
            upstream: metrics::counter!(UPSTREAM_RECEIVED),
            receipts: metrics::counter!(RECEIPTS_RECEIVED),
            retries: metrics::counter!(RETRIES),
            resent: metrics::counter!(FCM_RESENT),
            commit_seconds: metrics::histogram!(STORE_COMMIT_SECONDS),
            group_size: metrics::histogram!(STORE_BATCH_GROUP_SIZE),
            final_seconds: metrics::histogram!(DOWNSTREAM_FINAL_SECONDS),
            bal_sent: metrics::counter!(BAL_SEQUENCED_SENT),
            bal_acked: metrics::counter!(BAL_SEQUENCED_ACKED),
            upstream_resent: metrics::counter!(UPSTREAM_RESENT),
            commit_errors: metrics::counter!(STORE_COMMIT_ERRORS),
        }
    }
}
