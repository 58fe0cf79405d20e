//! Real servers on loopback: nginx and a small Python HTTP upstream.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{Lines, children_of, free_port, python_bin, send_signal, wait_port};

/// The body nginx and the upstream serve for `/index.html`.
pub const INDEX_HTML: &str = "<!doctype html>\n<html><head><title>sonde test</title></head>\n<body><p>Hello from the sonde integration tests.</p></body></html>\n";

/// Creates `<dir>/www/index.html` and makes the tree readable by anyone
/// (nginx workers may run as another user).
fn make_www(dir: &Path) -> anyhow::Result<PathBuf> {
    let www = dir.join("www");
    std::fs::create_dir_all(&www)?;
    std::fs::write(www.join("index.html"), INDEX_HTML)?;
    for p in [dir, www.as_path()] {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755))?;
    }
    Ok(www)
}

fn stop_child(child: &mut Child, first: libc::c_int, grace: Duration) {
    if matches!(child.try_wait(), Ok(Some(_))) {
        return;
    }
    let _ = send_signal(child.id(), first);
    let deadline = Instant::now() + grace;
    while Instant::now() < deadline {
        if matches!(child.try_wait(), Ok(Some(_))) {
            return;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// nginx (master plus one worker) on 127.0.0.1 with a generated config:
/// `/index.html` is a static file, `/fail` returns 500, any other path is a
/// 404, and `/proxy/...` (when an upstream is given) goes to
/// `http://127.0.0.1:UPSTREAM/...` over HTTP/1.1.
pub struct Nginx {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
    pids: Vec<u32>,
}

impl Nginx {
    pub fn binary() -> PathBuf {
        std::env::var_os("SONDE_TEST_NGINX")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/usr/sbin/nginx"))
    }

    pub fn start(upstream_port: Option<u16>) -> anyhow::Result<Nginx> {
        let proxy = match upstream_port {
            Some(up) => format!(
                "        location /proxy/ {{\n            proxy_pass http://127.0.0.1:{up}/;\n            proxy_http_version 1.1;\n            proxy_set_header Connection \"\";\n        }}\n"
            ),
            None => String::new(),
        };
        Nginx::start_serving(
            "",
            &format!(
                "        location = /index.html {{ }}\n        location = /fail {{ return 500; }}\n{proxy}"
            ),
        )
    }

    /// nginx whose one server listens on a free loopback port with
    /// `listen_options` (`http2` for h2c) and holds `locations`; its root
    /// has `index.html`.
    pub fn start_serving(listen_options: &str, locations: &str) -> anyhow::Result<Nginx> {
        let bin = Nginx::binary();
        if !bin.exists() {
            bail!(
                "{} not found: install nginx (apt-get install nginx) or set SONDE_TEST_NGINX",
                bin.display()
            );
        }
        let dir = tempfile::Builder::new().prefix("sonde-nginx-").tempdir()?;
        let www = make_www(dir.path())?;
        let d = dir.path().display();
        let port = free_port();
        // As root, keep the worker as root too so it can use the temp dirs.
        // SAFETY: geteuid has no preconditions.
        let user = if unsafe { libc::geteuid() } == 0 {
            "user root root;\n"
        } else {
            ""
        };
        let conf = format!(
            "{user}daemon off;
master_process on;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/error.log info;
events {{ worker_connections 256; }}
http {{
    access_log off;
    default_type text/html;
    client_body_temp_path {d}/client_body;
    proxy_temp_path {d}/proxy_temp;
    fastcgi_temp_path {d}/fastcgi_temp;
    uwsgi_temp_path {d}/uwsgi_temp;
    scgi_temp_path {d}/scgi_temp;
    keepalive_requests 100000;
    keepalive_timeout 120s;
    server {{
        listen 127.0.0.1:{port} {listen_options};
        server_name localhost;
        root {www};
{locations}    }}
}}
",
            www = www.display()
        );
        let conf_path = dir.path().join("nginx.conf");
        std::fs::write(&conf_path, conf)?;
        let mut child = Command::new(&bin)
            .arg("-c")
            .arg(&conf_path)
            .arg("-p")
            .arg(dir.path())
            .arg("-e")
            .arg(dir.path().join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .with_context(|| format!("cannot start {}", bin.display()))?;
        let stderr = child.stderr.take().map(Lines::collect);
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut pids = Vec::new();
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                bail!(
                    "nginx exited with {status}: {:?}\nerror.log:\n{}",
                    stderr.map(|s| s.get()).unwrap_or_default(),
                    std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
                );
            }
            let workers = children_of(child.id());
            if !workers.is_empty() && wait_port(port, Duration::from_millis(100)) {
                pids = std::iter::once(child.id()).chain(workers).collect();
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        if pids.is_empty() {
            let _ = child.kill();
            let _ = child.wait();
            bail!(
                "nginx did not listen on 127.0.0.1:{port} within 10s\nerror.log:\n{}",
                std::fs::read_to_string(dir.path().join("error.log")).unwrap_or_default()
            );
        }
        Ok(Nginx {
            child,
            port,
            dir,
            pids,
        })
    }

    /// Master and worker pids.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM is nginx's fast shutdown; the master takes its worker down.
        stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(5));
    }
}

/// A Python HTTP server (the standard library's `SimpleHTTPRequestHandler`)
/// serving a directory with `index.html`. It prints `peer PORT PATH` for each
/// request it handles, so tests learn the client's source port.
const UPSTREAM_PY: &str = r#"
import http.server, sys
port, root, proto = int(sys.argv[1]), sys.argv[2], sys.argv[3]

class Handler(http.server.SimpleHTTPRequestHandler):
    protocol_version = proto

    def __init__(self, *args, **kwargs):
        super().__init__(*args, directory=root, **kwargs)

    def do_GET(self):
        print("peer %d %s" % (self.client_address[1], self.path), flush=True)
        super().do_GET()

    def log_message(self, fmt, *args):
        pass

server = http.server.ThreadingHTTPServer(("127.0.0.1", port), Handler)
print("listening %d" % port, flush=True)
server.serve_forever()
"#;

/// The Python upstream server process.
pub struct PyUpstream {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
    out: Lines,
    err: Lines,
}

impl PyUpstream {
    /// Starts it with `OTEL_SERVICE_NAME=service_name`. `protocol` is the
    /// response version: `HTTP/1.0` (one request per connection, like
    /// `python3 -m http.server`) or `HTTP/1.1` (keep-alive).
    pub fn start(service_name: &str, protocol: &str) -> anyhow::Result<PyUpstream> {
        let dir = tempfile::Builder::new().prefix("sonde-py-").tempdir()?;
        let www = make_www(dir.path())?;
        let port = free_port();
        let mut child = Command::new(python_bin())
            .arg("-u")
            .arg("-c")
            .arg(UPSTREAM_PY)
            .arg(port.to_string())
            .arg(&www)
            .arg(protocol)
            .env("OTEL_SERVICE_NAME", service_name)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("cannot start python3")?;
        let out = child.stdout.take().map(Lines::collect).unwrap_or_default();
        let err = child.stderr.take().map(Lines::collect).unwrap_or_default();
        let deadline = Instant::now() + Duration::from_secs(15);
        while Instant::now() < deadline {
            if let Some(status) = child.try_wait()? {
                bail!("python upstream exited with {status}: {:?}", err.get());
            }
            if out.get().iter().any(|l| l.starts_with("listening"))
                && wait_port(port, Duration::from_millis(100))
            {
                return Ok(PyUpstream {
                    child,
                    port,
                    _dir: dir,
                    out,
                    err,
                });
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = child.kill();
        let _ = child.wait();
        bail!(
            "python upstream did not listen on {port} within 15s: {:?}",
            err.get()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// `(client port, path)` for each request handled so far.
    pub fn peers(&self) -> Vec<(u16, String)> {
        self.out
            .get()
            .iter()
            .filter_map(|l| {
                let mut it = l.strip_prefix("peer ")?.splitn(2, ' ');
                let port = it.next()?.parse().ok()?;
                Some((port, it.next().unwrap_or_default().to_string()))
            })
            .collect()
    }

    pub fn stderr(&self) -> Vec<String> {
        self.err.get()
    }
}

impl Drop for PyUpstream {
    fn drop(&mut self) {
        stop_child(&mut self.child, libc::SIGTERM, Duration::from_secs(3));
    }
}

/// A Python HTTP server (HTTP/1.0: a connection per request) in a pod's
/// container cgroup, as the kubelet and containerd (systemd driver) name
/// them; the cgroup directories are made here and removed on drop.
pub struct PodServer {
    child: Child,
    dirs: Vec<PathBuf>,
    pub port: u16,
}

impl PodServer {
    pub fn start(uid: &str, container: &str) -> anyhow::Result<PodServer> {
        use crate::runc::{KUBELET_CGROUP_DEPTH, kubelet_cgroup};
        let dir = crate::util::unified_cgroup_root().join(kubelet_cgroup(uid, container));
        let dirs = dir
            .ancestors()
            .take(KUBELET_CGROUP_DEPTH)
            .map(PathBuf::from)
            .collect();
        std::fs::create_dir_all(&dir).context("creating the container's cgroup")?;
        let port = free_port();
        let script = format!(
            "echo $$ > {}/cgroup.procs && exec {} -m http.server {port} --bind 127.0.0.1",
            dir.display(),
            python_bin().display()
        );
        let child = Command::new("sh")
            .arg("-c")
            .arg(script)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting sh")?;
        let server = PodServer { child, dirs, port };
        if !wait_port(port, Duration::from_secs(10)) {
            bail!("the pod's server did not start on port {port}");
        }
        Ok(server)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for PodServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Innermost first; shared parents stay while another pod's cgroup
        // is in them.
        for dir in &self.dirs {
            let _ = std::fs::remove_dir(dir);
        }
    }
}
