//! Fault-injection knobs of the FCM HTTP v1 emulator (SPEC §9, "Faults").

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::errors::V1ErrorCode;

/// SETTINGS_MAX_CONCURRENT_STREAMS advertised when
/// [`V1Faults::max_concurrent_streams`] is not set (Google's FCM front end
/// advertises 100).
pub const DEFAULT_MAX_CONCURRENT_STREAMS: u32 = 100;

/// Fault settings of the HTTP v1 emulator, changeable at run time with
/// [`super::V1Emulator::set_faults`] or `POST /faults` on the stats endpoint.
///
/// `Default` is a healthy FCM: no added latency, no injected errors, no
/// quotas, no GOAWAY, no drops, access tokens living the configured lifetime
/// (an hour by default), a working token endpoint, 100 concurrent streams.
///
/// JSON form (all fields optional, unknown fields refused; durations are
/// integer milliseconds with a `_ms` suffix):
///
/// ```json
/// {"latency_ms":5,"error_fraction":0.1,"error_code":"UNAVAILABLE","retry_after_secs":2,
///  "gateway_error_fraction":0.0,"gateway_error_status":502,"quota_per_minute":600000,
///  "device_rate_per_minute":240,"goaway_after":1000,"drop_after":null,
///  "token_lifetime_secs":60,"token_endpoint_error":null,"max_concurrent_streams":100,
///  "legacy_token_violation":false,"send_auth_error":null}
/// ```
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct V1Faults {
    /// Added before every `messages:send` answer (errors included). Tokio's
    /// timer resolution is 1 ms. JSON: `latency_ms`.
    #[serde(rename = "latency_ms", with = "ms")]
    pub latency: Duration,
    /// Fraction (0.0..=1.0) of otherwise successful sends answered with
    /// [`V1Faults::error_code`] instead, drawn at random per request.
    pub error_fraction: f64,
    /// Code of the injected errors; `None` = `UNAVAILABLE` (503).
    pub error_code: Option<V1ErrorCode>,
    /// `Retry-After` (seconds) on injected errors.
    pub retry_after_secs: Option<u64>,
    /// Fraction (0.0..=1.0) of otherwise successful sends answered with a bare
    /// [`V1Faults::gateway_error_status`] and an HTML body, as Google's load
    /// balancers do.
    pub gateway_error_fraction: f64,
    /// Status of those answers: 502 (default) or 504.
    pub gateway_error_status: Option<u16>,
    /// Project quota: sends accepted per minute (a fixed window that starts
    /// with the first send after the previous window ended); past it, 429
    /// `QUOTA_EXCEEDED` with a `QuotaFailure` detail and `Retry-After` = the
    /// seconds left in the window.
    pub quota_per_minute: Option<u64>,
    /// Per-device rate: sends to one token accepted per minute (same kind of
    /// window, one per token); past it, 429 `QUOTA_EXCEEDED`.
    pub device_rate_per_minute: Option<u64>,
    /// After this many requests on one connection, shut it down gracefully:
    /// GOAWAY on HTTP/2 (the N-th request and those already in flight are
    /// answered), `Connection: close` on HTTP/1.1.
    pub goaway_after: Option<u64>,
    /// Drop the connection abruptly (no GOAWAY, no TLS close_notify, the N-th
    /// request unanswered) once it has received this many requests.
    pub drop_after: Option<u64>,
    /// Lifetime of access tokens issued from now on (`expires_in`), to force
    /// refreshes; `None` = [`super::V1Config::token_lifetime`].
    pub token_lifetime_secs: Option<u64>,
    /// Make the token endpoint fail: `500` answers a server error, `400` an
    /// `invalid_grant`, for every request while set.
    pub token_endpoint_error: Option<u16>,
    /// SETTINGS_MAX_CONCURRENT_STREAMS advertised on HTTP/2 connections
    /// opened from now on; `None` = [`DEFAULT_MAX_CONCURRENT_STREAMS`].
    pub max_concurrent_streams: Option<u32>,
    /// Answer malformed tokens the way Google used to: the `INVALID_ARGUMENT`
    /// answer also carries a `BadRequest` field violation on `message.token`.
    pub legacy_token_violation: bool,
    /// Answer every authenticated `messages:send` with `401` UNAUTHENTICATED
    /// (a valid-looking token the API refuses anyway, as for a disabled or
    /// deleted service account) or `403` PERMISSION_DENIED (the API is
    /// disabled for the project, or the account lacks the permission), both
    /// without FcmError, as Google answers.
    pub send_auth_error: Option<u16>,
}

impl V1Faults {
    /// Code of the injected errors (`error_code` or `UNAVAILABLE`).
    pub fn effective_error_code(&self) -> V1ErrorCode {
        self.error_code.unwrap_or(V1ErrorCode::Unavailable)
    }

    /// Status of the injected gateway errors (`gateway_error_status` or 502).
    pub fn effective_gateway_status(&self) -> u16 {
        self.gateway_error_status.unwrap_or(502)
    }

