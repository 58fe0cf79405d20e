//! The Redis parser and pairing on arbitrary syscall sequences.
//!
//! The input is cut into syscalls: each starts with a control byte (bit 0:
//! direction, bits 1-7: how many bytes of the syscall were not captured,
//! in units of 16) and a length byte, then that many captured bytes. The
//! messages go through the pairing as the pipeline sends them.
#![no_main]

use std::net::{IpAddr, Ipv4Addr};

use libfuzzer_sys::fuzz_target;
use sonde::capture::{Endpoint, Endpoints};
use sonde::protocol::redis::{self, Message, RedisConn, ReplyKind};
use sonde::protocol::{Chunk, Direction, Limits, StreamParser};
use sonde::span::model::AttrValue;
use sonde::protocol::redis::span::RedisPairing;
use sonde::span::{Pairing, PairingOut, SpanContext, SpanOptions};

fuzz_target!(|data: &[u8]| {
    let _ = redis::detect(data);

    let mut conn = RedisConn::new(Limits {
        max_buffered_bytes: 64,
    });
    let mut out = Vec::new();
    let mut rest = data;
    let mut ts = 0u64;
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
    }
    conn.close(ts + 1, &mut out);
    let _ = conn.take_resync();

    // Messages are well formed and bounded.
    for msg in &out {
        assert!(msg.first_ns() <= msg.last_ns());
        match msg {
            Message::Command(c) => {
                assert!(c.args.len() <= redis::MAX_KEPT_ARGS);
                assert!(c.args.len() as u64 <= c.arg_count);
                if c.name == "AUTH" {
                    assert!(c.args.iter().all(|a| a.whole().is_none()));
                }
            }
            Message::Reply(r) => {
                if let ReplyKind::Array { head, .. } = &r.kind {
                    assert!(head.len() <= redis::MAX_HEAD_ELEMS);
                }
            }
            Message::Push(p) => assert!(p.head.len() <= redis::MAX_HEAD_ELEMS),
            Message::Desync(_) => {}
        }
    }

    for sanitize in [true, false] {
        let mut options = SpanOptions::default();
        options.db.sanitize_query = sanitize;
        let ctx = SpanContext {
            pid: 1,
            endpoints: Endpoints {
                local: Endpoint::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST), 40000),
                peer: Endpoint::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST), 6379),
            },
            options,
        };
        let mut pairing = RedisPairing::default();
        let mut spans = Vec::new();
        let mut pairing_out = PairingOut::new(&ctx, &mut spans);
        for msg in out.iter().cloned() {
            pairing.push(msg, &mut pairing_out);
        }
        pairing.finish(&mut pairing_out.loss);
        for span in &spans {
            assert!(span.start_unix_ns <= span.end_unix_ns);
            // The arguments of AUTH never show.
            if span.name == "AUTH" {
                let query = span.attr("db.query.text");
                assert!(
                    query == Some(&AttrValue::from("AUTH"))
                        || query == Some(&AttrValue::from("AUTH ?"))
                );
            }
        }
    }
});
