//! Root integration test harness for sonde.
//!
//! The tests in `tests/tests/` run the real agent binary (it loads eBPF
//! programs, so they need root), real servers (nginx, Python) and real
//! clients (curl, Python), and receive the agent's spans over OTLP in a
//! receiver that runs inside the test process.
//!
//! - [`receiver::Receiver`]: OTLP/gRPC and OTLP/HTTP trace and metrics
//!   receiver ([`received_metrics`] holds the metric data points).
//! - [`prometheus::Prometheus`]: a real Prometheus server scraping the agent.
//! - [`agent::Agent`]: starts `target/release/sonde run --config ...`.
//! - [`apiserver::ApiServer`]: a local Kubernetes API server (list/watch
//!   over plain HTTP) for the agent's Kubernetes metadata, with builders of
//!   realistic pods, namespaces, replicasets and jobs.
//! - [`servers`]: nginx and a Python upstream.
//! - [`clients`]: curl and inline Python clients.
//! - [`runc`]: nginx in a runc container, in a pod's kubelet-shaped cgroup.
//! - [`redis`]: redis-server, redis-cli, redis-benchmark and a Python client.
//! - [`mariadb`]: MariaDB with a fresh data directory, the `mariadb` client
//!   and mysql-connector-python scripts.
//! - [`db`]: what the database tests share (agent context, span dumps).
//! - [`grpc`]: a Python grpcio server and client, nginx over h2c and
//!   `curl --http2-prior-knowledge`.
//!
//! The agent traces the whole host, so tests select spans by the pids and
//! ports they created themselves.

pub mod agent;
pub mod apiserver;
pub mod clients;
pub mod db;
pub mod grpc;
pub mod mariadb;
pub mod prometheus;
pub mod received_metrics;
pub mod receiver;
pub mod redis;
pub mod runc;
pub mod servers;
pub mod util;

pub use agent::Agent;
pub use received_metrics::{PointData, ReceivedPoint};
pub use receiver::{Kind, ReceivedSpan, Receiver, RequestHeaders, Status, Value};
pub use util::{free_port, require_root};
