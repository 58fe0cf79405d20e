//! A real Podman container, named by what Podman wrote on disk: the enrich
//! stage reads `/proc` and the runtime's files as the agent does. Needs
//! root, podman, runc and a static busybox (`cargo xtask test` installs
//! them); skips with a reason otherwise.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use sonde::enrich::{HostInfo, ProcessResources};
use sonde::span::model::AttrValue;

fn is_root() -> bool {
    // SAFETY: no arguments, no side effects.
    unsafe { libc::geteuid() == 0 }
}

/// Podman as this host can run it: runc (crun refuses a host with both
/// cgroup versions), cgroupfs (PID 1 need not be systemd), limits no higher
/// than the test's own (raising them needs CAP_SYS_RESOURCE).
fn podman(args: &[&str]) -> Output {
    Command::new("podman")
        .args(["--runtime", "runc", "--cgroup-manager", "cgroupfs"])
        .args(args)
        .output()
        .expect("podman runs")
}

fn stdout_of(args: &[&str]) -> String {
    let out = podman(args);
    assert!(
        out.status.success(),
        "podman {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_owned()
}

fn on_path(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .is_ok_and(|o| o.status.success())
}

/// Removes the container, and the scratch folder, however the test ends.
struct Cleanup {
    name: String,
    dir: PathBuf,
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        let _ = podman(&["rm", "--force", "--time", "0", &self.name]);
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An image holding only a static busybox, made from a tarball: no
/// registry is reached.
fn busybox_image(dir: &Path, busybox: &Path) -> String {
    let root = dir.join("rootfs");
    std::fs::create_dir_all(root.join("bin")).unwrap();
    std::fs::copy(busybox, root.join("bin/busybox")).unwrap();
    std::os::unix::fs::symlink("busybox", root.join("bin/sleep")).unwrap();
    let tarball = dir.join("rootfs.tar");
    let tar = Command::new("tar")
        .arg("-C")
        .arg(&root)
        .arg("-cf")
        .arg(&tarball)
        .arg(".")
        .status()
        .unwrap();
    assert!(tar.success());
    let image = "localhost/sonde-test-busybox";
    stdout_of(&["import", "--quiet", tarball.to_str().unwrap(), image]);
    image.to_owned()
}

#[test]
fn podman_container_is_named() {
    if !is_root() {
        println!("skipped: podman_container_is_named needs root (rootful Podman's files)");
        return;
    }
    if !on_path("podman") || !on_path("runc") {
        println!(
            "skipped: podman_container_is_named needs podman and runc (cargo xtask test installs them)"
        );
        return;
    }
    let Some(busybox) = ["/bin/busybox", "/usr/bin/busybox"]
        .map(PathBuf::from)
        .into_iter()
        .find(|p| p.exists())
    else {
        println!(
            "skipped: podman_container_is_named needs busybox-static (cargo xtask test installs it)"
        );
        return;
    };

    let name = format!("sonde-test-{}", std::process::id());
    let dir = std::env::temp_dir().join(&name);
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let _cleanup = Cleanup {
        name: name.clone(),
        dir: dir.clone(),
    };
    let image = busybox_image(&dir, &busybox);
    let id = stdout_of(&[
        "run",
        "--detach",
        "--name",
        &name,
        "--network",
        "none",
        "--ulimit",
        "nofile=1024:1024",
        "--ulimit",
        "nproc=1024:1024",
        &image,
        "/bin/sleep",
        "120",
    ]);
    let pid: u32 = stdout_of(&["inspect", "--format", "{{.State.Pid}}", &name])
        .parse()
        .unwrap();
    assert_eq!(id.len(), 64, "{id}");

    let mut resources = ProcessResources::new(HostInfo::detect());
    let resource = resources.get(pid);
    let text = |key: &str| match resource.attr(key) {
        Some(AttrValue::Str(s)) => Some(s.to_string()),
        _ => None,
    };
    assert_eq!(text("container.id").as_deref(), Some(id.as_str()));
    assert_eq!(text("container.runtime.name").as_deref(), Some("podman"));
    assert_eq!(text("container.name").as_deref(), Some(name.as_str()));
    assert_eq!(resource.service_name, name);
    assert_eq!(text("process.executable.name").as_deref(), Some("sleep"));
}
