//! The kernel's message-start filter for muted connections: the first
//! bytes of a syscall's buffer that could start a message of a protocol
//! the agent parses, from each protocol's `kernel_prefilter` in the table.
//! The agent writes [`slots`] into the kernel's `PREFIXES` map at load
//! time, and again when a config reload turns protocols on or off; a muted
//! connection's bytes that match none of them never leave the kernel.
//!
//! How many patterns the kernel tries is fixed at load (it sits in the
//! read-only `CONFIG`), so the map always holds a slot for every pattern of
//! every protocol, in table order, and a protocol turned off has its slots
//! filled with [`NOTHING`]. A reload then rewrites slots, never the count.
//!
//! A pattern that is too loose only costs records the agent drops again;
//! one that is too strict loses a revived connection's first message.

use sonde_common::{PREFIX_LEN, PrefixPattern};

/// A pattern no buffer matches (every byte must be at least 255 and at
/// most 0): what fills the slots of a protocol turned off.
pub const NOTHING: PrefixPattern = PrefixPattern {
    lo: [u8::MAX; PREFIX_LEN],
    hi: [0; PREFIX_LEN],
};

/// Every protocol's patterns, as the kernel gets them.
pub fn all() -> Vec<PrefixPattern> {
    of(&super::PROTOCOLS.iter().collect::<Vec<_>>())
}

/// The patterns of `protocols` (those turned on): a connection muted for
/// carrying none of them ships nothing of the others.
pub fn of(protocols: &[&super::ProtocolSpec]) -> Vec<PrefixPattern> {
    protocols
        .iter()
        .flat_map(|p| p.kernel_prefilter)
        .copied()
        .collect()
}

/// The first bytes of the protocols that pipeline small messages: a
/// connection that starts with one has its calls copied whole (the
/// kernel's `WHOLE_PREFIXES`, fixed at load).
pub fn pipelining() -> Vec<PrefixPattern> {
    (super::PROTOCOLS.iter())
        .filter(|p| p.pipelines)
        .flat_map(|p| p.kernel_prefilter)
        .copied()
        .collect()
}

