//! A real Prometheus server (Debian's `prometheus` package) on loopback,
//! scraping the agent, with its own config and a throwaway TSDB, queried
//! through its HTTP API.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{Lines, free_port, send_signal};

/// A running Prometheus. Dropping it stops the server.
pub struct Prometheus {
    child: Child,
    pub port: u16,
    stderr: Option<Lines>,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    /// `$SONDE_TEST_PROMETHEUS`, else `/usr/bin/prometheus`.
    pub fn binary() -> PathBuf {
        std::env::var_os("SONDE_TEST_PROMETHEUS")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/bin/prometheus"))
    }

    /// Starts Prometheus scraping `target` (`HOST:PORT`, path `/metrics`)
    /// every second, with exemplar storage on, and waits until it is ready.
    pub fn start(target: SocketAddr) -> anyhow::Result<Prometheus> {
        let bin = Prometheus::binary();
        if !bin.exists() {
            bail!(
                "{} not found: install it with `apt-get install prometheus` (or `cargo xtask deps`), \
                 or set SONDE_TEST_PROMETHEUS",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("sonde-prometheus-")
            .tempdir()?;
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             scrape_configs:\n  - job_name: sonde\n    honor_labels: true\n    static_configs:\n      - targets: ['{target}']\n"
        );
        let config_path = dir.path().join("prometheus.yml");
        std::fs::write(&config_path, config)?;
        let port = free_port();
        let mut child = Command::new(&bin)
            .arg(format!("--config.file={}", config_path.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--enable-feature=exemplar-storage")
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().map(Lines::collect);
        let mut p = Prometheus {
            child,
            port,
            stderr,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Some(status) = p.child.try_wait()? {
                bail!("prometheus exited with {status}: {}", p.log());
            }
            if let Ok((200, _)) = p.get("/-/ready") {
                return Ok(p);
            }
            if Instant::now() > deadline {
                bail!("prometheus was not ready within 30s: {}", p.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// What Prometheus wrote on stderr so far.
    pub fn log(&self) -> String {
        self.stderr
            .as_ref()
            .map(|l| l.get().join("\n"))
            .unwrap_or_default()
    }

    /// `GET path` on the Prometheus HTTP port: (status, body).
    pub fn get(&self, path: &str) -> anyhow::Result<(u16, String)> {
        let mut conn = TcpStream::connect(("127.0.0.1", self.port))?;
        conn.set_read_timeout(Some(Duration::from_secs(10)))?;
        write!(
            conn,
            "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\nAccept: application/json\r\n\r\n"
        )?;
        let mut reply = Vec::new();
        conn.read_to_end(&mut reply)?;
        let text = String::from_utf8_lossy(&reply);
        let (head, body) = text
            .split_once("\r\n\r\n")
            .context("no end of head in Prometheus' reply")?;
        let status = head
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .context("no status in Prometheus' reply")?;
        Ok((status, body.to_string()))
    }

    /// Runs an instant query; returns the `data.result` array.
    pub fn query(&self, promql: &str) -> anyhow::Result<Vec<serde_json::Value>> {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", encode(promql)))?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("query {promql:?}: status {status}, body {body:?}"))?;
        if v["status"] != "success" {
            bail!("query {promql:?} failed: {body}");
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The value of a query that gives one sample (`None` when it gives none).
    pub fn scalar(&self, promql: &str) -> anyhow::Result<Option<f64>> {
        let result = self.query(promql)?;
        match result.as_slice() {
            [] => Ok(None),
            [one] => {
                let text = one["value"][1].as_str().context("no value in the sample")?;
                Ok(Some(match text {
                    "NaN" => f64::NAN,
                    "+Inf" => f64::INFINITY,
                    "-Inf" => f64::NEG_INFINITY,
                    t => t.parse()?,
                }))
            }
            more => bail!("query {promql:?} gave {} samples: {more:?}", more.len()),
        }
    }

    /// Polls `promql` every 500 ms until `pred` holds for its value or
    /// `timeout` passes; returns the last value.
    pub fn wait_scalar(
        &self,
        promql: &str,
        timeout: Duration,
        pred: impl Fn(f64) -> bool,
    ) -> anyhow::Result<Option<f64>> {
        let deadline = Instant::now() + timeout;
        loop {
            let v = self.scalar(promql)?;
            if v.is_some_and(&pred) || Instant::now() > deadline {
                return Ok(v);
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    /// Exemplars of the series `selector` over the last `secs` seconds.
    pub fn exemplars(&self, selector: &str, secs: u64) -> anyhow::Result<Vec<serde_json::Value>> {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs();
        let path = format!(
            "/api/v1/query_exemplars?query={}&start={}&end={}",
            encode(selector),
            now.saturating_sub(secs),
            now + 1
        );
        let (status, body) = self.get(&path)?;
        let v: serde_json::Value = serde_json::from_str(&body)
            .with_context(|| format!("exemplars {selector:?}: status {status}, body {body:?}"))?;
        if v["status"] != "success" {
            bail!("exemplar query {selector:?} failed: {body}");
        }
        Ok(v["data"].as_array().cloned().unwrap_or_default())
    }

    /// The health of the scrape target, as Prometheus reports it.
    pub fn target_health(&self) -> anyhow::Result<String> {
        let (_, body) = self.get("/api/v1/targets")?;
        let v: serde_json::Value = serde_json::from_str(&body)?;
        let t = &v["data"]["activeTargets"][0];
        Ok(format!(
            "health={} lastError={:?} scrapeUrl={}",
            t["health"], t["lastError"], t["scrapeUrl"]
        ))
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = send_signal(self.child.id(), libc::SIGTERM);
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Percent-encodes a query parameter.
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len() * 3);
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn encodes_promql() {
        assert_eq!(
            super::encode("sum(rate(x{a=\"b\"}[30s]))"),
            "sum%28rate%28x%7Ba%3D%22b%22%7D%5B30s%5D%29%29"
        );
    }
}
