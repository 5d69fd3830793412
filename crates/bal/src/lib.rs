//! The BAL protocol (SPEC §3): newline-delimited JSON between a business
//! application layer (BAL) and gimmm.
//!
//! * [`proto`] gives lines meaning: the message types in both directions and
//!   the error codes of SPEC §3.4. No I/O.
//! * [`client`] is an async BAL client in Rust, used by `gimmm send`,
//!   `gimmm listen`, `gimmm bench` and the tests.

pub mod client;
pub mod proto;

pub use client::{BalClient, ClientError, ClientTls};
pub use proto::{BalError, FromBal, ToBal};
