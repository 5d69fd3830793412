//! Test support for gimmm (publish = false): what the integration tests of
//! `gimmm` and `gateway` would otherwise each write by hand.
//!
//! * [`config`]: the usual test gateway configuration as a typed
//!   [`gateway::config::Config`] (SPEC §2) pointing at an
//!   [`emulator::Emulator`] (or the HTTP v1 emulator), written to a file as
//!   TOML; and an in-process gateway on it.
//! * [`child`]: `gimmm serve` as a child process ([`ChildGateway`]) that
//!   reports the ports it bound through `--ports-file` (so every listener is
//!   `127.0.0.1:0` and no test ever guesses a free port), with its output
//!   captured, SIGKILL / SIGTERM and restarts on the same store.
//! * [`probe`]: a BAL (SPEC §3) that logs on, sends DOWNSTREAMs, ACKs the
//!   sequenced messages and reconnects after restarts ([`BalProbe`]),
//!   recording everything in a [`Ledger`] that checks the SPEC §3.3
//!   promise: exactly one final result per accepted message.
//! * [`http`]: one HTTP/1.1 GET for the admin endpoints (SPEC §6).
//! * [`ingress`]: a client of the upstream ingress (SPEC §10), plain or
//!   TLS, and a throw-away CA for its certificate; [`jwt`]: RS256 / ES256
//!   test signers, their JWKS, and forged tokens.
//! * [`net`]: a loopback port that refuses connections (an unreachable FCM).
//! * [`relay`]: a TCP relay with a fixed address in front of a gateway whose
//!   address changes, for clients that cannot be told the new one.
//!
//! Everything waits on events with deadlines; nothing sleeps and hopes.
//! Everything talks to 127.0.0.1 only.

pub mod child;
pub mod config;
pub mod http;
pub mod ingress;
pub mod jwt;
pub mod ledger;
pub mod net;
pub mod probe;
pub mod relay;

pub use child::{ChildError, ChildGateway, ChildOpts, Ports};
pub use config::{emulator_config, in_process, v1_emulator_config, write_config};
pub use http::{http_get, HttpError, HttpResponse};
pub use ingress::{ingress_config, upstream_body, IngressClient, TestCa};
pub use ledger::{Final, FinalsError, Ledger};
pub use net::ClosedPort;
pub use probe::{recv, recv_until, AckPolicy, BalProbe, LedgerWatch, ProbeError};
pub use relay::Relay;
