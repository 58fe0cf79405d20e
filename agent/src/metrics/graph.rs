//! Service graph pairing: which service called which.
//!
//! Every CLIENT and SERVER span is one half of an edge. When both ends of a
//! connection live on this node, the agent sees both halves, and they share
//! the connection's address pair: the client's local address is the
//! server's peer address and the other way round. Halves wait in a bounded
//! table keyed by that pair until their other half arrives; on one
//! connection requests are answered in order, so halves pair first in,
//! first out.
//!
//! A half that waits longer than `wait` (or that is pushed out because the
//! table is full) becomes an edge on its own, the missing side named by its
//! address: the server by `host:port` (the `server.address` the client used
//! when it named one), the client by its IP address (its port is
//! ephemeral).
//!
//! Only halves whose peer may be on this node wait: a loopback peer, or an
//! address the agent has seen as the local address of a traced connection.
//! Any other half becomes an edge at once, so a busy server with remote
//! clients keeps nothing waiting. (A process whose address was never seen
//! before may have its first requests counted from both sides separately.)
//! Halves on connections without IP addresses (Unix sockets) cannot be
//! paired either and become edges at once.
//!
//! The module is pure: time comes in with the spans and with [`Graph::expire`].

use std::collections::hash_map::Entry;
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

use super::attrs::{AddrKey, FastBuild, IpKey};
use crate::capture::{Endpoint, Endpoints};

/// One side of a request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    Client,
    Server,
}

/// What the graph keeps of one span.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Half {
    /// The resource slot (process) the span came from.
    pub slot: u32,
    pub duration_ns: u64,
    pub failed: bool,
    /// A database call (`connection_type = database` when the server is unseen).
    pub db: bool,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    /// Span end, Unix ns.
    pub end_ns: u64,
    /// The span is exported, so it may serve as an exemplar.
    pub exported: bool,
    /// The span's tenant (a label of each end of the edge), by its number
    /// in the store.
    pub tenant: Option<u32>,
}

/// How the unseen side of an edge is named.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Other {
    /// The name the client used for the server (`host:port`).
    Name(Box<str>),
    /// The server's address and port.
    Addr(SocketAddr),
    /// The client's address.
    Ip(IpAddr),
    /// Nothing is known (a Unix socket, an unknown endpoint).
    Unknown(&'static str),
}

impl std::fmt::Display for Other {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Other::Name(n) => f.write_str(n),
            Other::Addr(a) => write!(f, "{a}"),
            Other::Ip(ip) => write!(f, "{ip}"),
            Other::Unknown(s) => f.write_str(s),
        }
    }
}

/// A finished edge: both halves, or one half and a name for the other side.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Edge {
    Paired { client: Half, server: Half },
    ClientOnly { client: Half, server: Other },
    ServerOnly { server: Half, client: Other },
}

/// Graph settings.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GraphOptions {
    /// How long a half waits for the other, in ns.
    pub wait_ns: u64,
    /// Halves waiting at once.
    pub max_pending: usize,
}

/// Halves of one side waiting on one connection, at most; beyond, the
/// other side is taken as untraced and new halves are counted at once. (An
/// HTTP/1.x connection has one request in flight, a few when pipelined;
/// an HTTP/2 connection as many as its concurrent streams.)
const MAX_PER_CONNECTION: usize = 32;

/// Local addresses remembered before the set starts over.
const MAX_LOCAL_ADDRESSES: usize = 4096;

/// (client address, server address) of a connection.
type Tuple = (AddrKey, AddrKey);

struct Waiting {
    side: Side,
    half: Half,
    deadline: u64,
    /// For a client half: how it named the server.
    server_name: Option<Box<str>>,
}

/// The halves waiting on one connection, oldest first. Nearly always one
/// (a request in flight), kept without a separate allocation.
enum Queue {
    One(Waiting),
    Many(VecDeque<Waiting>),
}

impl Queue {
    fn front(&self) -> Option<&Waiting> {
        match self {
            Queue::One(w) => Some(w),
            Queue::Many(q) => q.front(),
        }
    }

    /// Takes the oldest half; `None` (and the queue left as it was) when
    /// it holds a single one: the caller then removes the whole queue.
    fn pop_front_of_many(&mut self) -> Option<Waiting> {
        match self {
            Queue::One(_) => None,
            Queue::Many(q) => q.pop_front(),
        }
    }

