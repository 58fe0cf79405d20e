//! nginx in a container that runc (from Debian) runs, in the cgroup a
//! kubelet gives a pod's container: what the agent meets on a Kubernetes
//! node, without a kubelet.
//!
//! The OCI bundle is built in a temporary directory. Its root filesystem is
//! the host's `/usr` and `/etc`, bound read-only (with `/bin`, `/lib`, ...
//! as on the host), a tmpfs `/tmp` for nginx's pid file and temp paths,
//! and `/srv` holding the config and the page. The container has its own
//! pid, mount, IPC and UTS namespaces but the host's network, so nginx
//! listens on the host's loopback where curl and the agent see it.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use serde_json::{Value, json};

use crate::servers::INDEX_HTML;
use crate::util::{free_port, wait_port};

/// How long nginx may take to listen.
const START_TIMEOUT: Duration = Duration::from_secs(15);

/// The cgroup path (relative, without a leading `/`) the kubelet and
/// containerd with the systemd cgroup driver give container `container_id`
/// of burstable pod `pod_uid`.
pub fn kubelet_cgroup(pod_uid: &str, container_id: &str) -> PathBuf {
    [
        "kubepods.slice".to_owned(),
        "kubepods-burstable.slice".to_owned(),
        format!("kubepods-burstable-pod{}.slice", pod_uid.replace('-', "_")),
        format!("cri-containerd-{container_id}.scope"),
    ]
    .iter()
    .collect()
}

/// How many components [`kubelet_cgroup`] has: the directories to remove.
pub const KUBELET_CGROUP_DEPTH: usize = 4;

/// The runc binary on PATH.
fn runc_binary() -> anyhow::Result<PathBuf> {
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .chain([PathBuf::from("/usr/sbin"), PathBuf::from("/usr/bin")])
        .map(|d| d.join("runc"))
        .find(|p| p.is_file())
        .context("runc not found: install it (apt-get install runc; `cargo xtask test` does)")
}

/// nginx (a master and two workers) in a runc container.
pub struct RuncNginx {
    runc: PathBuf,
    /// runc's state directory, private to this container.
    state: PathBuf,
    id: String,
    port: u16,
    pids: Vec<u32>,
    /// The container's cgroup in every hierarchy, as nginx's
    /// `/proc/PID/cgroup` named it.
    cgroups: Vec<PathBuf>,
    dir: tempfile::TempDir,
}

