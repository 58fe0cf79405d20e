//! The HTTP/2 parser (frames and HPACK) on arbitrary syscall sequences, and
//! the span builder on what it yields.
//!
//! The first input byte picks whether the client preface is fed first (bit
//! 0) and in which direction (bit 1), so runs start both at a connection's
//! start and in the middle of one. The rest is cut into syscalls as for the
//! HTTP/1.x target: each starts with a control byte (bit 0: direction,
//! bits 1-7: how many bytes of the syscall were not captured, in units of
//! 16) and a length byte, then that many captured bytes.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use sonde::capture::{Endpoint, Endpoints};
use sonde::protocol::http2::hpack::{self, Decoder};
use sonde::protocol::http2::{self, FrameHeader, Http2Conn, Message};
use sonde::protocol::{Chunk, Direction, Limits, StreamParser, headers};
use sonde::protocol::http2::span::Http2Pairing;
use sonde::span::{Pairing, PairingOut, SpanContext, SpanOptions};

fuzz_target!(|data: &[u8]| {
    // The pieces alone: never panic.
    let _ = http2::detect(data);
    if let Some(h) = FrameHeader::parse(data) {
        let _ = h.check();
        assert_eq!(FrameHeader::parse(&h.to_bytes()), Some(h));
    }
    for mut d in [Decoder::new(), Decoder::mid_connection()] {
        let mut fields = 0usize;
        if let Ok(summary) = d.decode(data, |_| fields += 1) {
            assert_eq!(summary.fields, fields);
            assert!(summary.unknown <= summary.fields);
        }
        assert!(d.table_size() <= hpack::MAX_TABLE_SIZE);
    }

    let Some((&mode, mut rest)) = data.split_first() else {
        return;
    };
    let mut conn = Http2Conn::new(Limits {
        max_buffered_bytes: 512,
    })
    .keeping_headers(headers::header_names(["x-tenant-id"]));
    let mut out = Vec::new();
    let mut ts = 0u64;
    if mode & 1 == 1 {
        let dir = if mode & 2 == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let chunk = Chunk {
            data: http2::PREFACE,
            total_len: http2::PREFACE.len() as u64,
            start_ns: 0,
            end_ns: 0,
        };
        conn.feed(dir, &chunk, &mut out);
    }
    while let [control, len, tail @ ..] = rest {
        let take = (*len as usize).min(tail.len());
        let (captured, next) = tail.split_at(take);
        rest = next;
        let dir = if control & 1 == 0 {
            Direction::Egress
        } else {
            Direction::Ingress
        };
        let gap = u64::from(control >> 1) * 16;
        ts += 1;
        let chunk = Chunk {
            data: captured,
            total_len: captured.len() as u64 + gap,
            start_ns: ts,
            end_ns: ts,
        };
        conn.feed(dir, &chunk, &mut out);
        let _ = conn.take_resync();
    }
    conn.close(ts + 1, &mut out);
    let _ = conn.take_resync();

    let ctx = SpanContext {
        pid: 1,
        endpoints: Endpoints {
            local: Endpoint::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST), 8080),
            peer: Endpoint::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000),
        },
        options: SpanOptions::default(),
    };
    let mut pairing = Http2Pairing::default();
    let mut spans = Vec::new();
    let mut pairing_out = PairingOut::new(&ctx, &mut spans);
    for msg in out {
        if let Message::Stream(s) = &msg {
            // Messages are well formed: times in order, statuses in range,
            // odd (client-opened) streams.
            assert!(s.first_ns <= s.last_ns);
            assert!(s.status.is_none_or(|st| (200..=599).contains(&st)));
            assert!(!s.stream_id.is_multiple_of(2));
        }
        if let Message::Stream(s) = &msg {
            for (_, value) in &s.request.kept_headers {
                assert!(value.len() <= headers::MAX_KEPT_VALUE);
            }
        }
        pairing.push(msg, &mut pairing_out);
    }
    pairing.finish(&mut pairing_out.loss);
    for span in &spans {
        assert!(span.start_unix_ns <= span.end_unix_ns);
        assert!(!span.name.is_empty());
    }
});