    fn push_back(&mut self, w: Waiting) {
        match self {
            Queue::Many(q) => q.push_back(w),
            Queue::One(_) => {
                let mut q = VecDeque::with_capacity(4);
                if let Queue::One(first) = std::mem::replace(self, Queue::Many(VecDeque::new())) {
                    q.push_back(first);
                }
                q.push_back(w);
                *self = Queue::Many(q);
            }
        }
    }

    fn is_empty(&self) -> bool {
        matches!(self, Queue::Many(q) if q.is_empty())
    }

    fn len(&self) -> usize {
        match self {
            Queue::One(_) => 1,
            Queue::Many(q) => q.len(),
        }
    }
}

/// Halves waiting for their other half.
pub struct Graph {
    options: GraphOptions,
    pending: HashMap<Tuple, Queue, FastBuild>,
    /// (deadline, tuple) in the order halves arrived. An entry whose half
    /// was paired meanwhile is skipped when it comes up.
    order: VecDeque<(u64, Tuple)>,
    waiting: usize,
    now: u64,
    /// Addresses seen as the local end of a traced connection.
    local: HashSet<IpKey, FastBuild>,
    /// The local address learned last (most spans repeat it).
    last_local: Option<IpAddr>,
    /// Halves pushed out early because the table was full.
    pub dropped: u64,
    /// One-sided edges, by the side seen.
    pub unpaired_client: u64,
    pub unpaired_server: u64,
}

impl Graph {
    pub fn new(options: GraphOptions) -> Graph {
        Graph {
            options,
            pending: HashMap::default(),
            order: VecDeque::new(),
            waiting: 0,
            now: 0,
            local: HashSet::default(),
            last_local: None,
            dropped: 0,
            unpaired_client: 0,
            unpaired_server: 0,
        }
    }

    /// Halves waiting now.
    pub fn waiting(&self) -> usize {
        self.waiting
    }

    /// Notes that `ip` is an address of this node.
    pub fn learn_local(&mut self, ip: IpAddr) {
        if self.last_local == Some(ip) {
            return;
        }
        self.last_local = Some(ip);
        if self.local.len() >= MAX_LOCAL_ADDRESSES && !self.local.contains(&IpKey(ip)) {
            self.local.clear();
        }
        self.local.insert(IpKey(ip));
    }

    /// Whether a peer at `ip` may be a process on this node.
    fn may_be_local(&self, ip: IpAddr) -> bool {
        ip.is_loopback() || self.local.contains(&IpKey(ip))
    }

    /// Takes one half. `endpoints` are the connection's, seen from the
    /// span's process; `server_name` is called (for client halves only)
    /// when the half has to wait, to name the server should it stay alone.
    /// Finished edges go to `out`.
    pub fn offer(
        &mut self,
        side: Side,
        half: Half,
        endpoints: &Endpoints,
        server_name: impl FnOnce() -> Option<Box<str>>,
        out: &mut Vec<Edge>,
    ) {
        self.now = self.now.max(half.end_ns);
        self.expire(self.now, out);
        let (Endpoint::Ip(lip, lport), Endpoint::Ip(pip, pport)) =
            (endpoints.local, endpoints.peer)
        else {
            let other = Other::Unknown(match endpoints.peer {
                Endpoint::Unix => "unix",
                _ => "unknown",
            });
            out.push(self.alone(side, half, other));
            return;
        };
        self.learn_local(lip);
        let local = SocketAddr::new(lip, lport);
        let peer = SocketAddr::new(pip, pport);
        if !self.may_be_local(pip) {
            let other = match side {
                Side::Client => server_name().map(Other::Name).unwrap_or(Other::Addr(peer)),
                Side::Server => Other::Ip(pip),
            };
            out.push(self.alone(side, half, other));
            return;
        }
        let tuple = match side {
            Side::Client => (AddrKey(local), AddrKey(peer)),
            Side::Server => (AddrKey(peer), AddrKey(local)),
        };
        // A full table makes room first (before looking this connection
        // up, so that it is looked up once).
        if self.waiting >= self.options.max_pending.max(1) {
            self.push_out_oldest(out);
        }
        let deadline = self.now.saturating_add(self.options.wait_ns);
        let make = move |half: Half| Waiting {
            side,
            half,
            deadline,
            server_name: match side {
                Side::Client => server_name(),
                Side::Server => None,
            },
        };
        let other = match self.pending.entry(tuple) {
            Entry::Occupied(mut e) => {
                if e.get().front().is_some_and(|w| w.side != side) {
                    match e.get_mut().pop_front_of_many() {
                        Some(w) => {
                            if e.get().is_empty() {
                                e.remove();
                            }
                            Some(w)
                        }
                        None => match e.remove() {
                            Queue::One(w) => Some(w),
                            Queue::Many(_) => None,
                        },
                    }
                } else if e.get().len() >= MAX_PER_CONNECTION {
                    // Its other side has answered none of the last halves
                    // on this connection: it is not traced, so waiting is
                    // pointless.
                    let w = make(half);
                    let other = match side {
                        Side::Client => w.server_name.map(Other::Name).unwrap_or(Other::Addr(peer)),
                        Side::Server => Other::Ip(pip),
                    };
                    out.push(self.alone(side, w.half, other));
                    return;
                } else {
                    e.get_mut().push_back(make(half));
                    return self.waited(deadline, tuple);
                }
            }
            Entry::Vacant(v) => {
                v.insert(Queue::One(make(half)));
                return self.waited(deadline, tuple);
            }
        };
        if let Some(other) = other {
            self.waiting -= 1;
            let (client, server) = match side {
                Side::Client => (half, other.half),
                Side::Server => (other.half, half),
            };
            out.push(Edge::Paired { client, server });
        }
    }

