//! Runs the real `sonde` binary as a child process.

use std::io::{BufRead, BufReader, Read};
use std::path::PathBuf;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{send_signal, workspace_root};

/// How long the agent may take to attach its probes.
pub const READY_TIMEOUT: Duration = Duration::from_secs(60);
/// How long the agent may take to exit after SIGTERM.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// The configuration every test agent starts from; `extra_yaml` is merged
/// over it key by key. Sampling is off so that tests can count every span;
/// the sampling test turns it on.
const BASE_CONFIG: &str = "\
sample:
  enabled: false
export:
  console: false
  otlp:
    batch_timeout_ms: 200
capture:
  bytes: 1024
log:
  stats_interval_secs: 5
";

/// The agent binary: `$SONDE_BIN`, else `<target>/release/sonde`.
pub fn agent_binary() -> PathBuf {
    if let Some(p) = std::env::var_os("SONDE_BIN") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release").join("sonde")
}

/// Merges `over` into `base`: mappings key by key, anything else replaced.
fn merge_yaml(base: &mut serde_json::Value, over: serde_json::Value) {
    match (base, over) {
        (serde_json::Value::Object(b), serde_json::Value::Object(o)) => {
            for (k, v) in o {
                match b.get_mut(&k) {
                    Some(existing) => merge_yaml(existing, v),
                    None => {
                        b.insert(k, v);
                    }
                }
            }
        }
        (b, o) => *b = o,
    }
}

/// The capture path every test agent runs on: `$SONDE_TEST_CAPTURE_PATH`
/// (auto, socket or syscall), else the agent's default. `cargo xtask test`
/// runs the suite once as it is and the protocol tests again on the
/// syscall path.
pub const CAPTURE_PATH_VAR: &str = "SONDE_TEST_CAPTURE_PATH";

/// The configuration file text for a test agent.
pub fn config_text(extra_yaml: &str) -> anyhow::Result<String> {
    let mut base: serde_json::Value = serde_saphyr::from_str(BASE_CONFIG)?;
    if let Ok(path) = std::env::var(CAPTURE_PATH_VAR) {
        base["capture"]["path"] = serde_json::Value::String(path);
    }
    if !extra_yaml.trim().is_empty() {
        let over: serde_json::Value =
            serde_saphyr::from_str(extra_yaml).context("extra agent config is not YAML")?;
        merge_yaml(&mut base, over);
    }
    Ok(serde_saphyr::to_string(&base)?)
}

