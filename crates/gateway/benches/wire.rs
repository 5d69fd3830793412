//! Micro-benchmarks of the per-message work on the gateway's wire paths
//! (`cargo bench -p gateway`):
//!
//! * `xmpp/read_acks` — [`xmpp::reader::StanzaReader`] over a recorded CCS
//!   stream of 1000 `<gcm>` acks, fed in 16 KiB reads as a socket delivers
//!   them;
//! * `xmpp/read_acks_prefixed` — the same in the `<data:gcm>` form;
//! * `fcm/validate_downstream` — [`fcm::validate_downstream`] of a typical
//!   message (a parsed `serde_json::Value`);
//! * `fcm/parse_and_validate` — what the BAL session does per DOWNSTREAM:
//!   parse the `fcm_data` text and validate it (owned, no copy);
//! * `fcm/parse_inbound_ack` — [`fcm::parse_inbound`] of one CCS ack.
#![allow(clippy::unwrap_used)]

use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;
use xmpp::reader::{Event, StanzaReader};

const N: usize = 1000;

fn ack_json(i: usize) -> String {
    format!(
        r#"{{"from":"bench-device-{}","message_id":"bench-1234abcd-{i}","message_type":"ack"}}"#,
        i % 1000
    )
}

fn recorded_stream(prefixed: bool) -> Vec<u8> {
    let mut out =
        xmpp::writer::server_stream_header("fcm.googleapis.com", "0123456789ABCDEF").into_bytes();
    for i in 0..N {
        if prefixed {
            out.extend_from_slice(
                xmpp::writer::gcm_message_prefixed(None, &ack_json(i)).as_bytes(),
            );
        } else {
            xmpp::writer::append_gcm_message(&mut out, None, &ack_json(i));
        }
    }
    out
}

fn read_all(stream: &[u8]) -> usize {
    let mut r = StanzaReader::new(64 * 1024);
    let mut messages = 0;
    for chunk in stream.chunks(16 * 1024) {
        r.feed(chunk);
        while let Some(ev) = r.next_event().unwrap() {
            if let Event::Message(m) = ev {
                messages += usize::from(m.gcm.is_some());
            }
        }
    }
    messages
}

fn xmpp_reader(c: &mut Criterion) {
    let mut g = c.benchmark_group("xmpp");
    g.throughput(Throughput::Elements(N as u64));
    for (name, prefixed) in [("read_acks", false), ("read_acks_prefixed", true)] {
        let stream = recorded_stream(prefixed);
        assert_eq!(read_all(&stream), N);
        g.bench_function(name, |b| b.iter(|| read_all(black_box(&stream))));
    }
    g.finish();
}

const DOWNSTREAM: &str = r#"{"to":"bench-device-17","message_id":"bench-1234abcd-17","time_to_live":3600,"priority":"high","data":{"score":"3x1","bench_i":"17"},"notification":{"title":"Goal","body":"3x1"},"delivery_receipt_requested":true}"#;

fn fcm_json(c: &mut Criterion) {
    let mut g = c.benchmark_group("fcm");
    g.throughput(Throughput::Elements(1));
    let v: serde_json::Value = serde_json::from_str(DOWNSTREAM).unwrap();
    assert!(fcm::validate_downstream(&v).is_ok());
    g.bench_function("validate_downstream", |b| {
        b.iter(|| fcm::validate_downstream(black_box(&v)).is_ok())
    });
    g.bench_function("parse_and_validate", |b| {
        b.iter(|| {
            let v: serde_json::Value = serde_json::from_str(black_box(DOWNSTREAM)).unwrap();
            fcm::validate_downstream_owned(v).is_ok()
        })
    });
    let ack = ack_json(17);
    g.bench_function("parse_inbound_ack", |b| {
        b.iter(|| fcm::parse_inbound(black_box(&ack)).is_ok())
    });
    g.finish();
}

criterion_group!(benches, xmpp_reader, fcm_json);
criterion_main!(benches);