impl RuncNginx {
    /// Runs nginx as container `container_id` (also runc's name for it)
    /// of pod `pod_uid`, and waits until it accepts connections.
    ///
    /// The cgroup path is relative, so runc puts it under this process's
    /// own cgroup in each hierarchy (the root on a plain host): runc's
    /// cgroupfs driver makes the directories, as no systemd runs here to
    /// make slices.
    pub fn start(pod_uid: &str, container_id: &str) -> anyhow::Result<RuncNginx> {
        let runc = runc_binary()?;
        let dir = tempfile::Builder::new().prefix("sonde-runc-").tempdir()?;
        let port = free_port();
        let srv = dir.path().join("srv");
        std::fs::create_dir_all(srv.join("www"))?;
        std::fs::write(srv.join("www/index.html"), INDEX_HTML)?;
        std::fs::write(srv.join("nginx.conf"), nginx_conf(port))?;
        let rootfs = dir.path().join("rootfs");
        std::fs::create_dir(&rootfs)?;
        let mut binds = vec![PathBuf::from("/usr"), PathBuf::from("/etc")];
        for top in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
            let host = Path::new("/").join(top);
            match std::fs::read_link(&host) {
                // Merged /usr: the same symlink inside.
                Ok(target) => std::os::unix::fs::symlink(target, rootfs.join(top))?,
                Err(_) if host.is_dir() => binds.push(host),
                Err(_) => {}
            }
        }
        for d in binds
            .iter()
            .map(|b| b.strip_prefix("/").unwrap_or(b).to_path_buf())
            .chain(["tmp", "proc", "dev", "srv"].map(PathBuf::from))
        {
            std::fs::create_dir_all(rootfs.join(d))?;
        }
        let cgroup = kubelet_cgroup(pod_uid, container_id);
        let spec = spec(&rootfs, &srv, &binds, &cgroup);
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::to_vec_pretty(&spec)?,
        )?;

        let state = dir.path().join("state");
        let log = dir.path().join("nginx.log");
        let pid_file = dir.path().join("nginx.pid");
        let log_file = std::fs::File::create(&log)?;
        // Detached, runc hands its stdout and stderr to nginx: the log file.
        let out = Command::new(&runc)
            .arg("--root")
            .arg(&state)
            .args(["run", "--detach", "--pid-file"])
            .arg(&pid_file)
            .arg("--bundle")
            .arg(dir.path())
            .arg(container_id)
            .stdin(Stdio::null())
            .stdout(log_file.try_clone()?)
            .stderr(log_file)
            .status()
            .with_context(|| format!("cannot start {}", runc.display()))?;
        let mut nginx = RuncNginx {
            runc,
            state,
            id: container_id.to_owned(),
            port,
            pids: Vec::new(),
            cgroups: Vec::new(),
            dir,
        };
        if !out.success() {
            bail!("runc run exited with {out}: {}", nginx.log());
        }
        let master: u32 = std::fs::read_to_string(&pid_file)?
            .trim()
            .parse()
            .context("runc's pid file")?;
        nginx.cgroups = container_cgroups(master)?;
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let pids = match nginx.ps() {
                Ok(pids) => pids,
                Err(e) => bail!("{e:#}; nginx's output: {}", nginx.log()),
            };
            if pids.len() >= 3 && wait_port(port, Duration::from_millis(100)) {
                // The master first, as runc started it.
                nginx.pids = std::iter::once(master)
                    .chain(pids.into_iter().filter(|&p| p != master))
                    .collect();
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "nginx in runc did not listen on 127.0.0.1:{port} with two workers within \
                     {START_TIMEOUT:?} (pids {pids:?}): {}",
                    nginx.log()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(nginx)
    }

    /// The host pids of the container's processes (`runc ps`).
    fn ps(&self) -> anyhow::Result<Vec<u32>> {
        let out = Command::new(&self.runc)
            .arg("--root")
            .arg(&self.state)
            .args(["ps", "--format", "json"])
            .arg(&self.id)
            .output()?;
        if !out.status.success() {
            bail!(
                "runc ps: {} {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        serde_json::from_slice(&out.stdout).context("runc ps output")
    }

    /// The master's host pid: pid 1 of the container's pid namespace.
    pub fn master_pid(&self) -> u32 {
        self.pids[0]
    }

    /// The workers' host pids.
    pub fn worker_pids(&self) -> &[u32] {
        &self.pids[1..]
    }

    /// The master's and workers' host pids.
    pub fn pids(&self) -> &[u32] {
        &self.pids
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.port)
    }

    /// nginx's stderr and runc's messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nginx.log")).unwrap_or_default()
    }

    fn runc(&self, args: &[&str]) {
        let _ = Command::new(&self.runc)
            .arg("--root")
            .arg(&self.state)
            .args(args)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

impl Drop for RuncNginx {
    fn drop(&mut self) {
        let id = self.id.clone();
        self.runc(&["kill", &id, "KILL"]);
        self.runc(&["delete", "--force", &id]);
        // runc removes the container's own directory; the pod's and the
        // QoS class's are the kubelet's, so they are removed here (they
        // stay while another test's pod is in them).
        for leaf in &self.cgroups {
            for d in leaf.ancestors().take(KUBELET_CGROUP_DEPTH) {
                let _ = std::fs::remove_dir(d);
            }
        }
    }
}

/// The container's cgroup directory in every hierarchy `pid` is in.
fn container_cgroups(pid: u32) -> anyhow::Result<Vec<PathBuf>> {
    let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup"))?;
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo")?;
    Ok(cgroup
        .lines()
        .filter_map(|l| {
            let mut f = l.splitn(3, ':');
            let (_, controllers, path) = (f.next()?, f.next()?, f.next()?);
            let (root, mount) = cgroup_mount(&mountinfo, controllers)?;
            let inner = path.strip_prefix(root).unwrap_or(path);
            Some(Path::new(mount).join(inner.trim_start_matches('/')))
        })
        .collect())
}

/// The root and mount point of the hierarchy with `controllers` (empty:
/// the unified one).
fn cgroup_mount<'a>(mountinfo: &'a str, controllers: &str) -> Option<(&'a str, &'a str)> {
    mountinfo.lines().find_map(|l| {
        let (before, after) = l.split_once(" - ")?;
        let mut fields = before.split_whitespace().skip(3);
        let (root, mount) = (fields.next()?, fields.next()?);
        let mut fields = after.split_whitespace();
        let (fstype, options) = (fields.next()?, fields.nth(1)?);
        let found = if controllers.is_empty() {
            fstype == "cgroup2"
        } else {
            fstype == "cgroup"
                && controllers
                    .split(',')
                    .all(|c| options.split(',').any(|o| o == c))
        };
        found.then_some((root, mount))
    })
}

