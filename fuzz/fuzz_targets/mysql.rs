//! The MySQL parser and span pairing on arbitrary syscall sequences.
//!
//! The input is cut into syscalls: each starts with a control byte (bit 0:
//! direction, bits 1-7: how many bytes of the syscall were not captured,
//! in units of 16) and a length byte, then that many captured bytes.
//! Every message goes through `MysqlPairing`, and every statement text
//! through the SQL helpers.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sonde::capture::{Endpoint, Endpoints};
use sonde::protocol::mysql::{self, Message, MysqlConn};
use sonde::protocol::{Chunk, Direction, Limits, StreamParser};
use sonde::protocol::mysql::span::MysqlPairing;
use sonde::span::{Pairing, PairingOut, SpanContext, SpanOptions, sql};

fuzz_target!(|data: &[u8]| {
    let _ = mysql::detect(data);
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = sql::sanitize(text);
        let _ = sql::analyze(text);
        let _ = sql::traceparent(text);
    }

    let ctx = SpanContext {
        pid: 1,
        endpoints: Endpoints {
            local: Endpoint::Ip([127, 0, 0, 1].into(), 40000),
            peer: Endpoint::Ip([127, 0, 0, 1].into(), 3306),
        },
        options: SpanOptions::default(),
    };
    let mut conn = MysqlConn::new(Limits {
        max_buffered_bytes: 512,
    });
    let mut pairing = MysqlPairing::default();
    let mut spans = Vec::new();
    let mut pairing_out = PairingOut::new(&ctx, &mut spans);
    let mut out = Vec::new();
    let mut last_response = None;
    let mut rest = data;
    let mut ts = 0u64;
    let mut check = |out: &mut Vec<Message>, pairing_out: &mut PairingOut<'_>| {
        for msg in out.drain(..) {
            // Times in order; answers refer to commands in increasing order.
            assert!(msg.first_ns() <= msg.last_ns());
            match &msg {
                Message::Command(c) => {
                    if let Some(t) = &c.text {
                        let _ = sql::sanitize(t);
                    }
                }
                Message::Response(r) => {
                    if let Some(prev) = last_response {
                        assert!(r.command_id > prev);
                    }
                    last_response = Some(r.command_id);
                }
            }
            pairing.push(msg, pairing_out);
        }
    };
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
        check(&mut out, &mut pairing_out);
    }
    conn.close(ts + 1, &mut out);
    check(&mut out, &mut pairing_out);
    pairing.finish(&mut pairing_out.loss);
    for span in &spans {
        assert!(span.start_unix_ns <= span.end_unix_ns);
    }
    let _ = conn.take_resync();
});