    /// Counts a half that now waits on `tuple` until `deadline`.
    fn waited(&mut self, deadline: u64, tuple: Tuple) {
        self.order.push_back((deadline, tuple));
        self.waiting += 1;
    }

    /// Turns the halves that waited until `now` (Unix ns) into one-sided edges.
    pub fn expire(&mut self, now: u64, out: &mut Vec<Edge>) {
        self.now = self.now.max(now);
        while let Some(&(deadline, tuple)) = self.order.front() {
            if deadline > self.now {
                break;
            }
            self.order.pop_front();
            self.expire_front(tuple, Some(self.now), out);
        }
    }

    /// Every waiting half becomes a one-sided edge (at shutdown).
    pub fn drain(&mut self, out: &mut Vec<Edge>) {
        while let Some((_, tuple)) = self.order.pop_front() {
            self.expire_front(tuple, None, out);
        }
    }

    /// Takes the oldest half waiting on `tuple` if `take` says so.
    fn take_front(&mut self, tuple: Tuple, take: impl Fn(&Waiting) -> bool) -> Option<Waiting> {
        let queue = self.pending.get_mut(&tuple)?;
        if !queue.front().is_some_and(take) {
            return None;
        }
        if let Some(w) = queue.pop_front_of_many() {
            if queue.is_empty() {
                self.pending.remove(&tuple);
            }
            return Some(w);
        }
        match self.pending.remove(&tuple) {
            Some(Queue::One(w)) => Some(w),
            _ => None,
        }
    }

    /// The table is full: the half that arrived first stops waiting.
    fn push_out_oldest(&mut self, out: &mut Vec<Edge>) {
        while let Some((_, tuple)) = self.order.pop_front() {
            if self.expire_front(tuple, None, out) {
                self.dropped += 1;
                return;
            }
        }
    }

    /// Ends the wait of the first half of `tuple` if its deadline is at or
    /// before `now` (any deadline with `None`). Returns whether it did.
    fn expire_front(&mut self, tuple: Tuple, now: Option<u64>, out: &mut Vec<Edge>) -> bool {
        let Some(w) = self.take_front(tuple, |w| now.is_none_or(|now| w.deadline <= now)) else {
            return false;
        };
        self.waiting -= 1;
        let (AddrKey(client_addr), AddrKey(server_addr)) = tuple;
        let other = match w.side {
            Side::Client => w
                .server_name
                .map(Other::Name)
                .unwrap_or(Other::Addr(server_addr)),
            Side::Server => Other::Ip(client_addr.ip()),
        };
        let edge = self.alone(w.side, w.half, other);
        out.push(edge);
        true
    }

