//! MariaDB on loopback for the integration tests and its real clients: the
//! `mariadb` command-line client and Python's mysql-connector-python.
//!
//! Each server gets a fresh data directory (`mariadb-install-db`), listens on
//! a free TCP port on 127.0.0.1 and on a Unix socket in its temporary
//! directory. Setup (users, databases, tables) goes over the socket as root,
//! before a test starts its agent; the traced clients use TCP as the user
//! [`USER`] with [`PASSWORD`].

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};

use crate::util::{free_port, send_signal, wait_port};

/// The account the traced clients log in with.
pub const USER: &str = "app";
/// Its password: tests check that it never shows up in a span.
pub const PASSWORD: &str = "secret";
/// The database the clients start in.
pub const DATABASE: &str = "shop";
/// A second database the user may switch to.
pub const OTHER_DATABASE: &str = "other";

/// How long a fresh server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(60);

/// A mariadbd process with its own data directory, stopped when dropped.
pub struct MariaDb {
    child: Child,
    pub port: u16,
    dir: tempfile::TempDir,
}

fn binary(env: &str, candidates: &[&str]) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    candidates
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from(candidates[0]))
}

/// Runs a setup command to completion; fails with its output otherwise.
fn setup_step(cmd: &mut Command, what: &str) -> anyhow::Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    if !out.status.success() {
        bail!(
            "{what} failed with {}:\nstdout: {}\nstderr: {}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

impl MariaDb {
    /// `$SONDE_TEST_MARIADBD`, else `/usr/sbin/mariadbd` (or `mysqld`).
    pub fn server_binary() -> PathBuf {
        binary(
            "SONDE_TEST_MARIADBD",
            &["/usr/sbin/mariadbd", "/usr/sbin/mysqld"],
        )
    }

    /// Creates a data directory, starts the server and creates [`DATABASE`],
    /// [`OTHER_DATABASE`] and [`USER`] (all rights on both), then runs
    /// `setup_sql` as root in [`DATABASE`].
    pub fn start(setup_sql: &str) -> anyhow::Result<MariaDb> {
        let server = MariaDb::server_binary();
        if !server.exists() {
            bail!(
                "{} not found: install mariadb-server (apt-get install mariadb-server mariadb-client, or `cargo xtask test`) or set SONDE_TEST_MARIADBD",
                server.display()
            );
        }
        let dir = tempfile::Builder::new()
            .prefix("sonde-mariadb-")
            .tempdir()?;
        let data = dir.path().join("data");
        let install = binary(
            "SONDE_TEST_MARIADB_INSTALL_DB",
            &["/usr/bin/mariadb-install-db", "/usr/bin/mysql_install_db"],
        );
        setup_step(
            Command::new(&install)
                .arg("--no-defaults")
                .arg(format!("--datadir={}", data.display()))
                .args([
                    "--user=root",
                    "--auth-root-authentication-method=normal",
                    "--skip-test-db",
                    "--innodb-log-file-size=8M",
                ]),
            "mariadb-install-db",
        )?;

        let port = free_port();
        let d = dir.path();
        let mut cmd = Command::new(&server);
        cmd.arg("--no-defaults")
            .arg(format!("--datadir={}", data.display()))
            .arg(format!("--socket={}", d.join("sock").display()))
            .arg(format!("--pid-file={}", d.join("mariadbd.pid").display()))
            .arg(format!("--log-error={}", d.join("error.log").display()))
            .arg(format!("--port={port}"))
            .args([
                "--bind-address=127.0.0.1",
                "--user=root",
                "--skip-name-resolve",
                "--innodb-buffer-pool-size=32M",
                "--innodb-log-file-size=8M",
            ])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .with_context(|| format!("cannot start {}", server.display()))?;
        let mut db = MariaDb { child, port, dir };
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Some(status) = db.child.try_wait()? {
                bail!(
                    "mariadbd exited with {status} at start; error.log:\n{}",
                    db.error_log()
                );
            }
            if wait_port(port, Duration::from_millis(100)) && db.root_sql("SELECT 1").is_ok() {
                break;
            }
            if Instant::now() > deadline {
                bail!(
                    "mariadbd did not accept connections on 127.0.0.1:{port} within {}s; error.log:\n{}",
                    START_TIMEOUT.as_secs(),
                    db.error_log()
                );
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        db.root_sql(&format!(
            "CREATE DATABASE {DATABASE}; CREATE DATABASE {OTHER_DATABASE};
             CREATE USER '{USER}'@'%' IDENTIFIED BY '{PASSWORD}';
             GRANT ALL ON {DATABASE}.* TO '{USER}'@'%';
             GRANT ALL ON {OTHER_DATABASE}.* TO '{USER}'@'%';"
        ))?;
        if !setup_sql.trim().is_empty() {
            db.root_sql(setup_sql)?;
        }
        Ok(db)
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn socket(&self) -> PathBuf {
        self.dir.path().join("sock")
    }

    pub fn error_log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("error.log")).unwrap_or_default()
    }

    /// Runs `sql` as root over the Unix socket, in [`DATABASE`] when it
    /// exists; returns the tab-separated output.
    pub fn root_sql(&self, sql: &str) -> anyhow::Result<String> {
        let mut cmd = Command::new(client_binary());
        cmd.arg("--no-defaults")
            .arg(format!("--socket={}", self.socket().display()))
            .args(["-u", "root", "--batch", "-e", sql]);
        if Path::new(&self.dir.path().join("data").join(DATABASE)).is_dir() {
            cmd.arg(DATABASE);
        }
        setup_step(&mut cmd, &format!("root SQL {sql:?}"))
    }
}

impl Drop for MariaDb {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            let _ = send_signal(self.child.id(), libc::SIGTERM);
            let deadline = Instant::now() + Duration::from_secs(15);
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
}

/// `$SONDE_TEST_MARIADB`, else `/usr/bin/mariadb` (or `mysql`).
pub fn client_binary() -> PathBuf {
    binary(
        "SONDE_TEST_MARIADB",
        &["/usr/bin/mariadb", "/usr/bin/mysql"],
    )
}

/// A finished `mariadb` client process.
#[derive(Clone, Debug)]
pub struct CliRun {
    pub pid: u32,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// One `mariadb` process over TCP to 127.0.0.1:`port` as [`USER`], without
/// TLS, in database `db`, reading `sql` (statements ending in `;`) from
/// stdin in batch mode, with `--force` so it goes on after an error (`-e`
/// would stop there). The exit status is returned, not checked.
///
/// Its `USE db` sends `SELECT DATABASE()` (a COM_QUERY) before the
/// COM_INIT_DB.
pub fn cli(port: u16, db: &str, sql: &str) -> anyhow::Result<CliRun> {
    let mut child = Command::new(client_binary())
        .arg("--no-defaults")
        .args(["-h", "127.0.0.1", "-P", &port.to_string()])
        .args(["-u", USER, &format!("-p{PASSWORD}")])
        .args(["--skip-ssl", "--batch", "--force", db])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("cannot start the mariadb client (install mariadb-client)")?;
    let pid = child.id();
    if let Some(mut input) = child.stdin.take() {
        input.write_all(sql.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    Ok(CliRun {
        pid,
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    })
}

/// Opens a mysql-connector-python connection (pure Python, no TLS) as
/// [`USER`] into [`DATABASE`]; the script's `connect()` is shared by the
/// scripts below. Argument 1 is the port.
const PY_CONNECT: &str = r#"
import sys
import mysql.connector

def connect():
    return mysql.connector.connect(
        host="127.0.0.1", port=int(sys.argv[1]), user="app", password="secret",
        database="shop", use_pure=True, ssl_disabled=True, connection_timeout=10)
"#;

/// Server-side prepared statements: one `cursor(prepared=True)` runs
/// `SELECT * FROM items WHERE id = %s` with id 2 (one row) and then id 42
/// (no row). On the wire: the connector's own `SET NAMES ...` and
/// `SET @@session.autocommit = OFF` queries, a COM_PING from `cursor()`,
/// COM_STMT_PREPARE, then for each run COM_STMT_RESET (no span) and
/// COM_STMT_EXECUTE, and at the end COM_STMT_CLOSE and COM_QUIT (no spans).
///
/// The pure-Python connector reads each packet's 4-byte header and its
/// payload with separate `recv` calls, the server greeting included.
/// Prints `rows1 N`, `rows2 N`, `done`.
pub fn py_prepared() -> String {
    format!(
        "{PY_CONNECT}{}",
        r#"
c = connect()
cur = c.cursor(prepared=True)
cur.execute("SELECT * FROM items WHERE id = %s", (2,))
print("rows1 %d" % len(cur.fetchall()), flush=True)
cur.execute("SELECT * FROM items WHERE id = %s", (42,))
print("rows2 %d" % len(cur.fetchall()), flush=True)
cur.close()
c.close()
print("done", flush=True)
"#
    )
}

/// Statements that carry the password as a literal: it must come out of
/// every span as `?`. Before them the connector sends its session setup
/// and a COM_PING (see [`py_prepared`]). Prints `done`.
pub fn py_credentials() -> String {
    format!(
        "{PY_CONNECT}{}",
        r#"
c = connect()
cur = c.cursor()
cur.execute("SET PASSWORD = PASSWORD('secret')")
cur.execute("SELECT COUNT(*) FROM items WHERE name = 'secret'")
cur.fetchall()
cur.execute("SELECT 'secret' AS s")
cur.fetchall()
c.close()
print("done", flush=True)
"#
    )
}

/// A connection used before the test's agent starts: `SELECT 1`, then
/// `waiting` and one line read from stdin, then two queries (one row each).
/// Prints `rows N N` and `done`.
pub fn py_preexisting() -> String {
    format!(
        "{PY_CONNECT}{}",
        r#"
c = connect()
cur = c.cursor()
cur.execute("SELECT 1")
cur.fetchall()
print("waiting", flush=True)
if not sys.stdin.readline():
    sys.exit(3)
cur.execute("SELECT name FROM items WHERE id = 1")
a = len(cur.fetchall())
cur.execute("SELECT COUNT(*) FROM items")
b = len(cur.fetchall())
print("rows %d %d" % (a, b), flush=True)
c.close()
print("done", flush=True)
"#
    )
}
