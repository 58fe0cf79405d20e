//! Connection stage: one entry per connection, each with a stream per
//! direction that knows its byte offset and how much of it was captured.
//!
//! The table is bounded (LRU): when full, the least recently active
//! connection is evicted and handed back so its state can be finished.

use std::hash::BuildHasherDefault;
use std::num::NonZeroUsize;

use lru::LruCache;

use crate::capture::{ConnId, Endpoints, Role, Source};
use crate::metrics::attrs::FastHasher;
use crate::protocol::Direction;

/// Byte accounting of one direction of a connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Stream {
    /// Bytes that moved so far: the offset of the next byte.
    pub offset: u64,
    /// Of those, bytes that were not captured.
    pub gap_bytes: u64,
}

impl Stream {
    /// Accounts for one syscall's bytes.
    pub fn advance(&mut self, total_len: u64, captured: usize) {
        self.offset += total_len;
        self.gap_bytes += total_len.saturating_sub(captured as u64);
    }
}

/// One connection, with `T` the state later stages keep for it.
#[derive(Debug)]
pub struct Conn<T> {
    pub id: ConnId,
    pub role: Role,
    pub endpoints: Endpoints,
    pub egress: Stream,
    pub ingress: Stream,
    /// Kernel monotonic time of the last event.
    pub last_seen_ns: u64,
    pub state: T,
}

impl<T> Conn<T> {
    pub fn stream_mut(&mut self, dir: Direction) -> &mut Stream {
        match dir {
            Direction::Egress => &mut self.egress,
            Direction::Ingress => &mut self.ingress,
        }
    }
}

/// What the table is keyed by: the socket, whichever fd or process
/// reached it, and the source, as the bytes a TLS library hands over and
/// the ciphertext of its socket are two streams.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Key {
    Sock(u64, Source),
    /// A record that names no socket: by (tgid, fd).
    Fd(u32, u32, Source),
}

/// Bounded table of connections. Looked up for every record: a fast hash
/// of the key, which the table's bound keeps safe from crafted collisions.
pub struct ConnTable<T> {
    conns: LruCache<Key, Conn<T>, BuildHasherDefault<FastHasher>>,
}

fn key(id: &ConnId) -> Key {
    match id.sock {
        0 => Key::Fd(id.tgid, id.fd, id.source),
        sock => Key::Sock(sock, id.source),
    }
}

/// What `ConnTable::lookup` had to push out to make room.
pub enum Displaced<T> {
    Nothing,
    /// The same socket now names another connection: this one ended
    /// without a close we saw.
    Replaced(Conn<T>),
    /// The table was full; this was the least recently active connection.
    Evicted(Conn<T>),
}

impl<T> ConnTable<T> {
    pub fn new(capacity: usize) -> Self {
        let capacity = NonZeroUsize::new(capacity.max(1)).unwrap_or(NonZeroUsize::MIN);
        ConnTable {
            conns: LruCache::with_hasher(capacity, BuildHasherDefault::default()),
        }
    }

    pub fn len(&self) -> usize {
        self.conns.len()
    }

    pub fn is_empty(&self) -> bool {
        self.conns.is_empty()
    }

    /// The connection `id`, created with `init` if new. A known role and
    /// endpoints from the kernel replace unknown ones.
    pub fn lookup(
        &mut self,
        id: ConnId,
        role: Role,
        endpoints: Endpoints,
        now_ns: u64,
        init: impl FnOnce() -> T,
    ) -> (&mut Conn<T>, Displaced<T>) {
        let key = key(&id);
        let mut displaced = Displaced::Nothing;
        // One lookup says whether it is known and current (nearly always).
        let current = self
            .conns
            .get_mut(&key)
            .map(|c| c.id.generation == id.generation);
        if current == Some(false)
            && let Some(old) = self.conns.pop(&key)
        {
            displaced = Displaced::Replaced(old);
        }
        if current != Some(true) {
            let conn = Conn {
                id,
                role,
                endpoints,
                egress: Stream::default(),
                ingress: Stream::default(),
                last_seen_ns: now_ns,
                state: init(),
            };
            if let Some((old_key, old)) = self.conns.push(key, conn)
                && old_key != key
            {
                displaced = Displaced::Evicted(old);
            }
        }
        // Just inserted or present: `get_mut` cannot miss.
        let conn = self
            .conns
            .get_mut(&key)
            .expect("connection present after insert");
        if conn.role == Role::Unknown {
            conn.role = role;
        }
        conn.endpoints = endpoints;
        conn.last_seen_ns = now_ns;
        (conn, displaced)
    }

    /// Every connection, in no particular order (their recency is kept).
    pub fn iter_mut(&mut self) -> impl Iterator<Item = &mut Conn<T>> {
        self.conns.iter_mut().map(|(_, c)| c)
    }

    /// Removes the connection if it is generation `id.generation`.
    pub fn remove(&mut self, id: ConnId) -> Option<Conn<T>> {
        let key = key(&id);
        if self.conns.peek(&key)?.id.generation == id.generation {
            self.conns.pop(&key)
        } else {
            None
        }
    }

