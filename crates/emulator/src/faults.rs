//! Fault-injection knobs (SPEC §5, last bullet).

use std::time::Duration;

use fcm::ErrorCode;
use serde::{Deserialize, Serialize};

/// Fault injection settings of the emulator, changeable at run time with
/// [`crate::Emulator::set_faults`] or `POST /faults`.
///
/// `Default` means "behave like a healthy CCS": no nacks, no delays, no
/// draining, no drops, whole stanzas written at once (several per write when
/// they queue up), the plain `<gcm xmlns="google:mobile:data">` form, no
/// keepalives.
///
/// JSON form (all fields optional, unknown fields refused); durations are
/// integer milliseconds and carry a `_ms` suffix:
///
/// ```json
/// {"nack_fraction":0.1,"nack_code":"SERVICE_UNAVAILABLE","ack_delay_ms":5,
///  "drain_after":1000,"drain_every_ms":60000,"drop_after":null,"chunk_size":1,
///  "prefixed":true,"keepalive_every_ms":30000,"receipt_delay_ms":10}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Faults {
    /// Fraction (0.0..=1.0) of otherwise acceptable downstream messages that
    /// are nacked with [`Faults::nack_code`], drawn at random per message.
    pub nack_fraction: f64,
    /// Code used for the `nack_fraction` nacks; `None` = `SERVICE_UNAVAILABLE`.
    pub nack_code: Option<ErrorCode>,
    /// Delay before each downstream message is answered (ack or nack). The
    /// connection keeps reading meanwhile, so pending messages pile up. JSON:
    /// `ack_delay_ms`.
    #[serde(rename = "ack_delay_ms", with = "ms")]
    pub ack_delay: Duration,
    /// Send CONNECTION_DRAINING on a connection once it has received this many
    /// downstream messages.
    pub drain_after: Option<u64>,
    /// Send CONNECTION_DRAINING on every connection this long after it became
    /// ready. JSON: `drain_every_ms`.
    #[serde(rename = "drain_every_ms", with = "opt_ms")]
    pub drain_every: Option<Duration>,
    /// Drop the TCP connection abruptly (no `</stream:stream>`, no TLS
    /// close_notify, the N-th message unanswered) once a connection has
    /// received this many downstream messages.
    pub drop_after: Option<u64>,
    /// Write outgoing bytes in chunks of this many bytes, flushing after each
    /// chunk (tests the client's streaming parser). `None` = whole batches.
    pub chunk_size: Option<usize>,
    /// Use the `<data:gcm xmlns:data="google:mobile:data">` form for every
    /// stanza the emulator writes.
    pub prefixed: bool,
    /// Send a whitespace keepalive this often on every ready connection.
    /// JSON: `keepalive_every_ms`.
    #[serde(rename = "keepalive_every_ms", with = "opt_ms")]
    pub keepalive_every: Option<Duration>,
    /// Delay between the ack of a downstream message that asked for a
    /// delivery receipt and the receipt itself. JSON: `receipt_delay_ms`.
    #[serde(rename = "receipt_delay_ms", with = "ms")]
    pub receipt_delay: Duration,
}

impl Faults {
    /// The code used for injected nacks (`nack_code` or `SERVICE_UNAVAILABLE`).
    pub fn effective_nack_code(&self) -> ErrorCode {
        self.nack_code
            .clone()
            .unwrap_or(ErrorCode::ServiceUnavailable)
    }

    /// True when no fault is active (the `Default` value).
    pub fn is_none(&self) -> bool {
        *self == Faults::default()
    }

    /// One human-readable line per active fault (empty when none), for
    /// start-up output.
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.nack_fraction > 0.0 {
            out.push(format!(
                "fault: nack {:.3} of messages with {}",
                self.nack_fraction,
                self.effective_nack_code().as_str()
            ));
        }
        if !self.ack_delay.is_zero() {
            out.push(format!(
                "fault: ack delay {} ms",
                self.ack_delay.as_millis()
            ));
        }
        if let Some(n) = self.drain_after {
            out.push(format!("fault: drain after {n} messages"));
        }
        if let Some(d) = self.drain_every {
            out.push(format!("fault: drain every {} ms", d.as_millis()));
        }
        if let Some(n) = self.drop_after {
            out.push(format!("fault: drop connection after {n} messages"));
        }
        if let Some(n) = self.chunk_size {
            out.push(format!("fault: write in chunks of {n} bytes"));
        }
        if self.prefixed {
            out.push("fault: prefixed <data:gcm> stanzas".to_owned());
        }
        if let Some(d) = self.keepalive_every {
            out.push(format!("fault: keepalive every {} ms", d.as_millis()));
        }
        if !self.receipt_delay.is_zero() {
            out.push(format!(
                "fault: receipt delay {} ms",
                self.receipt_delay.as_millis()
            ));
        }
        out
    }
}

/// `Duration` as integer milliseconds.
mod ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u64(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        Ok(Duration::from_millis(u64::deserialize(d)?))
    }
}

/// `Option<Duration>` as integer milliseconds or `null`.
mod opt_ms {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&u64::try_from(d.as_millis()).unwrap_or(u64::MAX)),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Duration>, D::Error> {
        Ok(Option::<u64>::deserialize(d)?.map(Duration::from_millis))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_is_healthy() {
        let f = Faults::default();
        assert!(f.is_none());
        assert!(f.describe().is_empty());
        assert_eq!(f.effective_nack_code(), ErrorCode::ServiceUnavailable);
    }

    #[test]
    fn json_uses_millisecond_fields() {
        let f = Faults {
            ack_delay: Duration::from_millis(5),
            drain_every: Some(Duration::from_secs(2)),
            nack_code: Some(ErrorCode::InternalServerError),
            ..Faults::default()
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["ack_delay_ms"], 5);
        assert_eq!(v["drain_every_ms"], 2000);
        assert_eq!(v["keepalive_every_ms"], serde_json::Value::Null);
        assert_eq!(v["nack_code"], "INTERNAL_SERVER_ERROR");
        let back: Faults = serde_json::from_value(v).unwrap();
        assert_eq!(back, f);
    }

    #[test]
    fn partial_json_and_unknown_fields() {
        let f: Faults =
            serde_json::from_str(r#"{"nack_fraction":1.0,"receipt_delay_ms":7}"#).unwrap();
        assert_eq!(f.nack_fraction, 1.0);
        assert_eq!(f.receipt_delay, Duration::from_millis(7));
        assert!(f.drain_after.is_none());
        assert!(serde_json::from_str::<Faults>(r#"{"ack_delay":5}"#).is_err());
    }
}
