//! What a BAL saw (SPEC §3.2, §3.3), and the checks on it.
//!
//! SPEC §3.3: every DOWNSTREAM that was answered DOWNSTREAM_ACCEPTED gets
//! exactly one final result (DOWNSTREAM_ACK or DOWNSTREAM_REJECT); a
//! sequenced message may be delivered again after a reconnect or a restart,
//! but then with the same `sequence_id` — a redelivery, not a second result.
//! The ledger therefore keys results by `sequence_id`: two deliveries with
//! one `sequence_id` are one result, two `sequence_id`s for one message are
//! two results, and one `sequence_id` carrying two different things is a
//! protocol violation of its own.

use bal::{BalError, ToBal};
use std::collections::{BTreeMap, BTreeSet};

/// A final result of a downstream message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Final {
    /// DOWNSTREAM_ACK.
    Ack,
    /// DOWNSTREAM_REJECT with its error code.
    Reject(String),
}

impl Final {
    /// `"ACK"` or the reject code.
    pub fn kind(&self) -> &str {
        match self {
            Final::Ack => "ACK",
            Final::Reject(code) => code,
        }
    }
}

/// One `sequence_id` as delivered.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// What it carried, e.g. `ACK m-1`, `REJECT m-2 DEVICE_UNREGISTERED`,
    /// `RECEIPT m-3`, `UPSTREAM "u-4"`.
    pub what: String,
    /// How many times it was delivered (1 = no redelivery).
    pub times: u32,
}

/// Everything a BAL received, across connections.
#[derive(Debug, Clone, Default)]
pub struct Ledger {
    /// Message ids answered DOWNSTREAM_ACCEPTED.
    pub accepted: BTreeSet<String>,
    /// DOWNSTREAM_ACCEPTED answers with `duplicate: true`.
    pub duplicate_accepts: u64,
    /// Message id -> its final results by `sequence_id`.
    pub finals: BTreeMap<String, BTreeMap<u64, Final>>,
    /// Original message id -> `sequence_id`s of its DOWNSTREAM_RECEIPTs.
    pub receipts: BTreeMap<String, BTreeSet<u64>>,
    /// Upstream `fcm_data.message_id` -> `sequence_id`s of its UPSTREAMs.
    pub upstream: BTreeMap<String, BTreeSet<u64>>,
    /// Every `sequence_id` seen.
    pub deliveries: BTreeMap<u64, Delivery>,
    /// A `sequence_id` that carried two different things.
    pub conflicts: Vec<String>,
    /// ERROR lines (code, description).
    pub errors: Vec<(BalError, String)>,
    /// Lines that were not valid protocol messages.
    pub bad_lines: Vec<String>,
    /// PONGs.
    pub pongs: u64,
}

/// Accepted messages without exactly one final result.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FinalsError {
    /// Accepted, no final result.
    pub missing: Vec<String>,
    /// More than one final result (message id, its `sequence_id`s).
    pub multiple: Vec<(String, Vec<u64>)>,
}

