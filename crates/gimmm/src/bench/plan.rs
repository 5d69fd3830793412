//! What `gimmm bench` sends (SPEC §7): which message index is a DOWNSTREAM
//! or an upstream message, which is grouped, and the exact DOWNSTREAM line
//! of each.

use super::{rand_u32, BenchArgs};
use std::io::Write as _;

/// The messages of one run.
pub(super) struct Plan {
    pub(super) n: u64,
    pub(super) sessions: u64,
    pub(super) up_fraction: f64,
    pub(super) group_fraction: f64,
    pub(super) group_ids: u64,
    pub(super) receipts: bool,
    /// Message ids are `<prefix><index>`.
    pub(super) prefix: String,
    pub(super) downstream: u64,
    pub(super) upstream: u64,
}

/// Spreads a fraction evenly over the indices (Bresenham): exactly
/// `round_down(n * f)` of the first `n` indices are picked.
fn pick(f: f64, i: u64) -> bool {
    f > 0.0 && ((i + 1) as f64 * f).floor() > (i as f64 * f).floor()
}

impl Plan {
    pub(super) fn new(a: &BenchArgs) -> Plan {
        let group_fraction = if a.groups > 1.0 {
            (a.groups / a.messages.max(1) as f64).min(1.0)
        } else {
            a.groups.max(0.0)
        };
        let mut p = Plan {
            n: a.messages,
            sessions: a.sessions.max(1) as u64,
            up_fraction: a.upstream_fraction,
            group_fraction,
            group_ids: a.group_ids.max(1),
            receipts: a.receipts,
            prefix: format!("bench-{:08x}-", rand_u32()),
            downstream: 0,
            upstream: 0,
        };
        p.upstream = (0..p.n).filter(|i| p.is_up(*i)).count() as u64;
        p.downstream = p.n - p.upstream;
        p
    }

    pub(super) fn is_up(&self, i: u64) -> bool {
        pick(self.up_fraction, i)
    }

    pub(super) fn group(&self, i: u64) -> Option<u64> {
        pick(self.group_fraction, i).then(|| (i / self.sessions) % self.group_ids)
    }

    /// Final results the BALs must see: one per message, plus a receipt per
    /// downstream message when asked for.
    pub(super) fn expected_events(&self) -> u64 {
        self.n + if self.receipts { self.downstream } else { 0 }
    }

    pub(super) fn index_of(&self, message_id: &str) -> Option<u64> {
        message_id.strip_prefix(self.prefix.as_str())?.parse().ok()
    }

    /// Appends the DOWNSTREAM line of message `i`.
    pub(super) fn downstream_line(&self, out: &mut Vec<u8>, i: u64) {
        let _ = write!(out, "{{\"message_type\":\"DOWNSTREAM\",");
        if let Some(g) = self.group(i) {
            let _ = write!(out, "\"group_id\":\"g{g}\",");
        }
        let _ = writeln!(
            out,
            "\"fcm_data\":{{\"to\":\"bench-device-{}\",\"message_id\":\"{}{i}\",\"time_to_live\":3600,\
             \"data\":{{\"score\":\"3x1\",\"bench_i\":\"{i}\"}}{}}}}}",
            i % 1000,
            self.prefix,
            if self.receipts {
                ",\"delivery_receipt_requested\":true"
            } else {
                ""
            }
        );
    }
}
