//! The recorded kernel records the pipeline and metrics benches replay:
//! `CONNS` server connections, each reading `PAIRS_PER_CONN` requests and
//! writing their responses, interleaved across connections.

use sonde::capture::encode_data;
use sonde_common::{AF_INET, DIR_EGRESS, DIR_INGRESS, EventHeader, ROLE_SERVER, SockAddrs};

pub const CONNS: u32 = 64;
pub const PAIRS_PER_CONN: u32 = 16;

pub const HTTP_REQUEST: &[u8] = b"GET /api/v1/users/12345/orders?limit=10 HTTP/1.1\r\nHost: shop.internal:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
pub const HTTP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 26\r\nConnection: keep-alive\r\n\r\n{\"orders\":[1,2,3],\"n\":3}\r\n";

/// `SET session:12345 <value>` and its `+OK`.
pub const REDIS_COMMAND: &[u8] =
    b"*3\r\n$3\r\nSET\r\n$13\r\nsession:12345\r\n$16\r\nabcdefghijklmnop\r\n";
pub const REDIS_REPLY: &[u8] = b"+OK\r\n";
/// A COM_QUERY and its OK packet (1 row affected).
pub const MYSQL_QUERY: &[u8] = b"\x2c\x00\x00\x00\x03UPDATE users SET name = 'bob' WHERE id = 42";
pub const MYSQL_OK: &[u8] = b"\x07\x00\x00\x01\x00\x01\x00\x02\x00\x00\x00";

/// The records of `request`/`response` pairs between a server at `local`
/// and clients at `peer` (IPv4).
pub fn recorded(request: &[u8], response: &[u8], local: [u8; 4], peer: [u8; 4]) -> Vec<Vec<u8>> {
    let ip = |a: [u8; 4]| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    };
    let mut records = Vec::new();
    let mut ts = 1_000_000u64;
    for _ in 0..PAIRS_PER_CONN {
        for conn in 0..CONNS {
            let header = |direction, len: usize, ts: u64| EventHeader {
                direction,
                start_ns: ts,
                end_ns: ts + 1_000,
                tgid: 1000 + conn % 4,
                tid: 1000 + conn % 4,
                fd: 10 + conn,
                role: ROLE_SERVER,
                generation: 1,
                total_len: len as u64,
                syscall: 1,
                addrs: SockAddrs {
                    family: AF_INET,
                    local_port: 8080,
                    peer_port: 40000 + conn as u16,
                    _pad: 0,
                    local_addr: ip(local),
                    peer_addr: ip(peer),
                },
                ..Default::default()
            };
            ts += 10_000;
            records.push(encode_data(
                &header(DIR_INGRESS, request.len(), ts),
                request,
            ));
            ts += 50_000;
            records.push(encode_data(
                &header(DIR_EGRESS, response.len(), ts),
                response,
            ));
        }
    }
    records
}

/// The HTTP/1.x records on loopback.
pub fn recorded_events() -> Vec<Vec<u8>> {
    recorded(HTTP_REQUEST, HTTP_RESPONSE, [127, 0, 0, 1], [127, 0, 0, 1])
}