impl std::fmt::Display for FinalsError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        const SHOWN: usize = 20;
        if !self.missing.is_empty() {
            write!(
                f,
                "{} accepted message(s) without a final result: {:?}{}",
                self.missing.len(),
                &self.missing[..self.missing.len().min(SHOWN)],
                if self.missing.len() > SHOWN {
                    " ..."
                } else {
                    ""
                }
            )?;
        }
        if !self.multiple.is_empty() {
            if !self.missing.is_empty() {
                f.write_str("; ")?;
            }
            write!(
                f,
                "{} message(s) with more than one final result (message id, sequence ids): {:?}{}",
                self.multiple.len(),
                &self.multiple[..self.multiple.len().min(SHOWN)],
                if self.multiple.len() > SHOWN {
                    " ..."
                } else {
                    ""
                }
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for FinalsError {}

impl Ledger {
    /// Records one message from gimmm.
    pub fn note(&mut self, m: &ToBal) {
        match m {
            ToBal::DownstreamAccepted {
                message_id,
                duplicate,
                ..
            } => {
                if *duplicate {
                    self.duplicate_accepts += 1;
                }
                self.accepted.insert(message_id.clone());
            }
            ToBal::Error {
                error,
                error_description,
            } => self.errors.push((*error, error_description.clone())),
            ToBal::Pong => self.pongs += 1,
            _ => {}
        }
        let Some(seq) = m.sequence_id() else { return };
        let what = match m {
            ToBal::DownstreamAck { message_id, .. } => format!("ACK {message_id}"),
            ToBal::DownstreamReject {
                message_id, error, ..
            } => format!("REJECT {message_id} {error}"),
            ToBal::DownstreamReceipt { message_id, .. } => format!("RECEIPT {message_id}"),
            ToBal::Upstream { fcm_data, .. } => format!("UPSTREAM {}", fcm_data["message_id"]),
            other => format!("{other:?}"),
        };
        match self.deliveries.get_mut(&seq) {
            Some(d) if d.what != what => {
                self.conflicts.push(format!(
                    "sequence_id {seq} carried {} and then {what}",
                    d.what
                ));
                return;
            }
            Some(d) => d.times += 1,
            None => {
                self.deliveries.insert(seq, Delivery { what, times: 1 });
            }
        }
        match m {
            ToBal::DownstreamAck { message_id, .. } => {
                self.finals
                    .entry(message_id.clone())
                    .or_default()
                    .insert(seq, Final::Ack);
            }
            ToBal::DownstreamReject {
                message_id, error, ..
            } => {
                self.finals
                    .entry(message_id.clone())
                    .or_default()
                    .insert(seq, Final::Reject(error.clone()));
            }
            ToBal::DownstreamReceipt { message_id, .. } => {
                self.receipts
                    .entry(message_id.clone())
                    .or_default()
                    .insert(seq);
            }
            ToBal::Upstream { fcm_data, .. } => {
                let id = fcm_data["message_id"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string();
                self.upstream.entry(id).or_default().insert(seq);
            }
            _ => {}
        }
    }

    /// The final result of `message_id` (the first, if there are several).
    pub fn final_of(&self, message_id: &str) -> Option<&Final> {
        self.finals.get(message_id)?.values().next()
    }

    /// True when `message_id` has a final result.
    pub fn has_final(&self, message_id: &str) -> bool {
        self.finals.contains_key(message_id)
    }

    /// Every message of `accepted` has exactly one final result, and no
    /// message at all has more than one.
    pub fn exactly_one_final<'a, I>(&self, accepted: I) -> Result<(), FinalsError>
    where
        I: IntoIterator<Item = &'a String>,
    {
        let mut e = FinalsError::default();
        for id in accepted {
            if !self.finals.contains_key(id) {
                e.missing.push(id.clone());
            }
        }
        for (id, seqs) in &self.finals {
            if seqs.len() > 1 {
                e.multiple
                    .push((id.clone(), seqs.keys().copied().collect()));
            }
        }
        if e.missing.is_empty() && e.multiple.is_empty() {
            Ok(())
        } else {
            Err(e)
        }
    }

    /// [`Ledger::exactly_one_final`], panicking with the offending ids.
    #[track_caller]
    pub fn assert_exactly_one_final<'a, I>(&self, accepted: I)
    where
        I: IntoIterator<Item = &'a String>,
    {
        if let Err(e) = self.exactly_one_final(accepted) {
            panic!("{e}");
        }
    }

    /// Every upstream message and every receipt arrived as one
    /// `sequence_id`, and no `sequence_id` carried two different things.
    pub fn each_delivered_once(&self) -> Result<(), String> {
        let mut problems: Vec<String> = self.conflicts.clone();
        for (id, seqs) in &self.upstream {
            if seqs.len() != 1 {
                problems.push(format!(
                    "upstream {id} delivered as {} different messages {seqs:?}",
                    seqs.len()
                ));
            }
        }
        for (id, seqs) in &self.receipts {
            if seqs.len() != 1 {
                problems.push(format!(
                    "receipt for {id} delivered as {} different messages {seqs:?}",
                    seqs.len()
                ));
            }
        }
        if problems.is_empty() {
            Ok(())
        } else {
            Err(problems.join("; "))
        }
    }

    /// [`Ledger::each_delivered_once`], panicking with the problems.
    #[track_caller]
    pub fn assert_each_delivered_once(&self) {
        if let Err(e) = self.each_delivered_once() {
            panic!("{e}");
        }
    }

    /// Deliveries of a `sequence_id` already delivered (same content).
    pub fn redeliveries(&self) -> u64 {
        self.deliveries
            .values()
            .map(|d| u64::from(d.times.saturating_sub(1)))
            .sum()
    }

    /// How many times UPSTREAM lines for `message_id` arrived, counting
    /// redeliveries of the same `sequence_id`.
    pub fn upstream_lines(&self, message_id: &str) -> u32 {
        self.upstream.get(message_id).map_or(0, |seqs| {
            seqs.iter()
                .filter_map(|s| self.deliveries.get(s))
                .map(|d| d.times)
                .sum()
        })
    }

    /// Upstream lines of any message, counting redeliveries.
    pub fn upstream_lines_total(&self) -> u32 {
        self.upstream.keys().map(|id| self.upstream_lines(id)).sum()
    }

    /// Accepted messages without a final result yet.
    pub fn awaiting_final(&self) -> Vec<String> {
        self.accepted
            .iter()
            .filter(|id| !self.finals.contains_key(*id))
            .cloned()
            .collect()
    }

    /// One line for failure messages.
    pub fn summary(&self) -> String {
        format!(
            "{} accepted ({} duplicate answers), {} with a final result, {} awaiting one, \
             {} receipts, {} upstream, {} redeliveries, {} conflicts, {} errors {:?}, {} bad lines",
            self.accepted.len(),
            self.duplicate_accepts,
            self.finals.len(),
            self.awaiting_final().len(),
            self.receipts.len(),
            self.upstream.len(),
            self.redeliveries(),
            self.conflicts.len(),
            self.errors.len(),
            self.errors.iter().take(3).collect::<Vec<_>>(),
            self.bad_lines.len(),
        )
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn ack(seq: u64, id: &str) -> ToBal {
        ToBal::DownstreamAck {
            sequence_id: seq,
            session_id: "s".into(),
            message_id: id.into(),
            fcm_data: json!({}),
        }
    }

    fn accepted(id: &str) -> ToBal {
        ToBal::DownstreamAccepted {
            message_id: id.into(),
            duplicate: false,
            warning: None,
        }
    }

    #[test]
    fn a_redelivery_is_not_a_second_result_a_new_sequence_id_is() {
        let mut l = Ledger::default();
        for m in [accepted("a"), accepted("b"), ack(1, "a"), ack(1, "a")] {
            l.note(&m);
        }
        assert_eq!(l.redeliveries(), 1);
        let e = l.exactly_one_final(&l.accepted).unwrap_err();
        assert_eq!(e.missing, vec!["b".to_string()]);
        assert!(e.multiple.is_empty());
        l.note(&ack(2, "b"));
        l.exactly_one_final(&l.accepted).unwrap();
        l.note(&ack(3, "b"));
        let e = l.exactly_one_final(&l.accepted).unwrap_err();
        assert_eq!(e.multiple, vec![("b".to_string(), vec![2, 3])]);
        assert!(e.to_string().contains("\"b\""), "{e}");
        assert_eq!(l.final_of("a"), Some(&Final::Ack));
    }

    #[test]
    fn a_sequence_id_reused_for_something_else_is_a_conflict() {
        let mut l = Ledger::default();
        l.note(&ack(5, "a"));
        l.note(&ToBal::DownstreamReject {
            sequence_id: 5,
            session_id: "s".into(),
            message_id: "a".into(),
            error: "EXPIRED".into(),
            error_description: String::new(),
            fcm_error: None,
            http_status: None,
            fcm_data: json!({}),
        });
        assert_eq!(l.conflicts.len(), 1, "{:?}", l.conflicts);
        assert!(l.each_delivered_once().is_err());
        assert_eq!(l.final_of("a"), Some(&Final::Ack));
    }

    #[test]
    fn upstream_and_receipts_count_distinct_sequence_ids() {
        let mut l = Ledger::default();
        let up = |seq| ToBal::Upstream {
            sequence_id: seq,
            session_id: "s".into(),
            fcm_data: json!({"message_id": "u-1"}),
        };
        l.note(&up(7));
        l.note(&up(7));
        l.each_delivered_once().unwrap();
        assert_eq!(l.upstream_lines("u-1"), 2);
        l.note(&up(8));
        assert!(l.each_delivered_once().unwrap_err().contains("u-1"));
    }
}
