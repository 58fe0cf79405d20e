//! Capture stage: loads the kernel programs and decodes their ring-buffer
//! records into typed events.

pub mod attach;
pub mod btf;
pub mod probes;

use sonde_common::{
    AF_INET, AF_INET6, AF_UNIX, COMM_LEN, DIR_EGRESS, DIR_INGRESS, EVENT_CLOSE, EVENT_DATA,
    EVENT_EXEC, EVENT_EXIT, EVENT_PROCESS, EXEC_PATH_LEN, EventHeader, HEADER_LEN,
    PROCESS_PAYLOAD_LEN, ROLE_CLIENT, ROLE_SERVER, ROLE_UNKNOWN, SOURCE_GO_HTTP, SOURCE_SYSCALL,
    SOURCE_TLS_GO, SOURCE_TLS_OPENSSL, SockAddrs,
};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::protocol::Direction;

/// How the process got the socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    Unknown,
    /// It called connect().
    Client,
    /// It accepted it.
    Server,
}

impl TryFrom<u32> for Role {
    type Error = DecodeError;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        match v {
            ROLE_UNKNOWN => Ok(Role::Unknown),
            ROLE_CLIENT => Ok(Role::Client),
            ROLE_SERVER => Ok(Role::Server),
            other => Err(DecodeError::BadField("role", other)),
        }
    }
}

/// Which probe produced a record. Streams are kept per source, so the
/// plaintext a TLS library sees never merges with its socket's ciphertext.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Source {
    /// The syscall tracepoints.
    Syscall,
    /// OpenSSL uprobes (reserved, not yet emitted).
    TlsOpenssl,
    /// Go crypto/tls uprobes (reserved, not yet emitted).
    TlsGo,
    /// Go net/http uprobes (reserved, not yet emitted).
    GoHttp,
}

impl TryFrom<u32> for Source {
    type Error = DecodeError;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        match v {
            SOURCE_SYSCALL => Ok(Source::Syscall),
            SOURCE_TLS_OPENSSL => Ok(Source::TlsOpenssl),
            SOURCE_TLS_GO => Ok(Source::TlsGo),
            SOURCE_GO_HTTP => Ok(Source::GoHttp),
            other => Err(DecodeError::BadField("source", other)),
        }
    }
}

impl TryFrom<u32> for Direction {
    type Error = DecodeError;
    fn try_from(v: u32) -> Result<Self, Self::Error> {
        match v {
            DIR_EGRESS => Ok(Direction::Egress),
            DIR_INGRESS => Ok(Direction::Ingress),
            other => Err(DecodeError::BadField("direction", other)),
        }
    }
}

/// A socket endpoint as user space sees it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Ip(IpAddr, u16),
    Unix,
    Unknown,
}

/// Local and peer endpoint of a connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Endpoints {
    pub local: Endpoint,
    pub peer: Endpoint,
}

impl Endpoints {
    /// Nothing known of either end.
    pub const UNKNOWN: Endpoints = Endpoints {
        local: Endpoint::Unknown,
        peer: Endpoint::Unknown,
    };

    pub fn from_raw(a: &SockAddrs) -> Endpoints {
        let ip = |bytes: &[u8; 16]| -> Option<IpAddr> {
            match a.family {
                AF_INET => Some(IpAddr::V4(Ipv4Addr::new(
                    bytes[0], bytes[1], bytes[2], bytes[3],
                ))),
                AF_INET6 => {
                    let v6 = Ipv6Addr::from(*bytes);
                    // Dual-stack sockets talking IPv4 show v4-mapped addresses.
                    Some(match v6.to_ipv4_mapped() {
                        Some(v4) => IpAddr::V4(v4),
                        None => IpAddr::V6(v6),
                    })
                }
                _ => None,
            }
        };
        match a.family {
            AF_UNIX => Endpoints {
                local: Endpoint::Unix,
                peer: Endpoint::Unix,
            },
            AF_INET | AF_INET6 => Endpoints {
                local: ip(&a.local_addr)
                    .map_or(Endpoint::Unknown, |i| Endpoint::Ip(i, a.local_port)),
                peer: ip(&a.peer_addr).map_or(Endpoint::Unknown, |i| Endpoint::Ip(i, a.peer_port)),
            },
            _ => Endpoints {
                local: Endpoint::Unknown,
                peer: Endpoint::Unknown,
            },
        }
    }
}