/// Removes terminal colour sequences (`ESC [ ... letter`).
fn strip_ansi(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' && chars.peek() == Some(&'[') {
            chars.next();
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// A running agent. Dropping it kills the process (and prints its log if the
/// test is failing); [`Agent::stop`] is the clean way out.
pub struct Agent {
    child: Option<Child>,
    pid: u32,
    log: Arc<Mutex<Vec<String>>>,
    config_path: PathBuf,
    _dir: tempfile::TempDir,
}

fn drain(
    src: impl Read + Send + 'static,
    prefix: &'static str,
    log: Arc<Mutex<Vec<String>>>,
    ready: Option<mpsc::Sender<()>>,
) {
    std::thread::spawn(move || {
        let reader = BufReader::new(src);
        for line in reader.split(b'\n') {
            let Ok(line) = line else { break };
            let text = strip_ansi(&String::from_utf8_lossy(&line));
            let is_ready = text.contains("sonde ready");
            log.lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .push(format!("{prefix}{text}"));
            if is_ready && let Some(tx) = &ready {
                let _ = tx.send(());
            }
        }
    });
}

impl Agent {
    /// Writes a config (the test defaults merged with `extra_yaml`), starts
    /// `sonde run --config` exporting to `endpoint` with `protocol`
    /// (`grpc` or `http/protobuf`), and waits for `sonde ready`.
    pub fn start(endpoint: &str, protocol: &str, extra_yaml: &str) -> anyhow::Result<Agent> {
        Agent::start_with_args(endpoint, protocol, extra_yaml, &[])
    }

    /// Like [`Agent::start`], with `args` added to `sonde run` (for
    /// example `--prometheus 127.0.0.1:PORT`).
    pub fn start_with_args(
        endpoint: &str,
        protocol: &str,
        extra_yaml: &str,
        args: &[&str],
    ) -> anyhow::Result<Agent> {
        Agent::start_with_env(endpoint, protocol, extra_yaml, args, &[])
    }

    /// Like [`Agent::start_with_args`], with `env` set for the agent (for
    /// example `KUBECONFIG`).
    pub fn start_with_env(
        endpoint: &str,
        protocol: &str,
        extra_yaml: &str,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> anyhow::Result<Agent> {
        let bin = agent_binary();
        if !bin.is_file() {
            bail!(
                "agent binary {} not found: build it with `cargo build --release -p sonde` (or set SONDE_BIN)",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("sonde-agent-").tempdir()?;
        let config_path = dir.path().join("sonde.yaml");
        std::fs::write(&config_path, config_text(extra_yaml)?)?;

        let mut cmd = Command::new(&bin);
        cmd.arg("run").arg("--config").arg(&config_path).args(args);
        for (k, _) in std::env::vars_os() {
            if k.to_string_lossy().starts_with("OTEL_") {
                cmd.env_remove(&k);
            }
        }
        // A test can raise the log level with SONDE_TEST_LOG; an inherited
        // RUST_LOG could hide the ready line, so it is not passed on.
        cmd.env_remove("RUST_LOG");
        if let Ok(level) = std::env::var("SONDE_TEST_LOG") {
            cmd.env("RUST_LOG", level);
        }
        cmd.env("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", protocol)
            .env("NO_COLOR", "1")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let pid = child.id();
        let log: Arc<Mutex<Vec<String>>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        if let Some(err) = child.stderr.take() {
            drain(err, "", log.clone(), Some(tx));
        }
        if let Some(out) = child.stdout.take() {
            drain(out, "[stdout] ", log.clone(), None);
        }

        let mut agent = Agent {
            child: Some(child),
            pid,
            log,
            config_path,
            _dir: dir,
        };
        let started = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(100)) {
                Ok(()) => {
                    eprintln!(
                        "[harness] agent pid {pid} ready after {:.1}s",
                        started.elapsed().as_secs_f64()
                    );
                    return Ok(agent);
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {}
                Err(mpsc::RecvTimeoutError::Disconnected) => {}
            }
            if let Some(child) = agent.child.as_mut()
                && let Some(status) = child.try_wait()?
            {
                std::thread::sleep(Duration::from_millis(200));
                bail!(
                    "agent exited with {status} before `sonde ready`; its output:\n{}",
                    agent.log_text()
                );
            }
            if started.elapsed() > READY_TIMEOUT {
                bail!(
                    "agent printed no `sonde ready` within {}s; its output so far:\n{}",
                    READY_TIMEOUT.as_secs(),
                    agent.log_text()
                );
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The config file the agent was started with (`--config`), in a
    /// directory of its own that lives as long as the agent.
    pub fn config_path(&self) -> &std::path::Path {
        &self.config_path
    }

    /// Every line the agent wrote so far (stderr; stdout lines are prefixed).
    pub fn log_lines(&self) -> Vec<String> {
        self.log
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    /// The log as one indented block. Long logs (a verifier dump can run to
    /// thousands of lines) keep their first 40 and last 200 lines here; the
    /// whole log is written to a file named in the text.
    pub fn log_text(&self) -> String {
        const HEAD: usize = 40;
        const TAIL: usize = 200;
        let lines = self.log_lines();
        let mut s = String::new();
        let mut push = |l: &str| {
            s.push_str("    | ");
            s.push_str(l);
            s.push('\n');
        };
        if lines.len() <= HEAD + TAIL {
            lines.iter().for_each(|l| push(l));
            return s;
        }
        lines[..HEAD].iter().for_each(|l| push(l));
        let path = std::env::temp_dir().join(format!("sonde-agent-{}.log", self.pid));
        let saved = match std::fs::write(&path, lines.join("\n")) {
            Ok(()) => format!("full log in {}", path.display()),
            Err(e) => format!("could not save the full log: {e}"),
        };
        push(&format!(
            "... {} lines left out ({saved}) ...",
            lines.len() - HEAD - TAIL
        ));
        lines[lines.len() - TAIL..].iter().for_each(|l| push(l));
        s
    }

    /// Sends SIGTERM and waits for the exit; fails unless the agent exits
    /// with code 0 within [`STOP_TIMEOUT`].
    pub fn stop(mut self) -> anyhow::Result<ExitStatus> {
        let mut child = self.child.take().context("agent already stopped")?;
        send_signal(self.pid, libc::SIGTERM)?;
        let started = Instant::now();
        loop {
            if let Some(status) = child.try_wait()? {
                // Give the reader threads a moment to take the last lines.
                std::thread::sleep(Duration::from_millis(100));
                eprintln!(
                    "[harness] agent pid {} exited with {status} {:.2}s after SIGTERM",
                    self.pid,
                    started.elapsed().as_secs_f64()
                );
                if !status.success() {
                    bail!(
                        "agent exited with {status} after SIGTERM (expected code 0); its output:\n{}",
                        self.log_text()
                    );
                }
                return Ok(status);
            }
            if started.elapsed() > STOP_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                bail!(
                    "agent did not exit within {}s of SIGTERM; killed it. Its output:\n{}",
                    STOP_TIMEOUT.as_secs(),
                    self.log_text()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "[harness] agent pid {} output:\n{}",
                self.pid,
                self.log_text()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merges_extra_config() {
        let text =
            config_text("export:\n  otlp:\n    batch_size: 7\nhttp:\n  capture_query: true\n")
                .unwrap();
        let v: serde_json::Value = serde_saphyr::from_str(&text).unwrap();
        assert_eq!(v["export"]["console"], serde_json::Value::Bool(false));
        assert_eq!(v["export"]["otlp"]["batch_timeout_ms"].as_u64(), Some(200));
        assert_eq!(v["export"]["otlp"]["batch_size"].as_u64(), Some(7));
        assert_eq!(v["http"]["capture_query"], serde_json::Value::Bool(true));
        assert_eq!(v["capture"]["bytes"].as_u64(), Some(1024));
    }

    #[test]
    fn strips_colours() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2024\u{1b}[0m \u{1b}[32m INFO\u{1b}[0m sonde ready"),
            "2024  INFO sonde ready"
        );
    }
}
