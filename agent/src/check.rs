//! `sonde check`: can the agent run on this host, and if not, what to do.
//!
//! Each check looks at one thing the agent needs (a kernel feature, a
//! filesystem, a privilege) and, when it is missing, says how to get it.
//! Nothing here changes the host except [`ensure_tracefs`], which the agent
//! calls before it attaches its tracepoints.

use std::ffi::CStr;
use std::fs;
use std::path::{Path, PathBuf};

use crate::capture::probes::{self, has_socket_tracepoints};
use crate::config::CapturePath;

/// One line of the `sonde check` report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CheckResult {
    pub name: &'static str,
    /// True when this check does not stop the agent.
    pub ok: bool,
    pub detail: String,
    /// What to do when `ok` is false.
    pub fix: Option<String>,
}

impl CheckResult {
    fn pass(name: &'static str, detail: impl Into<String>) -> Self {
        CheckResult {
            name,
            ok: true,
            detail: detail.into(),
            fix: None,
        }
    }

    fn fail(name: &'static str, detail: impl Into<String>, fix: impl Into<String>) -> Self {
        CheckResult {
            name,
            ok: false,
            detail: detail.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Where the agent wants tracefs.
pub const TRACEFS: &str = "/sys/kernel/tracing";
/// Where older systems mount it (under debugfs); the loader accepts it too.
const TRACEFS_LEGACY: &str = "/sys/kernel/debug/tracing";

/// The oldest kernel with a BPF ring buffer (5.8).
const MIN_KERNEL: (u32, u32) = (5, 8);

// Capability bit numbers (linux/capability.h).
const CAP_SYS_ADMIN: u32 = 21;
const CAP_PERFMON: u32 = 38;
const CAP_BPF: u32 = 39;

/// Runs every check, in the order they are printed.
pub fn run_checks() -> Vec<CheckResult> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let tracefs = tracefs_mount(&mounts);
    let caps = effective_caps();
    vec![
        check_kernel(),
        check_btf(),
        check_ringbuf(),
        check_uprobes(),
        check_tracefs(tracefs.as_deref(), caps),
        check_syscall_tracepoints(tracefs.as_deref()),
        check_capture_path(tracefs.as_deref()),
        check_privileges(caps),
        info_sysctl("perf_event_paranoid", "kernel.perf_event_paranoid"),
        info_sysctl("unprivileged_bpf", "kernel.unprivileged_bpf_disabled"),
    ]
}

/// Prints the report on stdout. Returns true when the agent can run.
pub fn print(results: &[CheckResult]) -> bool {
    let width = results.iter().map(|r| r.name.len()).max().unwrap_or(0);
    for r in results {
        let mark = if r.ok { "ok  " } else { "FAIL" };
        println!("{mark}  {:width$}  {}", r.name, r.detail);
        if let Some(fix) = &r.fix {
            println!("      {:width$}  fix: {fix}", "");
        }
    }
    let failed = results.iter().filter(|r| !r.ok).count();
    if failed == 0 {
        println!("sonde can run on this host");
    } else {
        println!("sonde cannot run on this host: {failed} check(s) failed, see the fixes above");
    }
    failed == 0
}

/// Makes sure tracefs is mounted and returns where. Mounts it at
/// `/sys/kernel/tracing` when it is mounted nowhere (this needs
/// CAP_SYS_ADMIN, which root has).
pub fn ensure_tracefs() -> Result<PathBuf, String> {
    let mounts = fs::read_to_string("/proc/self/mounts")
        .map_err(|e| format!("cannot read /proc/self/mounts to look for tracefs: {e}"))?;
    if let Some(path) = tracefs_mount(&mounts) {
        return Ok(path);
    }
    if !Path::new(TRACEFS).is_dir() {
        return Err(format!(
            "tracefs is not mounted and {TRACEFS} does not exist; \
             the kernel needs CONFIG_TRACING (tracefs) for syscall tracepoints"
        ));
    }
    // SAFETY: all pointers are valid NUL-terminated strings for the call's
    // duration; a null data pointer is allowed for tracefs.
    let rc = unsafe {
        libc::mount(
            c"tracefs".as_ptr(),
            c"/sys/kernel/tracing".as_ptr(),
            c"tracefs".as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    if rc == 0 {
        return Ok(PathBuf::from(TRACEFS));
    }
    let err = std::io::Error::last_os_error();
    let why = match err.raw_os_error() {
        Some(libc::EPERM) => {
            "mounting needs CAP_SYS_ADMIN: run sonde as root, or mount it before starting: \
             mount -t tracefs tracefs /sys/kernel/tracing (in a container, mount the host's \
             /sys/kernel/tracing into it)"
        }
        Some(libc::ENODEV) => "this kernel has no tracefs (CONFIG_TRACING is off)",
        _ => "mount it by hand: mount -t tracefs tracefs /sys/kernel/tracing",
    };
    Err(format!("cannot mount tracefs at {TRACEFS}: {err}; {why}"))
}

/// The mount point of tracefs from /proc/self/mounts text, preferring the
/// standard place.
fn tracefs_mount(mounts: &str) -> Option<PathBuf> {
    let points: Vec<&str> = mounts
        .lines()
        .filter_map(|line| {
            let mut f = line.split_whitespace();
            let (_dev, point, fstype) = (f.next()?, f.next()?, f.next()?);
            (fstype == "tracefs").then_some(point)
        })
        .collect();
    [TRACEFS, TRACEFS_LEGACY]
        .into_iter()
        .find(|p| points.contains(p))
        .map(PathBuf::from)
}

fn check_kernel() -> CheckResult {
    const NAME: &str = "kernel";
    let Some((release, machine)) = uname() else {
        return CheckResult::fail(
            NAME,
            "uname failed",
            "check that /proc and the uname syscall work",
        );
    };
    let detail = format!("{release} ({machine})");
    match kernel_version(&release) {
        Some(v) if v >= MIN_KERNEL => CheckResult::pass(NAME, detail),
        Some(_) => CheckResult::fail(
            NAME,
            detail,
            format!(
                "sonde needs Linux {}.{} or newer (BPF ring buffer); upgrade the kernel",
                MIN_KERNEL.0, MIN_KERNEL.1
            ),
        ),
        None => CheckResult::pass(NAME, format!("{detail}, version not recognised")),
    }
}

fn uname() -> Option<(String, String)> {
    // SAFETY: utsname is plain data; uname fills it on success.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    if unsafe { libc::uname(&mut u) } != 0 {
        return None;
    }
    let field = |raw: &[libc::c_char]| {
        // SAFETY: uname NUL-terminates each field within its array.
        unsafe { CStr::from_ptr(raw.as_ptr()) }
            .to_string_lossy()
            .into_owned()
    };
    Some((field(&u.release), field(&u.machine)))
}

/// `6.18.0-1-amd64` -> (6, 18).
fn kernel_version(release: &str) -> Option<(u32, u32)> {
    let mut parts = release.split(['.', '-', '+']);
    let major = parts.next()?.parse().ok()?;
    let minor = parts.next()?;
    let digits = minor
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(minor.len());
    let minor = minor[..digits].parse().ok()?;
    Some((major, minor))
}

fn check_btf() -> CheckResult {
    const NAME: &str = "btf";
    const PATH: &str = "/sys/kernel/btf/vmlinux";
    match fs::File::open(PATH) {
        Ok(_) => CheckResult::pass(NAME, format!("{PATH} is readable")),
        Err(e) => CheckResult::fail(
            NAME,
            format!("{PATH}: {e}"),
            "use a kernel built with CONFIG_DEBUG_INFO_BTF=y (most distribution kernels are); \
             in a container, mount the host's /sys read-only",
        ),
    }
}

fn check_ringbuf() -> CheckResult {
    const NAME: &str = "ring buffer";
    match create_ringbuf() {
        Ok(()) => CheckResult::pass(NAME, "created a BPF ring buffer map"),
        Err(e) => {
            let fix = match e.raw_os_error() {
                Some(libc::EPERM) => {
                    "creating BPF maps needs root or CAP_BPF: run sonde as root".to_string()
                }
                Some(libc::EINVAL) => format!(
                    "the kernel has no BPF ring buffer; use Linux {}.{} or newer",
                    MIN_KERNEL.0, MIN_KERNEL.1
                ),
                Some(libc::ENOSYS) => {
                    "the kernel has no bpf() syscall (CONFIG_BPF_SYSCALL is off), or a seccomp \
                     profile blocks it: allow bpf for the sonde container"
                        .to_string()
                }
                _ => "check dmesg, the memory cgroup limit and RLIMIT_MEMLOCK".to_string(),
            };
            CheckResult::fail(
                NAME,
                format!("bpf(BPF_MAP_CREATE, RINGBUF) failed: {e}"),
                fix,
            )
        }
    }
}

/// Creates and closes a one-page BPF_MAP_TYPE_RINGBUF map.
fn create_ringbuf() -> std::io::Result<()> {
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_MAP_TYPE_RINGBUF: u32 = 27;
    // SAFETY: sysconf has no memory effects.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    let page = u32::try_from(page)
        .ok()
        .filter(|p| p.is_power_of_two())
        .unwrap_or(4096);
    // The head of `union bpf_attr` for BPF_MAP_CREATE: map_type, key_size,
    // value_size, max_entries, then flags and names, all left zero. The
    // kernel treats the part it is not given as zero.
    let mut attr = [0u32; 12];
    attr[0] = BPF_MAP_TYPE_RINGBUF;
    attr[3] = page;
    // SAFETY: attr is a valid buffer of the size passed.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_mut_ptr(),
            std::mem::size_of_val(&attr) as libc::c_uint,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd is a descriptor we own and close exactly once.
    unsafe { libc::close(fd as libc::c_int) };
    Ok(())
}

fn check_uprobes() -> CheckResult {
    const NAME: &str = "uprobes";
    const PATH: &str = "/sys/bus/event_source/devices/uprobe/type";
    if Path::new(PATH).exists() {
        CheckResult::pass(NAME, format!("{PATH} exists"))
    } else {
        CheckResult::fail(
            NAME,
            format!("{PATH} is missing"),
            "use a kernel built with CONFIG_UPROBE_EVENTS=y; in a container, mount the host's /sys",
        )
    }
}

fn check_tracefs(mounted: Option<&Path>, caps: Option<u64>) -> CheckResult {
    const NAME: &str = "tracefs";
    if let Some(path) = mounted {
        return CheckResult::pass(NAME, format!("mounted at {}", path.display()));
    }
    if is_root() || caps.is_some_and(|c| has_cap(c, CAP_SYS_ADMIN)) {
        CheckResult::pass(
            NAME,
            format!("not mounted; sonde mounts it at {TRACEFS} when it starts"),
        )
    } else {
        CheckResult::fail(
            NAME,
            "not mounted, and sonde lacks CAP_SYS_ADMIN to mount it",
            format!("mount -t tracefs tracefs {TRACEFS} before starting sonde, or run it as root"),
        )
    }
}

fn check_syscall_tracepoints(tracefs: Option<&Path>) -> CheckResult {
    const NAME: &str = "syscall tracepoints";
    let Some(root) = tracefs else {
        return CheckResult::pass(NAME, "checked after sonde mounts tracefs");
    };
    let id = root.join("events/syscalls/sys_enter_read/id");
    match fs::read_to_string(&id) {
        Ok(_) => CheckResult::pass(NAME, format!("{} is readable", id.display())),
        Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => CheckResult::fail(
            NAME,
            format!("{}: {e}", id.display()),
            "run sonde as root (tracefs event files are readable by root only)",
        ),
        // Only the fallback capture path needs them.
        Err(e) if has_socket_tracepoints(root) => CheckResult::pass(
            NAME,
            format!(
                "{}: {e}; not needed, the socket-layer path runs",
                id.display()
            ),
        ),
        Err(e) => CheckResult::fail(
            NAME,
            format!("{}: {e}", id.display()),
            "use a kernel built with CONFIG_FTRACE_SYSCALLS=y",
        ),
    }
}

/// Which capture path `capture.path: auto` (the default) takes here: the
/// socket-layer tracepoints fire only for socket I/O, while syscall
/// tracepoints slow every syscall of every process while attached.
fn check_capture_path(tracefs: Option<&Path>) -> CheckResult {
    const NAME: &str = "capture path";
    let Some(root) = tracefs else {
        return CheckResult::pass(NAME, "checked after sonde mounts tracefs");
    };
    let detail = match probes::Path::choose(CapturePath::Auto, root) {
        Ok(path @ probes::Path::Socket) => format!(
            "{} (capture.path: syscall forces syscall tracepoints)",
            path.describe()
        ),
        _ => format!(
            "{}: this kernel has no sock:sock_send_length and sock:sock_recv_length \
             (they came in 6.3), so every syscall pays while the agent runs",
            probes::Path::Syscall.describe()
        ),
    };
    CheckResult::pass(NAME, detail)
}

fn check_privileges(caps: Option<u64>) -> CheckResult {
    const NAME: &str = "privileges";
    if is_root() {
        return CheckResult::pass(NAME, "running as root");
    }
    let Some(caps) = caps else {
        return CheckResult::fail(
            NAME,
            "not root, and CapEff in /proc/self/status could not be read",
            "run sonde as root",
        );
    };
    let missing: Vec<&str> = [(CAP_BPF, "CAP_BPF"), (CAP_PERFMON, "CAP_PERFMON")]
        .into_iter()
        .filter(|&(bit, _)| !has_cap(caps, bit))
        .map(|(_, name)| name)
        .collect();
    if missing.is_empty() {
        CheckResult::pass(
            NAME,
            format!("not root, but has CAP_BPF and CAP_PERFMON ({caps:#x})"),
        )
    } else {
        CheckResult::fail(
            NAME,
            format!(
                "not root and missing {} (CapEff {caps:#x})",
                missing.join(" and ")
            ),
            "run sonde as root, or grant CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN \
             (e.g. securityContext.capabilities.add in Kubernetes)",
        )
    }
}

fn info_sysctl(name: &'static str, key: &str) -> CheckResult {
    let path = format!("/proc/sys/{}", key.replace('.', "/"));
    let detail = match fs::read_to_string(&path) {
        Ok(v) => format!("{key} = {}", v.trim()),
        Err(e) => format!("{key}: cannot read {path}: {e}"),
    };
    // For information only: the agent runs privileged, where neither matters.
    CheckResult::pass(name, detail)
}

fn is_root() -> bool {
    // SAFETY: geteuid cannot fail.
    unsafe { libc::geteuid() == 0 }
}

fn effective_caps() -> Option<u64> {
    parse_cap_eff(&fs::read_to_string("/proc/self/status").ok()?)
}

/// The CapEff bit mask from /proc/self/status text.
fn parse_cap_eff(status: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix("CapEff:"))
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
}

fn has_cap(mask: u64, bit: u32) -> bool {
    mask & (1u64 << bit) != 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_tracepoints_are_found_by_their_id_files() {
        let root = std::env::temp_dir().join(format!("sonde-check-{}", std::process::id()));
        let _ = fs::remove_dir_all(&root);
        assert!(!has_socket_tracepoints(&root));
        let detail = check_capture_path(Some(&root)).detail;
        assert!(detail.starts_with("syscall tracepoints: "), "{detail}");
        for t in ["sock/sock_send_length", "sock/sock_recv_length"] {
            let dir = root.join("events").join(t);
            fs::create_dir_all(&dir).expect("the event's directory");
            fs::write(dir.join("id"), "1234\n").expect("its id file");
        }
        assert!(has_socket_tracepoints(&root));
        let detail = check_capture_path(Some(&root)).detail;
        assert!(detail.starts_with("socket-layer tracepoints"), "{detail}");
        fs::remove_dir_all(&root).expect("clean up");
    }

    #[test]
    fn cap_eff_is_parsed_from_status() {
        let cases = [
            (
                "Name:\tx\nCapPrm:\t0\nCapEff:\t000001ffffffffff\n",
                Some(0x1ff_ffff_ffff),
            ),
            ("CapEff:\t0000000000000000\n", Some(0)),
            ("CapEff:\t000000c000000000\n", Some(0xc0_0000_0000)),
            ("CapEff:\tnot-hex\n", None),
            ("Name:\tx\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(parse_cap_eff(text), want, "{text:?}");
        }
        let bpf_and_perfmon = 0xc0_0000_0000;
        assert!(has_cap(bpf_and_perfmon, CAP_BPF));
        assert!(has_cap(bpf_and_perfmon, CAP_PERFMON));
        assert!(!has_cap(bpf_and_perfmon, CAP_SYS_ADMIN));
    }

    #[test]
    fn tracefs_mount_is_found_in_mounts() {
        let cases = [
            ("sysfs /sys sysfs rw 0 0\nproc /proc proc rw 0 0\n", None),
            (
                "sysfs /sys sysfs rw 0 0\ntracefs /sys/kernel/tracing tracefs rw,nosuid 0 0\n",
                Some(TRACEFS),
            ),
            (
                "debugfs /sys/kernel/debug debugfs rw 0 0\n\
                 tracefs /sys/kernel/debug/tracing tracefs rw 0 0\n",
                Some(TRACEFS_LEGACY),
            ),
            (
                "tracefs /sys/kernel/debug/tracing tracefs rw 0 0\n\
                 nodev /sys/kernel/tracing tracefs rw 0 0\n",
                Some(TRACEFS),
            ),
            ("tracefs /elsewhere tracefs rw 0 0\n", None),
            ("/dev/sda1 /sys/kernel/tracing ext4 rw 0 0\n", None),
            ("garbage\n\n", None),
        ];
        for (text, want) in cases {
            assert_eq!(tracefs_mount(text), want.map(PathBuf::from), "{text:?}");
        }
    }

    #[test]
    fn kernel_versions() {
        let cases = [
            ("6.18.0", Some((6, 18))),
            ("6.1.0-28-amd64", Some((6, 1))),
            ("5.15.0-1051-azure", Some((5, 15))),
            ("5.8", Some((5, 8))),
            ("4.19.0+", Some((4, 19))),
            ("6.10rc1", Some((6, 10))),
            ("weird", None),
        ];
        for (release, want) in cases {
            assert_eq!(kernel_version(release), want, "{release}");
        }
    }

    #[test]
    fn report_has_every_check_and_fixes_for_failures() {
        let results = run_checks();
        let names: Vec<&str> = results.iter().map(|r| r.name).collect();
        assert_eq!(
            names,
            [
                "kernel",
                "btf",
                "ring buffer",
                "uprobes",
                "tracefs",
                "syscall tracepoints",
                "capture path",
                "privileges",
                "perf_event_paranoid",
                "unprivileged_bpf",
            ]
        );
        for r in &results {
            assert_eq!(r.ok, r.fix.is_none(), "{r:?}");
        }
    }
}