/// A decoded record. Times are kernel monotonic nanoseconds.
#[derive(Debug)]
pub enum Event<'a> {
    Data {
        conn: ConnId,
        role: Role,
        endpoints: Endpoints,
        direction: Direction,
        start_ns: u64,
        end_ns: u64,
        total_len: u64,
        payload: &'a [u8],
    },
    Close {
        conn: ConnId,
        ts_ns: u64,
    },
    /// The name of process `tgid`'s main thread and the id of its thread's
    /// cgroup, sent ahead of a connection's first data record.
    Process {
        tgid: u32,
        name: &'a [u8],
        cgroup_id: u64,
    },
    /// Process `pid` called exec() with `filename` (as given to exec, cut
    /// at `EXEC_PATH_LEN - 1` bytes).
    Exec {
        pid: u32,
        filename: &'a [u8],
    },
    /// Process `pid` exited.
    Exit {
        pid: u32,
    },
}

/// A connection: its socket, the source that saw it and the socket's
/// generation, which changes when the socket's address names a new socket.
/// `tgid` and `fd` say which process and fd the record came through (a
/// socket may be reached through several); a record without a socket
/// (`sock` 0) names its connection by them instead.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ConnId {
    pub tgid: u32,
    pub fd: u32,
    pub sock: u64,
    pub source: Source,
    pub generation: u64,
}

/// A record that cannot be decoded.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("record of {0} bytes is shorter than the {HEADER_LEN}-byte header")]
    Short(usize),
    #[error("record announces {announced} captured bytes but carries {carried}")]
    Length { announced: u32, carried: usize },
    #[error("bad {0} value {1}")]
    BadField(&'static str, u32),
}

/// Decodes one ring-buffer record.
pub fn decode(record: &[u8]) -> Result<Event<'_>, DecodeError> {
    if record.len() < HEADER_LEN {
        return Err(DecodeError::Short(record.len()));
    }
    // SAFETY: the length was checked; EventHeader is plain old data and the
    // read is unaligned-safe.
    let h: EventHeader = unsafe { std::ptr::read_unaligned(record.as_ptr().cast()) };
    let conn = ConnId {
        tgid: h.tgid,
        fd: h.fd,
        sock: h.sock,
        source: Source::try_from(h.source)?,
        generation: h.generation,
    };
    match h.kind {
        EVENT_DATA => {
            let payload = &record[HEADER_LEN..];
            let captured = h.captured_len as usize;
            if captured > payload.len() || h.total_len < captured as u64 {
                return Err(DecodeError::Length {
                    announced: h.captured_len,
                    carried: payload.len(),
                });
            }
            Ok(Event::Data {
                conn,
                role: Role::try_from(h.role)?,
                endpoints: Endpoints::from_raw(&h.addrs),
                direction: Direction::try_from(h.direction)?,
                start_ns: h.start_ns,
                end_ns: h.end_ns,
                total_len: h.total_len,
                payload: &payload[..captured],
            })
        }
        EVENT_CLOSE => Ok(Event::Close {
            conn,
            ts_ns: h.end_ns,
        }),
        EVENT_PROCESS => {
            let payload = record
                .get(HEADER_LEN..HEADER_LEN + PROCESS_PAYLOAD_LEN)
                .ok_or(DecodeError::Length {
                    announced: h.captured_len,
                    carried: record.len() - HEADER_LEN,
                })?;
            let (comm, cgroup) = payload.split_at(COMM_LEN);
            let len = comm.iter().position(|&b| b == 0).unwrap_or(COMM_LEN);
            Ok(Event::Process {
                tgid: h.tgid,
                name: &comm[..len],
                cgroup_id: u64::from_ne_bytes(cgroup.try_into().unwrap_or_default()),
            })
        }
        EVENT_EXEC => {
            let len = h.captured_len as usize;
            let filename = record
                .get(HEADER_LEN..HEADER_LEN + len)
                .filter(|_| len < EXEC_PATH_LEN)
                .ok_or(DecodeError::Length {
                    announced: h.captured_len,
                    carried: record.len() - HEADER_LEN,
                })?;
            Ok(Event::Exec {
                pid: h.tgid,
                filename,
            })
        }
        EVENT_EXIT => Ok(Event::Exit { pid: h.tgid }),
        other => Err(DecodeError::BadField("kind", other)),
    }
}