    /// The advertised concurrent-stream limit.
    pub fn effective_max_concurrent_streams(&self) -> u32 {
        self.max_concurrent_streams
            .unwrap_or(DEFAULT_MAX_CONCURRENT_STREAMS)
    }

    /// True when no fault is active (the `Default` value).
    pub fn is_none(&self) -> bool {
        *self == V1Faults::default()
    }

    /// Refuse values that cannot work (fractions outside 0..=1, a gateway
    /// status other than 502/504, a token error other than 400/500, a zero
    /// stream limit).
    pub fn check(&self) -> Result<(), String> {
        for (name, f) in [
            ("error_fraction", self.error_fraction),
            ("gateway_error_fraction", self.gateway_error_fraction),
        ] {
            if !(0.0..=1.0).contains(&f) {
                return Err(format!("{name} must be within 0.0..=1.0"));
            }
        }
        if let Some(s) = self.gateway_error_status {
            if s != 502 && s != 504 {
                return Err("gateway_error_status must be 502 or 504".into());
            }
        }
        if let Some(s) = self.token_endpoint_error {
            if s != 400 && s != 500 {
                return Err("token_endpoint_error must be 400 or 500".into());
            }
        }
        if let Some(s) = self.send_auth_error {
            if s != 401 && s != 403 {
                return Err("send_auth_error must be 401 or 403".into());
            }
        }
        if self.max_concurrent_streams == Some(0) {
            return Err("max_concurrent_streams must be at least 1".into());
        }
        Ok(())
    }

    /// One human-readable line per active fault (empty when none).
    pub fn describe(&self) -> Vec<String> {
        let mut out = Vec::new();
        if !self.latency.is_zero() {
            out.push(format!("fault: latency {} ms", self.latency.as_millis()));
        }
        if self.error_fraction > 0.0 {
            let retry = self
                .retry_after_secs
                .map(|s| format!(", Retry-After {s} s"))
                .unwrap_or_default();
            out.push(format!(
                "fault: answer {:.3} of sends with {}{retry}",
                self.error_fraction,
                self.effective_error_code()
            ));
        }
        if self.gateway_error_fraction > 0.0 {
            out.push(format!(
                "fault: answer {:.3} of sends with HTTP {} (HTML)",
                self.gateway_error_fraction,
                self.effective_gateway_status()
            ));
        }
        if let Some(q) = self.quota_per_minute {
            out.push(format!("fault: project quota {q} sends per minute"));
        }
        if let Some(q) = self.device_rate_per_minute {
            out.push(format!("fault: device rate {q} sends per minute"));
        }
        if let Some(n) = self.goaway_after {
            out.push(format!("fault: GOAWAY after {n} requests per connection"));
        }
        if let Some(n) = self.drop_after {
            out.push(format!("fault: drop connection after {n} requests"));
        }
        if let Some(s) = self.token_lifetime_secs {
            out.push(format!("fault: access tokens live {s} s"));
        }
        if let Some(s) = self.token_endpoint_error {
            out.push(format!("fault: token endpoint answers {s}"));
        }
        if let Some(n) = self.max_concurrent_streams {
            out.push(format!("fault: SETTINGS_MAX_CONCURRENT_STREAMS {n}"));
        }
        if self.legacy_token_violation {
            out.push("fault: legacy field violation on message.token".to_owned());
        }
        if let Some(s) = self.send_auth_error {
            out.push(format!("fault: every send answered {s} without FcmError"));
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

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn default_is_healthy() {
        let f = V1Faults::default();
        assert!(f.is_none());
        assert!(f.describe().is_empty());
        assert!(f.check().is_ok());
        assert_eq!(f.effective_error_code(), V1ErrorCode::Unavailable);
        assert_eq!(f.effective_max_concurrent_streams(), 100);
    }

    #[test]
    fn json_form() {
        let f: V1Faults = serde_json::from_str(
            r#"{"latency_ms":7,"error_code":"QUOTA_EXCEEDED","retry_after_secs":3}"#,
        )
        .unwrap();
        assert_eq!(f.latency, Duration::from_millis(7));
        assert_eq!(f.error_code, Some(V1ErrorCode::QuotaExceeded));
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["latency_ms"], 7);
        assert_eq!(serde_json::from_value::<V1Faults>(v).unwrap(), f);
        assert!(serde_json::from_str::<V1Faults>(r#"{"latency":7}"#).is_err());
    }

    #[test]
    fn check_refuses_nonsense() {
        let bad = [
            V1Faults {
                error_fraction: 1.5,
                ..V1Faults::default()
            },
            V1Faults {
                gateway_error_status: Some(500),
                ..V1Faults::default()
            },
            V1Faults {
                token_endpoint_error: Some(401),
                ..V1Faults::default()
            },
            V1Faults {
                max_concurrent_streams: Some(0),
                ..V1Faults::default()
            },
            V1Faults {
                send_auth_error: Some(500),
                ..V1Faults::default()
            },
        ];
        for f in bad {
            assert!(f.check().is_err(), "{f:?}");
        }
    }
}
