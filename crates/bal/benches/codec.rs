//! Micro-benchmarks of the BAL line codec (`cargo bench -p bal`):
//!
//! * `decode/*` — one line from a BAL: [`FromBal::parse`] (owned values, as
//!   clients and tests use it) and [`FromBalRef::parse`] (the gateway's
//!   one-pass, no-copy decoder) for a DOWNSTREAM and an ACK;
//! * `encode/*` — one DOWNSTREAM_ACK to a BAL: [`ToBal::to_line`] with a
//!   parsed `fcm_data` (what the gateway did before) against
//!   [`bal::proto::line::downstream_ack`] splicing the ack JSON as received.
#![allow(clippy::unwrap_used)]

use bal::proto::{line, FromBal, FromBalRef, ToBal};
use criterion::{criterion_group, criterion_main, Criterion, Throughput};
use std::hint::black_box;

const DOWNSTREAM: &[u8] = br#"{"message_type":"DOWNSTREAM","group_id":"g7","fcm_data":{"to":"bench-device-17","message_id":"bench-1234abcd-17","time_to_live":3600,"data":{"score":"3x1","bench_i":"17"}}}"#;
const ACK: &[u8] = br#"{"message_type":"ACK","sequence_id":123456}"#;
const FCM_ACK: &str =
    r#"{"from":"bench-device-17","message_id":"bench-1234abcd-17","message_type":"ack"}"#;

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("decode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("downstream/owned", |b| {
        b.iter(|| FromBal::parse(black_box(DOWNSTREAM)).is_ok())
    });
    g.bench_function("downstream/borrowed", |b| {
        b.iter(|| FromBalRef::parse(black_box(DOWNSTREAM)).is_ok())
    });
    g.bench_function("ack/owned", |b| {
        b.iter(|| FromBal::parse(black_box(ACK)).is_ok())
    });
    g.bench_function("ack/borrowed", |b| {
        b.iter(|| FromBalRef::parse(black_box(ACK)).is_ok())
    });
    g.finish();
}

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("encode");
    g.throughput(Throughput::Elements(1));
    g.bench_function("downstream_ack/to_line", |b| {
        b.iter(|| {
            ToBal::DownstreamAck {
                sequence_id: 123456,
                session_id: "com.example.app".into(),
                message_id: "bench-1234abcd-17".into(),
                fcm_data: serde_json::from_str(black_box(FCM_ACK)).unwrap(),
            }
            .to_line()
        })
    });
    g.bench_function("downstream_ack/direct", |b| {
        b.iter(|| {
            line::downstream_ack(
                123456,
                "com.example.app",
                "bench-1234abcd-17",
                black_box(FCM_ACK),
            )
        })
    });
    g.finish();
}

criterion_group!(benches, decode, encode);
criterion_main!(benches);