/// A record as the kernel writes it: `header` with `kind` and
/// `captured_len` set, then `payload` (for tests and benches). A source of
/// 0, as `..Default::default()` leaves it, is written as `SOURCE_SYSCALL`.
fn encode(header: &EventHeader, kind: u32, payload: &[u8]) -> Vec<u8> {
    let mut h = *header;
    h.kind = kind;
    h.captured_len = payload.len() as u32;
    if h.source == 0 {
        h.source = SOURCE_SYSCALL;
    }
    let mut out = Vec::with_capacity(HEADER_LEN + payload.len());
    // SAFETY: EventHeader is repr(C) plain data with explicit padding.
    out.extend_from_slice(unsafe {
        std::slice::from_raw_parts((&raw const h).cast::<u8>(), HEADER_LEN)
    });
    out.extend_from_slice(payload);
    out
}

/// Encodes a data record as the kernel would (for tests and benches).
pub fn encode_data(header: &EventHeader, payload: &[u8]) -> Vec<u8> {
    encode(header, EVENT_DATA, payload)
}

/// Encodes a close record (for tests and benches).
pub fn encode_close(header: &EventHeader) -> Vec<u8> {
    encode(header, EVENT_CLOSE, &[])
}

/// Encodes a process record as the kernel would (for tests).
pub fn encode_process(header: &EventHeader, name: &[u8], cgroup_id: u64) -> Vec<u8> {
    let mut payload = [0u8; PROCESS_PAYLOAD_LEN];
    let len = name.len().min(COMM_LEN - 1);
    payload[..len].copy_from_slice(&name[..len]);
    payload[COMM_LEN..].copy_from_slice(&cgroup_id.to_ne_bytes());
    let h = EventHeader {
        total_len: PROCESS_PAYLOAD_LEN as u64,
        ..*header
    };
    encode(&h, EVENT_PROCESS, &payload)
}

/// Encodes an exec record as the kernel would (for tests).
pub fn encode_exec(header: &EventHeader, filename: &[u8]) -> Vec<u8> {
    let len = filename.len().min(EXEC_PATH_LEN - 1);
    let mut name = [0u8; EXEC_PATH_LEN];
    name[..len].copy_from_slice(&filename[..len]);
    let mut rec = encode(header, EVENT_EXEC, &name);
    // `captured_len` is the name's length; the record keeps its fixed size.
    let at = std::mem::offset_of!(EventHeader, captured_len);
    rec[at..at + 4].copy_from_slice(&(len as u32).to_ne_bytes());
    rec
}

/// Encodes an exit record (for tests).
pub fn encode_exit(header: &EventHeader) -> Vec<u8> {
    encode(header, EVENT_EXIT, &[])
}

/// Converts kernel monotonic time to Unix time.
#[derive(Clone, Copy, Debug)]
pub struct Clock {
    offset_ns: i128,
}

impl Clock {
    /// Measures the offset between CLOCK_REALTIME and CLOCK_MONOTONIC now.
    pub fn now() -> Clock {
        let read = |id| {
            let mut ts = libc::timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            // SAFETY: valid clock id and pointer.
            unsafe { libc::clock_gettime(id, &mut ts) };
            i128::from(ts.tv_sec) * 1_000_000_000 + i128::from(ts.tv_nsec)
        };
        let mono = read(libc::CLOCK_MONOTONIC);
        let real = read(libc::CLOCK_REALTIME);
        Clock {
            offset_ns: real - mono,
        }
    }

    /// A fixed offset (for tests and benches).
    pub fn with_offset(offset_ns: i128) -> Clock {
        Clock { offset_ns }
    }

    pub fn to_unix_ns(&self, mono_ns: u64) -> u64 {
        (i128::from(mono_ns) + self.offset_ns).max(0) as u64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header() -> EventHeader {
        EventHeader {
            direction: DIR_EGRESS,
            tgid: 42,
            fd: 7,
            generation: 9,
            total_len: 16,
            addrs: SockAddrs {
                family: AF_INET,
                local_port: 8080,
                peer_port: 40000,
                _pad: 0,
                local_addr: [127, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
                peer_addr: [127, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0],
            },
            ..Default::default()
        }
    }

    #[test]
    fn round_trip_data() {
        let rec = encode_data(&header(), b"GET / HTTP/1.1\r\n");
        let Ok(Event::Data {
            conn,
            endpoints,
            direction,
            payload,
            ..
        }) = decode(&rec)
        else {
            panic!("not data");
        };
        assert_eq!(
            conn,
            ConnId {
                tgid: 42,
                fd: 7,
                sock: 0,
                source: Source::Syscall,
                generation: 9
            }
        );
        assert_eq!(direction, Direction::Egress);
        assert_eq!(payload, b"GET / HTTP/1.1\r\n");
        assert_eq!(
            endpoints.peer,
            Endpoint::Ip(IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2)), 40000)
        );
    }