    /// A one-sided edge, counted.
    fn alone(&mut self, side: Side, half: Half, other: Other) -> Edge {
        match side {
            Side::Client => {
                self.unpaired_client += 1;
                Edge::ClientOnly {
                    client: half,
                    server: other,
                }
            }
            Side::Server => {
                self.unpaired_server += 1;
                Edge::ServerOnly {
                    server: half,
                    client: other,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    const MS: u64 = 1_000_000;

    fn ep(ip: [u8; 4], port: u16) -> Endpoint {
        Endpoint::Ip(IpAddr::V4(Ipv4Addr::from(ip)), port)
    }

    /// The connection 10.0.0.1:40000 -> 10.0.0.2:8080, seen from each side.
    fn client_view() -> Endpoints {
        Endpoints {
            local: ep([10, 0, 0, 1], 40000),
            peer: ep([10, 0, 0, 2], 8080),
        }
    }
    fn server_view() -> Endpoints {
        Endpoints {
            local: ep([10, 0, 0, 2], 8080),
            peer: ep([10, 0, 0, 1], 40000),
        }
    }

    fn half(slot: u32, end_ms: u64, dur_ms: u64) -> Half {
        Half {
            slot,
            duration_ns: dur_ms * MS,
            failed: false,
            db: false,
            trace_id: [slot as u8; 16],
            span_id: [end_ms as u8; 8],
            end_ns: end_ms * MS,
            exported: true,
            tenant: None,
        }
    }

    /// `Graph::offer` for a half whose server has no name.
    fn offer(g: &mut Graph, side: Side, half: Half, view: &Endpoints, out: &mut Vec<Edge>) {
        g.offer(side, half, view, || None, out);
    }
    /// The server side of [`server_view`] offers a half.
    fn serve(g: &mut Graph, half: Half, out: &mut Vec<Edge>) {
        offer(g, Side::Server, half, &server_view(), out);
    }
    /// The client side of [`client_view`] offers a half.
    fn call(g: &mut Graph, half: Half, out: &mut Vec<Edge>) {
        offer(g, Side::Client, half, &client_view(), out);
    }

    /// A graph that knows 10.0.0.1 and 10.0.0.2 are on this node.
    fn graph() -> Graph {
        let mut g = Graph::new(GraphOptions {
            wait_ns: 1000 * MS,
            max_pending: 100,
        });
        for last in [1, 2] {
            g.learn_local(IpAddr::V4(Ipv4Addr::new(10, 0, 0, last)));
        }
        g
    }

    #[test]
    fn pairs_by_connection_tuple_either_order() {
        let mut g = graph();
        let mut out = Vec::new();
        // Server first (it writes the response before the client reads it).
        serve(&mut g, half(2, 10, 3), &mut out);
        assert!(out.is_empty());
        assert_eq!(g.waiting(), 1);
        g.offer(
            Side::Client,
            half(1, 11, 5),
            &client_view(),
            || Some("api:8080".into()),
            &mut out,
        );
        assert_eq!(
            out,
            vec![Edge::Paired {
                client: half(1, 11, 5),
                server: half(2, 10, 3)
            }]
        );
        assert_eq!(g.waiting(), 0);
        // Client first.
        out.clear();
        call(&mut g, half(1, 20, 5), &mut out);
        serve(&mut g, half(2, 21, 3), &mut out);
        assert!(matches!(out.as_slice(), [Edge::Paired { .. }]));
        assert_eq!((g.unpaired_client, g.unpaired_server), (0, 0));
    }

    #[test]
    fn keep_alive_requests_pair_in_order() {
        let mut g = graph();
        let mut out = Vec::new();
        for i in 0..3 {
            call(&mut g, half(1, 10 + i, 1), &mut out);
        }
        for i in 0..3 {
            serve(&mut g, half(2, 20 + i, 1), &mut out);
        }
        let ends: Vec<(u64, u64)> = out
            .iter()
            .map(|e| match e {
                Edge::Paired { client, server } => (client.end_ns / MS, server.end_ns / MS),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(ends, vec![(10, 20), (11, 21), (12, 22)]);
    }

    #[test]
    fn a_different_connection_does_not_pair() {
        let mut g = graph();
        let mut out = Vec::new();
        serve(&mut g, half(2, 10, 3), &mut out);
        let other_conn = Endpoints {
            local: ep([10, 0, 0, 1], 40001),
            peer: ep([10, 0, 0, 2], 8080),
        };
        offer(&mut g, Side::Client, half(1, 11, 5), &other_conn, &mut out);
        assert!(out.is_empty());
        assert_eq!(g.waiting(), 2);
    }

    #[test]
    fn alone_after_the_wait_named_by_address() {
        let mut g = graph();
        let mut out = Vec::new();
        g.offer(
            Side::Client,
            half(1, 10, 5),
            &client_view(),
            || Some("api.internal:8080".into()),
            &mut out,
        );
        g.learn_local(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)));
        g.offer(
            Side::Server,
            half(2, 10, 3),
            &Endpoints {
                local: ep([10, 0, 0, 2], 9090),
                peer: ep([10, 0, 0, 9], 51000),
            },
            || None,
            &mut out,
        );
        g.expire(500 * MS, &mut out);
        assert!(out.is_empty(), "{out:?}");
        g.expire(1010 * MS, &mut out);
        assert_eq!(
            out,
            vec![
                Edge::ClientOnly {
                    client: half(1, 10, 5),
                    server: Other::Name("api.internal:8080".into())
                },
                Edge::ServerOnly {
                    server: half(2, 10, 3),
                    client: Other::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 9)))
                },
            ]
        );
        assert_eq!((g.unpaired_client, g.unpaired_server), (1, 1));
        assert_eq!(g.waiting(), 0);
        // Without a name, the server is its address.
        out.clear();
        call(&mut g, half(1, 2000, 5), &mut out);
        g.drain(&mut out);
        assert_eq!(
            out,
            vec![Edge::ClientOnly {
                client: half(1, 2000, 5),
                server: Other::Addr("10.0.0.2:8080".parse().unwrap())
            }]
        );
    }

    #[test]
    fn a_paired_half_leaves_no_stale_expiry() {
        let mut g = graph();
        let mut out = Vec::new();
        call(&mut g, half(1, 10, 1), &mut out);
        serve(&mut g, half(2, 11, 1), &mut out);
        call(&mut g, half(1, 900, 1), &mut out);
        out.clear();
        // The first entry's deadline passes, but the half waiting now on
        // that connection came later and must keep waiting.
        g.expire(1011 * MS, &mut out);
        assert!(out.is_empty(), "{out:?}");
        g.expire(1900 * MS, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_full_table_pushes_out_the_oldest() {
        let mut g = Graph::new(GraphOptions {
            wait_ns: 1000 * MS,
            max_pending: 2,
        });
        g.learn_local(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2)));
        let mut out = Vec::new();
        for port in 0..3u16 {
            let e = Endpoints {
                local: ep([10, 0, 0, 1], 40000 + port),
                peer: ep([10, 0, 0, 2], 80),
            };
            offer(
                &mut g,
                Side::Client,
                half(1, 10 + u64::from(port), 1),
                &e,
                &mut out,
            );
        }
        assert_eq!(g.waiting(), 2);
        assert_eq!(g.dropped, 1);
        assert!(matches!(&out[..], [Edge::ClientOnly { client, .. }] if client.end_ns == 10 * MS));
    }

    #[test]
    fn remote_peers_do_not_wait() {
        let mut g = Graph::new(GraphOptions {
            wait_ns: 1000 * MS,
            max_pending: 100,
        });
        let mut out = Vec::new();
        // Nothing is known of 10.0.0.1 yet: the server half is counted at once.
        serve(&mut g, half(2, 10, 3), &mut out);
        assert_eq!(
            out,
            vec![Edge::ServerOnly {
                server: half(2, 10, 3),
                client: Other::Ip(IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)))
            }]
        );
        // 10.0.0.2 was seen as a local address: a client calling it waits.
        out.clear();
        let client_view = Endpoints {
            local: ep([10, 0, 0, 1], 40001),
            peer: ep([10, 0, 0, 2], 8080),
        };
        offer(&mut g, Side::Client, half(1, 20, 5), &client_view, &mut out);
        assert!(out.is_empty());
        assert_eq!(g.waiting(), 1);
        // Loopback peers always wait.
        let lo = Endpoints {
            local: ep([127, 0, 0, 1], 8080),
            peer: ep([127, 0, 0, 1], 50000),
        };
        offer(&mut g, Side::Server, half(3, 30, 1), &lo, &mut out);
        assert!(out.is_empty());
        assert_eq!(g.waiting(), 2);
    }

    #[test]
    fn a_connection_whose_other_side_never_answers_stops_waiting() {
        let mut g = graph();
        let mut out = Vec::new();
        for i in 0..(MAX_PER_CONNECTION as u64 + 3) {
            serve(&mut g, half(2, 10 + i, 1), &mut out);
        }
        assert_eq!(g.waiting(), MAX_PER_CONNECTION);
        assert_eq!(out.len(), 3);
        assert!(out.iter().all(|e| matches!(e, Edge::ServerOnly { .. })));
        // A client half still pairs with the oldest waiting one.
        out.clear();
        call(&mut g, half(1, 100, 5), &mut out);
        assert!(matches!(&out[..], [Edge::Paired { server, .. }] if server.end_ns == 10 * MS));
    }

    #[test]
    fn unix_sockets_are_edges_at_once() {
        let mut g = graph();
        let mut out = Vec::new();
        let e = Endpoints {
            local: Endpoint::Unix,
            peer: Endpoint::Unix,
        };
        offer(&mut g, Side::Server, half(2, 10, 1), &e, &mut out);
        assert_eq!(
            out,
            vec![Edge::ServerOnly {
                server: half(2, 10, 1),
                client: Other::Unknown("unix")
            }]
        );
        assert_eq!(g.waiting(), 0);
    }
}
