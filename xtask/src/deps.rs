//! The servers and clients the integration tests and benches drive, from
//! Debian packages and PyPI. Installed only when missing; needs root.

use std::path::Path;
use std::process::Command;

use anyhow::bail;

use crate::{on_path, output, step};

/// Debian packages, each a list of alternatives: the first one apt knows is
/// installed when none of them is.
pub const APT_PACKAGES: &[&[&str]] =
    &[&["nginx-light", "nginx"], &["curl"], &["wrk"], &["python3"]];

/// Python packages for test clients, installed with `python3 -m pip`.
pub const PIP_PACKAGES: &[&str] = &[];

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
    if chosen.iter().any(|p| p.starts_with("nginx")) {
        stop_default_nginx();
    }
    Ok(())
}

/// Debian starts nginx on port 80 when it installs it; the tests run their
/// own nginx, so the packaged service is stopped and disabled.
fn stop_default_nginx() {
    let quiet = |cmd: &mut Command, what: &str| {
        if let Err(e) = step(cmd, what) {
            println!("xtask: deps: ignored: {e:#}");
        }
    };
    if Path::new("/run/systemd/system").is_dir() && on_path("systemctl") {
        quiet(
            Command::new("systemctl").args(["disable", "--now", "nginx"]),
            "stopping the packaged nginx service",
        );
    } else if Path::new("/etc/init.d/nginx").exists() {
        quiet(
            Command::new("/etc/init.d/nginx").arg("stop"),
            "stopping the packaged nginx service",
        );
        if on_path("update-rc.d") {
            quiet(
                Command::new("update-rc.d").args(["nginx", "disable"]),
                "disabling the packaged nginx service",
            );
        }
    }
}

fn install_pip() -> anyhow::Result<()> {
    let missing: Vec<&str> = PIP_PACKAGES
        .iter()
        .copied()
        .filter(|p| output(Command::new("python3").args(["-m", "pip", "show", p])).is_none())
        .collect();
    if missing.is_empty() {
        if !PIP_PACKAGES.is_empty() {
            println!("xtask: deps: python packages present");
        }
        return Ok(());
    }
    step(
        Command::new("python3")
            .args(["-m", "pip", "install", "--quiet"])
            .args(&missing)
            // Debian's own python3 refuses pip installs without this.
            .env("PIP_BREAK_SYSTEM_PACKAGES", "1")
            .env("PIP_ROOT_USER_ACTION", "ignore")
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1"),
        "installing python test clients",
    )
}