    #[test]
    fn source_round_trips() {
        for (raw, want) in [
            (SOURCE_SYSCALL, Source::Syscall),
            (SOURCE_TLS_OPENSSL, Source::TlsOpenssl),
            (SOURCE_TLS_GO, Source::TlsGo),
            (SOURCE_GO_HTTP, Source::GoHttp),
        ] {
            let h = EventHeader {
                source: raw,
                ..header()
            };
            let Ok(Event::Data { conn, .. }) = decode(&encode_data(&h, b"x")) else {
                panic!("source {raw} not decoded");
            };
            assert_eq!(conn.source, want);
            let Ok(Event::Close { conn, .. }) = decode(&encode_close(&h)) else {
                panic!("close of source {raw} not decoded");
            };
            assert_eq!(conn.source, want);
        }
        // A source the agent does not know (0 included) is malformed.
        for bad in [0, 5, u32::MAX] {
            let mut rec = encode_data(&header(), b"x");
            let at = std::mem::offset_of!(EventHeader, source);
            rec[at..at + 4].copy_from_slice(&bad.to_ne_bytes());
            assert_eq!(
                decode(&rec).unwrap_err(),
                DecodeError::BadField("source", bad)
            );
        }
    }

    #[test]
    fn bad_records_are_errors() {
        assert_eq!(decode(&[0; 10]).unwrap_err(), DecodeError::Short(10));
        let mut rec = encode_data(&header(), b"abc");
        rec.truncate(rec.len() - 1);
        assert!(matches!(decode(&rec), Err(DecodeError::Length { .. })));
        let mut h = header();
        h.kind = 99;
        let mut rec = encode_close(&h);
        rec[0] = 99;
        assert_eq!(decode(&rec).unwrap_err(), DecodeError::BadField("kind", 99));
    }

    #[test]
    fn process_records() {
        for (name, want) in [
            (&b"curl"[..], &b"curl"[..]),
            (b"", b""),
            // The kernel keeps 15 bytes and a NUL.
            (b"a-very-long-process-name", b"a-very-long-pro"),
        ] {
            let rec = encode_process(&header(), name, 0x1234_5678_9abc);
            let Ok(Event::Process {
                tgid,
                name,
                cgroup_id,
            }) = decode(&rec)
            else {
                panic!("not a process record: {:?}", decode(&rec));
            };
            assert_eq!((tgid, name, cgroup_id), (42, want, 0x1234_5678_9abc));
        }
        let mut rec = encode_process(&header(), b"curl", 7);
        rec.truncate(HEADER_LEN + COMM_LEN + 7);
        assert!(matches!(decode(&rec), Err(DecodeError::Length { .. })));
    }

    #[test]
    fn exec_and_exit_records() {
        let long = [b'x'; EXEC_PATH_LEN + 10];
        for (name, want) in [
            (&b"/usr/bin/curl"[..], &b"/usr/bin/curl"[..]),
            (b"", b""),
            (&long[..], &long[..EXEC_PATH_LEN - 1]),
        ] {
            let rec = encode_exec(&header(), name);
            assert_eq!(rec.len(), HEADER_LEN + EXEC_PATH_LEN);
            let Ok(Event::Exec { pid, filename }) = decode(&rec) else {
                panic!("not an exec record: {:?}", decode(&rec));
            };
            assert_eq!((pid, filename), (42, want));
        }
        let mut rec = encode_exec(&header(), b"/usr/bin/curl");
        rec.truncate(HEADER_LEN + 5);
        assert!(matches!(decode(&rec), Err(DecodeError::Length { .. })));
        let Ok(Event::Exit { pid }) = decode(&encode_exit(&header())) else {
            panic!("not an exit record");
        };
        assert_eq!(pid, 42);
    }

    #[test]
    fn v4_mapped_v6_shows_as_v4() {
        let mut a = header().addrs;
        a.family = AF_INET6;
        a.peer_addr = Ipv4Addr::new(10, 1, 2, 3).to_ipv6_mapped().octets();
        let e = Endpoints::from_raw(&a);
        assert_eq!(
            e.peer,
            Endpoint::Ip(IpAddr::V4(Ipv4Addr::new(10, 1, 2, 3)), 40000)
        );
    }
}