/// The kernel's map as it is to hold with `protocols` on: a slot for each
/// pattern of the table, [`NOTHING`] in those of the protocols off. As
/// long as [`all`], whichever protocols are on.
pub fn slots(protocols: &[&super::ProtocolSpec]) -> Vec<PrefixPattern> {
    super::PROTOCOLS
        .iter()
        .flat_map(|spec| {
            let on = protocols.iter().any(|p| p.name == spec.name);
            spec.kernel_prefilter
                .iter()
                .map(move |&pattern| if on { pattern } else { NOTHING })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use sonde_common::{MAX_PREFIX_PATTERNS, PREFIX_LEN};

    /// Redis commands are copied whole; HTTP requests are not.
    #[test]
    fn pipelining_protocols_are_redis() {
        let whole = pipelining();
        let starts = |first: &[u8; PREFIX_LEN]| whole.iter().any(|p| p.matches(first));
        assert!(starts(b"*3\r\n$3\r\n"));
        assert!(!starts(b"GET / HT"));
        assert!(!starts(b"+OK\r\n\0\0\0"));
        assert!(whole.len() <= MAX_PREFIX_PATTERNS as usize);
    }

    fn accepts(first: &[u8; PREFIX_LEN]) -> bool {
        all().iter().any(|p| p.matches(first))
    }

    /// The hand-written rule the kernel applied before the table.
    fn old_rule(first: [u8; PREFIX_LEN]) -> bool {
        let word = [first[0], first[1], first[2], first[3]];
        if matches!(
            &word,
            b"GET "
                | b"POST"
                | b"PUT "
                | b"HEAD"
                | b"DELE"
                | b"PATC"
                | b"OPTI"
                | b"CONN"
                | b"TRAC"
                | b"HTTP"
                | b"PRI "
        ) {
            return true;
        }
        if first[0] == b'*' && first[1].is_ascii_digit() {
            return true;
        }
        first[3] == 0 && matches!(first[4], 0x02 | 0x03 | 0x0e | 0x16 | 0x17)
    }

    fn prefix(bytes: &[u8]) -> [u8; PREFIX_LEN] {
        let mut out = [0u8; PREFIX_LEN];
        let n = bytes.len().min(PREFIX_LEN);
        out[..n].copy_from_slice(&bytes[..n]);
        out
    }

    #[test]
    fn fits_the_kernel_map() {
        assert!(all().len() <= MAX_PREFIX_PATTERNS as usize);
    }

    /// Every selection of protocols fills the same slots, and passes what
    /// its own patterns pass and nothing else.
    #[test]
    fn slots_keep_their_places() {
        let every: Vec<&super::super::ProtocolSpec> = super::super::PROTOCOLS.iter().collect();
        assert_eq!(slots(&every), all());
        let http1 = every.iter().find(|p| p.name == "http1").copied().unwrap();
        let redis = every.iter().find(|p| p.name == "redis").copied().unwrap();
        for on in [vec![], vec![http1], vec![redis], vec![http1, redis]] {
            let table = slots(&on);
            assert_eq!(table.len(), all().len());
            let passes = |bytes: &[u8]| table.iter().any(|p| p.matches(&prefix(bytes)));
            let own = |bytes: &[u8]| of(&on).iter().any(|p| p.matches(&prefix(bytes)));
            for start in [
                &b"GET / HTTP/1.1\r\n"[..],
                b"HTTP/1.1 200 OK\r",
                b"*1\r\n$4\r\nPING",
                b"\x09\x00\x00\x00\x03SELECT",
            ] {
                assert_eq!(passes(start), own(start), "{on:?} {start:?}");
            }
            let has = |name: &str| on.iter().any(|p| p.name == name);
            assert_eq!(passes(b"GET / HTTP/1.1\r\n"), has("http1"));
            assert_eq!(passes(b"*1\r\n$4\r\nPING"), has("redis"));
        }
        for first in [[0u8; PREFIX_LEN], [u8::MAX; PREFIX_LEN], *b"GET / HT"] {
            assert!(!NOTHING.matches(&first));
        }
    }

    #[test]
    fn message_starts_pass() {
        for start in [
            &b"GET / HTTP/1.1\r\n"[..],
            b"POST /x HTTP/1.1",
            b"PUT /x HTTP/1.1\r",
            b"HEAD / HTTP/1.0",
            b"DELETE /x HTTP/1",
            b"PATCH /x HTTP/1.",
            b"OPTIONS * HTTP/1",
            b"CONNECT a:443 HT",
            b"TRACE / HTTP/1.1",
            b"HTTP/1.1 200 OK\r",
            b"PRI * HTTP/2.0\r\n",
            b"*1\r\n$4\r\nPING",
            b"*3\r\n$3\r\nSET",
            b"\x09\x00\x00\x00\x03SELECT",
            b"\x05\x00\x00\x00\x02shop",
            b"\x01\x00\x00\x00\x0e",
            b"\x10\x00\x00\x00\x16SELECT",
            b"\x0a\x00\x00\x00\x17\x01\x00\x00",
        ] {
            let first = prefix(start);
            assert!(
                accepts(&first),
                "{:?} rejected",
                String::from_utf8_lossy(start)
            );
            assert!(old_rule(first));
        }
    }

    #[test]
    fn tls_and_ssh_do_not_pass() {
        for other in [
            // TLS 1.2 ClientHello record and handshake header.
            &b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"[..],
            // TLS application data.
            b"\x17\x03\x03\x00\x40abcdef",
            b"SSH-2.0-OpenSSH_9.2p1 Debian",
            // Lower-case methods and a Redis inline command are not starts.
            b"get / HTTP/1.1",
            b"*x\r\n",
            // A MySQL packet with sequence id 1 (a reply, not a command).
            b"\x09\x00\x00\x01\x03SELECT",
        ] {
            let first = prefix(other);
            assert!(
                !accepts(&first),
                "{:?} passed",
                String::from_utf8_lossy(other)
            );
            assert!(!old_rule(first));
        }
    }

    /// The table decides like the old rule on every value of the bytes
    /// the rule looks at, and on pseudo-random buffers.
    #[test]
    fn same_verdicts_as_the_old_rule() {
        let check = |first: [u8; PREFIX_LEN]| {
            assert_eq!(accepts(&first), old_rule(first), "{first:?}");
        };
        // Every (byte 3, byte 4), behind a few byte 0..2 choices.
        for head in [[0u8; 3], *b"GET", *b"*1\r", [9, 0, 0]] {
            for b3 in 0..=255u8 {
                for b4 in 0..=255u8 {
                    check([head[0], head[1], head[2], b3, b4, 0, 0, 0]);
                }
            }
        }
        // Every (byte 0, byte 1), for the Redis rule.
        for b0 in 0..=255u8 {
            for b1 in 0..=255u8 {
                check([b0, b1, b'\r', b'\n', 1, 0, 0, 0]);
            }
        }
        // Each method word with each one of its bytes changed.
        for p in super::super::http1::PROTOCOL
            .kernel_prefilter
            .iter()
            .chain(super::super::http2::PROTOCOL.kernel_prefilter)
        {
            for at in 0..4 {
                for b in 0..=255u8 {
                    let mut first = p.lo;
                    first[at] = b;
                    check(first);
                }
            }
        }
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        for _ in 0..200_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            check(x.to_le_bytes());
        }
    }
}