    /// Removes every connection not seen since `before_ns`.
    pub fn drain_idle(&mut self, before_ns: u64) -> Vec<Conn<T>> {
        let mut out = Vec::new();
        while let Some((_, c)) = self.conns.peek_lru() {
            if c.last_seen_ns >= before_ns {
                break;
            }
            if let Some((_, c)) = self.conns.pop_lru() {
                out.push(c);
            }
        }
        out
    }

    /// Removes every connection.
    pub fn drain(&mut self) -> Vec<Conn<T>> {
        let mut out = Vec::with_capacity(self.conns.len());
        while let Some((_, c)) = self.conns.pop_lru() {
            out.push(c);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::Endpoint;

    fn id(fd: u32, generation: u64) -> ConnId {
        ConnId {
            tgid: 1,
            fd,
            sock: 0,
            source: Source::Syscall,
            generation,
        }
    }
    const EP: Endpoints = Endpoints {
        local: Endpoint::Unknown,
        peer: Endpoint::Unknown,
    };

    #[test]
    fn generation_change_replaces() {
        let mut t = ConnTable::<u32>::new(4);
        let (c, d) = t.lookup(id(3, 1), Role::Server, EP, 10, || 7);
        assert!(matches!(d, Displaced::Nothing));
        c.state = 8;
        let (c, d) = t.lookup(id(3, 1), Role::Unknown, EP, 11, || 0);
        assert_eq!(c.state, 8, "same generation keeps state");
        assert_eq!(
            c.role,
            Role::Server,
            "an unknown role does not erase a known one"
        );
        assert!(matches!(d, Displaced::Nothing));
        let (c, d) = t.lookup(id(3, 2), Role::Client, EP, 12, || 0);
        assert_eq!(c.state, 0);
        assert!(matches!(d, Displaced::Replaced(old) if old.state == 8));
    }

    #[test]
    fn two_sources_on_one_fd_are_two_connections() {
        let mut t = ConnTable::<u32>::new(4);
        let syscall = id(3, 1);
        // TLS plaintext of the same socket, with a generation of its own.
        let tls = ConnId {
            source: Source::TlsOpenssl,
            generation: 2,
            ..syscall
        };
        t.lookup(syscall, Role::Client, EP, 10, || 1);
        let (c, d) = t.lookup(tls, Role::Client, EP, 11, || 2);
        assert!(matches!(d, Displaced::Nothing), "the syscall stream stays");
        assert_eq!((c.id, c.state), (tls, 2));
        let (c, _) = t.lookup(syscall, Role::Client, EP, 12, || 0);
        assert_eq!(c.state, 1, "the syscall stream kept its state");
        assert_eq!(t.len(), 2);
        assert_eq!(t.remove(tls).map(|c| c.state), Some(2));
        assert_eq!(t.len(), 1);
    }

    /// An inetd-style server: the parent accepted, a child reads fd 0 and
    /// writes fd 1 of the same socket.
    #[test]
    fn one_socket_through_two_fds_and_processes_is_one_connection() {
        let mut t = ConnTable::<u32>::new(4);
        let sock = |tgid, fd| ConnId {
            tgid,
            fd,
            sock: 0xffff_8880_1234_5600,
            ..id(0, 9)
        };
        t.lookup(sock(100, 0), Role::Server, EP, 10, || 1);
        let (c, d) = t.lookup(sock(100, 1), Role::Unknown, EP, 11, || 2);
        assert!(matches!(d, Displaced::Nothing));
        assert_eq!((c.state, c.role), (1, Role::Server));
        let (c, _) = t.lookup(sock(200, 4), Role::Unknown, EP, 12, || 3);
        assert_eq!(c.state, 1, "another process on the same socket");
        assert_eq!(t.len(), 1);
        // A close names the socket whoever saw it go.
        assert_eq!(t.remove(sock(0, 0)).map(|c| c.state), Some(1));
        // Without a socket, (tgid, fd) is the connection.
        t.lookup(id(0, 9), Role::Client, EP, 13, || 4);
        t.lookup(id(1, 9), Role::Client, EP, 14, || 5);
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn full_table_evicts_least_recent() {
        let mut t = ConnTable::<u32>::new(2);
        t.lookup(id(1, 1), Role::Client, EP, 1, || 1);
        t.lookup(id(2, 1), Role::Client, EP, 2, || 2);
        t.lookup(id(1, 1), Role::Client, EP, 3, || 0); // touch fd 1
        let (_, d) = t.lookup(id(3, 1), Role::Client, EP, 4, || 3);
        assert!(matches!(d, Displaced::Evicted(old) if old.state == 2));
        assert_eq!(t.len(), 2);
    }

    #[test]
    fn remove_checks_generation_and_idle_drain() {
        let mut t = ConnTable::<u32>::new(8);
        t.lookup(id(1, 5), Role::Client, EP, 100, || 1);
        t.lookup(id(2, 5), Role::Client, EP, 200, || 2);
        assert!(t.remove(id(1, 4)).is_none());
        assert_eq!(t.drain_idle(150).len(), 1);
        assert_eq!(t.len(), 1);
        assert!(t.remove(id(2, 5)).is_some());
        assert!(t.is_empty());
    }

    #[test]
    fn stream_counts_gaps() {
        let mut s = Stream::default();
        s.advance(5000, 1024);
        s.advance(10, 10);
        assert_eq!(
            s,
            Stream {
                offset: 5010,
                gap_bytes: 3976
            }
        );
    }
}
