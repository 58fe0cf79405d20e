//! The HTTP/1.x parser on arbitrary syscall sequences.
//!
//! The input is cut into syscalls: each starts with a control byte (bit 0:
//! direction, bits 1-7: how many bytes of the syscall were not captured,
//! in units of 16) and a length byte, then that many captured bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::protocol::http1::{self, Http1Conn, Message};
use sonde::protocol::{Chunk, Direction, Limits, StreamParser, headers};

fuzz_target!(|data: &[u8]| {
    // The head parser alone: never panics, and never consumes more than it got.
    if let Ok(Some((head, used))) = http1::parse_head(data, &["x-tenant-id".to_owned()]) {
        assert!(used <= data.len());
        for (_, value) in &head.kept_headers {
            assert!(value.len() <= headers::MAX_KEPT_VALUE);
        }
    }
    let _ = http1::detect(data);

    let mut conn = Http1Conn::new(Limits { max_buffered_bytes: 512 })
        .keeping_headers(headers::header_names(["x-tenant-id", "host"]));
    let mut out = Vec::new();
    let mut rest = data;
    let mut ts = 0u64;
    while let [control, len, tail @ ..] = rest {
        let take = (*len as usize).min(tail.len());
        let (captured, next) = tail.split_at(take);
        rest = next;
        let dir = if control & 1 == 0 { Direction::Egress } else { Direction::Ingress };
        let gap = u64::from(control >> 1) * 16;
        ts += 1;
        let chunk = Chunk {
            data: captured,
            total_len: captured.len() as u64 + gap,
            start_ns: ts,
            end_ns: ts,
        };
        conn.feed(dir, &chunk, &mut out);
    }
    conn.close(ts + 1, &mut out);
    for msg in &out {
        // Messages are well formed: times in order, statuses in range.
        assert!(msg.first_ns() <= msg.last_ns());
        if let Message::Response(r) = msg {
            assert!((100..=599).contains(&r.status));
        }
    }
    let _ = conn.take_resync();
});