/// nginx in the foreground on 127.0.0.1:`port`, with two workers that each
/// accept on their own socket (`reuseport`), so that both serve.
fn nginx_conf(port: u16) -> String {
    format!(
        "user nobody nogroup;
daemon off;
worker_processes 2;
pid /tmp/nginx.pid;
error_log stderr notice;
events {{ worker_connections 64; }}
http {{
    access_log off;
    default_type text/html;
    client_body_temp_path /tmp/client_body;
    proxy_temp_path /tmp/proxy_temp;
    fastcgi_temp_path /tmp/fastcgi_temp;
    uwsgi_temp_path /tmp/uwsgi_temp;
    scgi_temp_path /tmp/scgi_temp;
    server {{
        listen 127.0.0.1:{port} reuseport;
        root /srv/www;
        location = /index.html {{ }}
    }}
}}
"
    )
}

/// The OCI runtime spec (config.json) of the bundle.
fn spec(rootfs: &Path, srv: &Path, binds: &[PathBuf], cgroup: &Path) -> Value {
    let mut mounts = vec![
        json!({"destination": "/proc", "type": "proc", "source": "proc"}),
        json!({"destination": "/dev", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "strictatime", "mode=755", "size=65536k"]}),
        json!({"destination": "/tmp", "type": "tmpfs", "source": "tmpfs",
               "options": ["nosuid", "nodev", "mode=1777", "size=65536k"]}),
        json!({"destination": "/srv", "type": "bind", "source": srv,
               "options": ["rbind", "ro"]}),
    ];
    mounts.extend(binds.iter().map(
        |b| json!({"destination": b, "type": "bind", "source": b, "options": ["rbind", "ro"]}),
    ));
    // What the master needs to start workers as nobody and make their
    // temp directories; a subset of a container runtime's defaults.
    let caps = [
        "CAP_CHOWN",
        "CAP_DAC_OVERRIDE",
        "CAP_FOWNER",
        "CAP_KILL",
        "CAP_NET_BIND_SERVICE",
        "CAP_SETGID",
        "CAP_SETUID",
    ];
    json!({
        "ociVersion": "1.0.2",
        "process": {
            "terminal": false,
            "user": {"uid": 0, "gid": 0},
            "args": ["/usr/sbin/nginx", "-c", "/srv/nginx.conf", "-e", "stderr"],
            "env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
            "cwd": "/",
            "capabilities": {"bounding": caps, "effective": caps, "permitted": caps},
            "rlimits": [{"type": "RLIMIT_NOFILE", "hard": 1024, "soft": 1024}],
            "noNewPrivileges": true,
        },
        "root": {"path": rootfs, "readonly": true},
        "hostname": "nginx",
        "mounts": mounts,
        "linux": {
            "cgroupsPath": cgroup,
            // No network namespace: nginx listens on the host's loopback.
            "namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}],
            "maskedPaths": ["/proc/kcore", "/proc/keys", "/proc/timer_list", "/sys/firmware"],
            "readonlyPaths": ["/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger"],
        },
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_cgroup_has_the_systemd_driver_names() {
        assert_eq!(
            kubelet_cgroup("1234-ab", "cd"),
            PathBuf::from(
                "kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod1234_ab.slice/cri-containerd-cd.scope"
            )
        );
        assert_eq!(
            kubelet_cgroup("u", "c").components().count(),
            KUBELET_CGROUP_DEPTH
        );
    }

    #[test]
    fn finds_cgroup_mounts() {
        let mountinfo = "\
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
35 31 0:32 / /sys/fs/cgroup/memory rw,relatime - cgroup cgroup rw,memory
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup_mount(mountinfo, "memory"),
            Some(("/", "/sys/fs/cgroup/memory"))
        );
        assert_eq!(
            cgroup_mount(mountinfo, "name=systemd"),
            Some(("/", "/sys/fs/cgroup/systemd"))
        );
        assert_eq!(
            cgroup_mount(mountinfo, ""),
            Some(("/", "/sys/fs/cgroup/unified"))
        );
        assert_eq!(cgroup_mount(mountinfo, "cpu,cpuacct"), None);
    }
}
