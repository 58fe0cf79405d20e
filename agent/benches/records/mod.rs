//! The recorded kernel records the pipeline and metrics benches replay:
//! `CONNS` server connections, each reading `PAIRS_PER_CONN` requests and
//! writing their responses, interleaved across connections.

use sonde::capture::encode_data;
use sonde_common::{AF_INET, DIR_EGRESS, DIR_INGRESS, EventHeader, ROLE_SERVER, SockAddrs};

pub const CONNS: u32 = 64;
pub const PAIRS_PER_CONN: u32 = 16;

pub const HTTP_REQUEST: &[u8] = b"GET /api/v1/users/12345/orders?limit=10 HTTP/1.1\r\nHost: shop.internal:8080\r\nUser-Agent: curl/8.5.0\r\nAccept: */*\r\n\r\n";
pub const HTTP_RESPONSE: &[u8] = b"HTTP/1.1 200 OK\r\nServer: nginx\r\nContent-Type: application/json\r\nContent-Length: 26\r\nConnection: keep-alive\r\n\r\n{\"orders\":[1,2,3],\"n\":3}\r\n";

/// [`HTTP_REQUEST`] with a tenant header.
pub const TENANT_REQUEST: &[u8] = b"GET /api/v1/users/12345/orders?limit=10 HTTP/1.1\r\nHost: shop.internal:8080\r\nUser-Agent: curl/8.5.0\r\nx-tenant-id: acme\r\nAccept: */*\r\n\r\n";

/// The tenant rules of the tenant benches: a header rule first, then
/// process rules and a default, so that every span gets a tenant.
pub const TENANT_RULES: &str = "tenants:
  rules:
    - header: x-tenant-id
    - env: TENANT_ID
    - cgroup: 'tenants/(?P<tenant>[a-z]+)'
    - executable: 'acme-*'
      tenant: acme
  default: shared
";

/// `SET session:12345 <value>` and its `+OK`.
pub const REDIS_COMMAND: &[u8] =
    b"*3\r\n$3\r\nSET\r\n$13\r\nsession:12345\r\n$16\r\nabcdefghijklmnop\r\n";
pub const REDIS_REPLY: &[u8] = b"+OK\r\n";
/// A COM_QUERY and its OK packet (1 row affected).
pub const MYSQL_QUERY: &[u8] = b"\x2c\x00\x00\x00\x03UPDATE users SET name = 'bob' WHERE id = 42";
pub const MYSQL_OK: &[u8] = b"\x07\x00\x00\x01\x00\x01\x00\x02\x00\x00\x00";

/// One end of a connection: IPv4 address and port.
pub type Addr = ([u8; 4], u16);

/// The header of a record of server connection `fd` in process `tgid`,
/// from `local` to the client at `peer`: `len` bytes ending at `ts`.
pub fn server_header(
    tgid: u32,
    fd: u32,
    (local, peer): (Addr, Addr),
    direction: u32,
    len: usize,
    ts: u64,
) -> EventHeader {
    let ip = |a: [u8; 4]| {
        let mut b = [0u8; 16];
        b[..4].copy_from_slice(&a);
        b
    };
    EventHeader {
        direction,
        start_ns: ts,
        end_ns: ts + 1_000,
        tgid,
        tid: tgid,
        fd,
        role: ROLE_SERVER,
        generation: 1,
        total_len: len as u64,
        syscall: 1,
        addrs: SockAddrs {
            family: AF_INET,
            local_port: local.1,
            peer_port: peer.1,
            _pad: 0,
            local_addr: ip(local.0),
            peer_addr: ip(peer.0),
        },
        ..Default::default()
    }
}

/// The records of `request`/`response` pairs between a server at `local`
/// and clients at `peer` (IPv4).
pub fn recorded(request: &[u8], response: &[u8], local: [u8; 4], peer: [u8; 4]) -> Vec<Vec<u8>> {
    let mut records = Vec::new();
    let mut ts = 1_000_000u64;
    for _ in 0..PAIRS_PER_CONN {
        for conn in 0..CONNS {
            let ends = ((local, 8080), (peer, 40000 + conn as u16));
            let header = |direction, len: usize, ts: u64| {
                server_header(1000 + conn % 4, 10 + conn, ends, direction, len, ts)
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
