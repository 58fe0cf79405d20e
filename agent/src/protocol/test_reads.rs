//! Recorded conversations as every test reads them. A `.log` fixture holds
//! one record per read a relaying proxy made ('>' client to server or '<'
//! server to client, a 4-byte big-endian length, the bytes); a `.txt`
//! fixture one line per read (`C <hex>` or `S <hex>`, `#` lines are comments).

use super::Direction;

/// One read of a recorded conversation.
pub(crate) struct Read {
    pub(crate) from_client: bool,
    pub(crate) bytes: Vec<u8>,
}

/// The reads of a `.txt` fixture.
pub(crate) fn from_txt(text: &str) -> Vec<Read> {
    text.lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|line| {
            let (mark, hex) = line.split_once(' ').expect("`C <hex>` or `S <hex>`");
            Read {
                from_client: mark == "C",
                bytes: from_hex(hex),
            }
        })
        .collect()
}

/// The reads of a `.log` fixture; a cut last record keeps what it has.
pub(crate) fn from_log(mut log: &[u8]) -> Vec<Read> {
    let mut reads = Vec::new();
    while let [mark, a, b, c, d, rest @ ..] = log {
        let len = u32::from_be_bytes([*a, *b, *c, *d]) as usize;
        let (bytes, next) = rest.split_at(len.min(rest.len()));
        reads.push(Read {
            from_client: *mark == b'>',
            bytes: bytes.to_vec(),
        });
        log = next;
    }
    reads
}

/// The reads as the traced process saw them: the client's bytes are Egress
/// when it is the client (`as_client`), Ingress when it is the server.
pub(crate) fn directed(reads: Vec<Read>, as_client: bool) -> Vec<(Direction, Vec<u8>)> {
    reads
        .into_iter()
        .map(|r| {
            let dir = if r.from_client == as_client {
                Direction::Egress
            } else {
                Direction::Ingress
            };
            (dir, r.bytes)
        })
        .collect()
}

/// Bytes from hex digits, white space between them allowed.
pub(crate) fn from_hex(s: &str) -> Vec<u8> {
    let digits: Vec<u8> = s.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len().is_multiple_of(2), "odd hex {s:?}");
    digits
        .chunks(2)
        .map(|pair| {
            let pair = std::str::from_utf8(pair).expect("hex");
            u8::from_str_radix(pair, 16).expect("hex")
        })
        .collect()
}

/// The reads of a `.txt` fixture, as [`directed`] says.
pub(crate) fn txt_records(text: &str, as_client: bool) -> Vec<(Direction, Vec<u8>)> {
    directed(from_txt(text), as_client)
}
