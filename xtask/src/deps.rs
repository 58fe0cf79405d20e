//! The servers and clients the integration tests and benches drive, and the
//! tools the deployment test runs, from Debian packages and PyPI. Installed
//! only when missing; needs root.

use std::path::Path;
use std::process::Command;

use anyhow::bail;

use crate::{on_path, output, step};

/// Debian packages, each a list of alternatives: the first one apt knows is
/// installed when none of them is.
pub const APT_PACKAGES: &[&[&str]] = &[
    &["nginx-light", "nginx"],
    &["curl"],
    &["wrk"],
    &["nghttp2-client"],
    &["python3"],
    &["python3-pip"],
    &["redis-server"],
    &["redis-tools"],
    &["mariadb-server"],
    &["mariadb-client"],
    &["prometheus"],
    // agent/tests/containers.rs: a real Podman container (on runc: crun
    // refuses hosts with both cgroup versions), from a static busybox.
    &["podman"],
    &["runc"],
    &["busybox-static"],
];

/// Packaged services that Debian may start (and enable) when it installs
/// them; the tests and benches run their own instances on free ports, so
/// these are stopped and disabled after an install.
const PACKAGED_SERVICES: &[(&str, &str)] = &[
    ("nginx", "nginx"),
    ("redis-server", "redis-server"),
    ("mariadb-server", "mariadb"),
    ("prometheus", "prometheus"),
];

/// Python packages for test clients and tools, installed with `python3 -m
/// pip`, each with the module whose import proves it is there.
pub const PIP_PACKAGES: &[(&str, &str)] = &[
    ("redis", "redis"),
    ("mysql-connector-python", "mysql.connector"),
    ("grpcio", "grpc"),
    // tests/tests/deploy.rs: Helm itself (its Go SDK, built into the
    // wheel: no helm binary, no cluster) renders deploy/helm/sonde, and
    // kubernetes-validate checks the manifests against the API schemas
    // it ships, offline.
    ("helm-python-sdk", "helm_python"),
    ("kubernetes-validate", "kubernetes_validate"),
];

/// Installs whatever is missing from [`APT_PACKAGES`] and [`PIP_PACKAGES`].
pub fn install() -> anyhow::Result<()> {
    install_apt()?;
    install_pip()
}

fn dpkg_installed(package: &str) -> bool {
    output(Command::new("dpkg-query").args(["-W", "-f=${Status}", package]))
        .is_some_and(|status| status.split_whitespace().last() == Some("installed"))
}

fn apt_knows(package: &str) -> bool {
    output(Command::new("apt-cache").args(["show", "--no-all-versions", package]))
        .is_some_and(|text| !text.trim().is_empty())
}

fn install_apt() -> anyhow::Result<()> {
    let missing: Vec<&[&str]> = APT_PACKAGES
        .iter()
        .copied()
        .filter(|alts| !alts.iter().any(|p| dpkg_installed(p)))
        .collect();
    if missing.is_empty() {
        println!("xtask: deps: apt packages present");
        return Ok(());
    }
    if !on_path("apt-get") {
        bail!(
            "missing packages {missing:?} and no apt-get: install them with the system's \
             package manager"
        );
    }
    step(
        Command::new("apt-get").args(["update", "-q"]),
        "updating the apt package lists",
    )?;
    let chosen: Vec<&str> = missing
        .iter()
        .map(|alts| {
            alts.iter()
                .copied()
                .find(|p| apt_knows(p))
                .unwrap_or(alts[0])
        })
        .collect();
    step(
        Command::new("apt-get")
            .env("DEBIAN_FRONTEND", "noninteractive")
            .args(["install", "-y", "-q", "--no-install-recommends"])
            .args(&chosen),
        "installing test dependencies",
    )?;
    for (package_prefix, service) in PACKAGED_SERVICES {
        if chosen.iter().any(|p| p.starts_with(package_prefix)) {
            stop_packaged_service(service);
        }
    }
    Ok(())
}

/// Debian starts some servers (nginx on port 80, redis-server on 6379,
/// mariadb on 3306) when it installs them; the tests run their own, so the
/// packaged service is stopped and disabled.
fn stop_packaged_service(service: &str) {
    let quiet = |cmd: &mut Command, what: &str| {
        if let Err(e) = step(cmd, what) {
            println!("xtask: deps: ignored: {e:#}");
        }
    };
    let stopping = format!("stopping the packaged {service} service");
    let init_script = Path::new("/etc/init.d").join(service);
    if Path::new("/run/systemd/system").is_dir() && on_path("systemctl") {
        quiet(
            Command::new("systemctl").args(["disable", "--now", service]),
            &stopping,
        );
    } else if init_script.exists() {
        quiet(Command::new(&init_script).arg("stop"), &stopping);
        if on_path("update-rc.d") {
            quiet(
                Command::new("update-rc.d").args([service, "disable"]),
                &format!("disabling the packaged {service} service"),
            );
        }
    }
}

/// The interpreter the tests and `bench overhead` run Python with:
/// `$SONDE_TEST_PYTHON`, else what `python3` on PATH says its
/// `sys.executable` is (the real binary behind a pyenv shim), so pip
/// installs where they import from.
pub fn python() -> String {
    if let Ok(p) = std::env::var("SONDE_TEST_PYTHON") {
        return p;
    }
    output(Command::new("python3").args(["-c", "import sys; print(sys.executable)"]))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .unwrap_or_else(|| "python3".to_string())
}

fn install_pip() -> anyhow::Result<()> {
    let python = python();
    let missing: Vec<&str> = PIP_PACKAGES
        .iter()
        .filter(|(_, module)| {
            output(Command::new(&python).args(["-c", &format!("import {module}")])).is_none()
        })
        .map(|(package, _)| *package)
        .collect();
    if missing.is_empty() {
        if !PIP_PACKAGES.is_empty() {
            println!("xtask: deps: python packages present for {python}");
        }
        return Ok(());
    }
    step(
        Command::new(&python)
            .args(["-m", "pip", "install", "--quiet"])
            .args(&missing)
            // Debian's own python3 refuses pip installs without this.
            .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
        "installing python test clients and tools",
    )
}
