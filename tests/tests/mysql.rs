//! MySQL protocol end to end against MariaDB: a real mariadbd, real
//! clients (the `mariadb` command-line client, Python's
//! mysql-connector-python in pure-Python mode), the real agent, spans
//! received over OTLP. Needs root (skips otherwise) and a release build of
//! the agent (`cargo build --release -p sonde`).
//!
//! Every COM_QUERY, COM_STMT_PREPARE, COM_STMT_EXECUTE, COM_PING and
//! COM_INIT_DB gives one CLIENT span in the client and one SERVER span in
//! mariadbd; other commands (COM_STMT_RESET, COM_STMT_CLOSE, COM_QUIT) give
//! none.
//!
//! Every test starts its own receiver, server and agent; they share the
//! kernel, so a static mutex runs them one at a time.

use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use sonde_tests::clients::{PyChild, run_python};
use sonde_tests::db::{Ctx, Problems, leaks, must};
use sonde_tests::mariadb::{
    DATABASE, MariaDb, OTHER_DATABASE, PASSWORD, cli, py_credentials, py_preexisting, py_prepared,
};
use sonde_tests::{Kind, ReceivedSpan, require_root};

static SERIAL: Mutex<()> = Mutex::new(());

fn serial() -> MutexGuard<'static, ()> {
    SERIAL
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The `items` table with three rows, for tests that do not create it.
const ITEMS_SQL: &str =
    "CREATE TABLE items (id INT PRIMARY KEY, name TEXT NOT NULL, price DOUBLE NOT NULL);
INSERT INTO items VALUES (1, 'apple', 1.25), (2, 'pear', 2), (3, 'plum', 0.5);";

/// What one SQL span should say.
#[derive(Clone, Debug)]
struct Expect {
    name: String,
    operation: Option<String>,
    collection: Option<String>,
    text: Option<String>,
    /// `db.namespace`; `None` when the attribute must be absent.
    namespace: Option<String>,
    /// `db.system.name`: `mariadb` when the agent saw the server greeting.
    system: &'static str,
    /// `db.response.returned_rows`: `Some(n)` for a result set, `None`
    /// when the attribute must be absent.
    rows: Option<i64>,
    /// `(db.response.status_code, error.type)`.
    error: Option<(String, String)>,
}

/// A statement sent as COM_QUERY: the name is `{operation} {collection}`,
/// or `{operation}` without a collection.
fn query(operation: &str, collection: Option<&str>, text: &str, namespace: &str) -> Expect {
    let name = match collection {
        Some(c) => format!("{operation} {c}"),
        None => operation.to_string(),
    };
    Expect {
        name,
        operation: Some(operation.to_string()),
        collection: collection.map(str::to_string),
        text: Some(text.to_string()),
        namespace: Some(namespace.to_string()),
        system: "mariadb",
        rows: None,
        error: None,
    }
}

impl Expect {
    /// The agent joined the connection after its handshake: it cannot know
    /// the server (`mysql`) or the database.
    fn joined_late(mut self) -> Expect {
        self.system = "mysql";
        self.namespace = None;
        self
    }

    fn rows(mut self, n: i64) -> Expect {
        self.rows = Some(n);
        self
    }

    fn error(mut self, code: &str, sqlstate: &str) -> Expect {
        self.error = Some((code.to_string(), sqlstate.to_string()));
        self
    }
}

/// The attributes every span from these tests carries, on either side.
fn sql_common(p: &mut Problems, s: &ReceivedSpan, kind: Kind, port: u16) {
    p.kind(s, kind);
    p.str(s, "server.address", "127.0.0.1");
    p.int(s, "server.port", port.into());
    p.times(s);
}

fn sql_expect(p: &mut Problems, s: &ReceivedSpan, e: &Expect) {
    p.name(s, &e.name);
    p.opt_str(s, "db.operation.name", e.operation.as_deref());
    p.opt_str(s, "db.collection.name", e.collection.as_deref());
    p.opt_str(s, "db.query.text", e.text.as_deref());
    p.str(s, "db.system.name", e.system);
    p.opt_str(s, "db.namespace", e.namespace.as_deref());
    match e.rows {
        Some(n) => p.int(s, "db.response.returned_rows", n),
        None => p.absent(s, "db.response.returned_rows"),
    }
    p.error(s, e.error.as_ref().map(|(c, t)| (c.as_str(), t.as_str())));
}

/// Selectors for one client process and the server.
struct Sides {
    server_pid: u32,
    client_pid: u32,
}

impl Sides {
    fn server(&self) -> impl Fn(&ReceivedSpan) -> bool + '_ {
        |s| s.pid() == Some(self.server_pid) && s.kind == Kind::Server
    }

    fn client(&self) -> impl Fn(&ReceivedSpan) -> bool + '_ {
        |s| s.pid() == Some(self.client_pid)
    }

    fn relevant(&self) -> impl Fn(&ReceivedSpan) -> bool + '_ {
        |s| s.pid() == Some(self.server_pid) || s.pid() == Some(self.client_pid)
    }
}

/// Waits for `want` on both sides, then checks that both sides hold
/// exactly those spans, in that order.
fn check_both_sides(ctx: &Ctx, db: &MariaDb, sides: &Sides, want: &[Expect], test: &str) {
    let (srv, cli, relevant) = (sides.server(), sides.client(), sides.relevant());
    ctx.wait_counts(&[(want.len(), &srv), (want.len(), &cli)]);
    let servers = ctx.spans(&srv);
    let clients = ctx.spans(&cli);
    let names = |v: &[ReceivedSpan]| v.iter().map(|s| s.name.clone()).collect::<Vec<_>>();
    let want_names: Vec<String> = want.iter().map(|e| e.name.clone()).collect();
    ctx.check(
        names(&servers) == want_names && names(&clients) == want_names,
        &format!(
            "expected spans {want_names:?} on both sides;\n  mariadbd SERVER spans: {:?}\n  client spans: {:?}",
            names(&servers),
            names(&clients)
        ),
        &relevant,
    );
    eprintln!(
        "[{test}] sample spans:\n  {}\n  {}",
        servers[0].full(),
        clients[0].full()
    );
    let mut p = Problems::new();
    for (s, e) in servers.iter().zip(want) {
        sql_common(&mut p, s, Kind::Server, db.port);
        sql_expect(&mut p, s, e);
    }
    for (s, e) in clients.iter().zip(want) {
        sql_common(&mut p, s, Kind::Client, db.port);
        sql_expect(&mut p, s, e);
    }
    ctx.check_problems(p, &relevant);
}

/// The mariadb client: DDL, inserts with string and number literals, a
/// three-row SELECT, an error, and a switch to another database.
#[test]
fn mariadb_cli_statements() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let db = must(MariaDb::start(""));
    let ctx = Ctx::start("");

    let sql = "CREATE TABLE items (id INT PRIMARY KEY AUTO_INCREMENT, name TEXT NOT NULL, price DOUBLE NOT NULL);
INSERT INTO items (name, price) VALUES ('apple', 1.25);
INSERT INTO items (name, price) VALUES ('pear', 2);
INSERT INTO items (name, price) VALUES ('plum', 0.5);
SELECT id, name, price FROM items WHERE price > 0.1 ORDER BY id;
SELECT * FROM missing;
USE other;
SELECT 1;
";
    let run = must(cli(db.port, DATABASE, sql));
    assert!(
        run.stdout.contains("3\tplum\t0.5") && run.stderr.contains("ERROR 1146 (42S02)"),
        "mariadb client output: {run:?}\nserver error.log:\n{}",
        db.error_log()
    );

    let (shop, other) = (DATABASE, OTHER_DATABASE);
    let insert = "INSERT INTO items (name, price) VALUES (?, ?)";
    let want = vec![
        query(
            "CREATE TABLE",
            Some("items"),
            "CREATE TABLE items (id INT PRIMARY KEY AUTO_INCREMENT, name TEXT NOT NULL, price DOUBLE NOT NULL)",
            shop,
        ),
        query("INSERT", Some("items"), insert, shop),
        query("INSERT", Some("items"), insert, shop),
        query("INSERT", Some("items"), insert, shop),
        query(
            "SELECT",
            Some("items"),
            "SELECT id, name, price FROM items WHERE price > ? ORDER BY id",
            shop,
        )
        .rows(3),
        query("SELECT", Some("missing"), "SELECT * FROM missing", shop).error("1146", "42S02"),
        // The client's `USE` asks for the current database first.
        query("SELECT", None, "SELECT DATABASE()", shop).rows(1),
        // COM_INIT_DB: the span is in the database it switches to.
        init_db(other),
        query("SELECT", None, "SELECT ?", other).rows(1),
    ];
    let sides = Sides {
        server_pid: db.pid(),
        client_pid: run.pid,
    };
    check_both_sides(&ctx, &db, &sides, &want, "mariadb_cli_statements");
    ctx.stop();
}

/// The span for a COM_INIT_DB that switches to `db`.
fn init_db(db: &str) -> Expect {
    Expect {
        name: "USE".to_string(),
        operation: Some("USE".to_string()),
        collection: None,
        text: None,
        namespace: Some(db.to_string()),
        system: "mariadb",
        rows: None,
        error: None,
    }
}

/// The span for a COM_PING.
fn ping(db: &str) -> Expect {
    Expect {
        name: "PING".to_string(),
        operation: Some("PING".to_string()),
        collection: None,
        text: None,
        namespace: Some(db.to_string()),
        system: "mariadb",
        rows: None,
        error: None,
    }
}

/// A server-side prepared statement run twice: one PREPARE span and two
/// EXECUTE spans, all with the statement's text, the EXECUTE spans named
/// after the statement and with their own row counts.
#[test]
fn mysql_connector_prepared() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let db = must(MariaDb::start(ITEMS_SQL));
    let ctx = Ctx::start("");

    let run = must(run_python(&py_prepared(), &[db.port.to_string()]));
    assert!(
        run.value("rows1") == Some("1") && run.value("rows2") == Some("0"),
        "python client: {run:?}"
    );

    let shop = DATABASE;
    let stmt = "SELECT * FROM items WHERE id = ?";
    let want = vec![
        // The connector's own session setup.
        query("SET", None, "SET NAMES ? COLLATE ?", shop),
        query("SET", None, "SET @@session.autocommit = OFF", shop),
        // `cursor()` checks the connection with COM_PING.
        ping(shop),
        // COM_STMT_PREPARE: its own operation, the statement's table.
        query("PREPARE", Some("items"), stmt, shop),
        // COM_STMT_EXECUTE: named after the statement it runs.
        query("SELECT", Some("items"), stmt, shop).rows(1),
        query("SELECT", Some("items"), stmt, shop).rows(0),
    ];
    let sides = Sides {
        server_pid: db.pid(),
        client_pid: run.pid,
    };
    check_both_sides(&ctx, &db, &sides, &want, "mysql_connector_prepared");
    ctx.stop();
}

/// SQL for a 5000-row table of about 200 bytes a row (1 MB in all).
const BIG_SQL: &str = "CREATE TABLE big (id INT PRIMARY KEY, pad CHAR(200) NOT NULL);
INSERT INTO big SELECT seq, REPEAT('x', 200) FROM seq_1_to_5000;";

/// Runs the big SELECT and a small query after it; returns the client run.
fn big_then_small(db: &MariaDb) -> sonde_tests::mariadb::CliRun {
    let run = must(cli(
        db.port,
        DATABASE,
        "SELECT id, pad FROM big;\nSELECT COUNT(*) FROM big;\n",
    ));
    let lines = run.stdout.lines().count();
    // Header and 5000 rows, then header and the count.
    assert!(
        lines == 5003 && run.stdout.ends_with("COUNT(*)\n5000\n"),
        "mariadb client printed {lines} lines; stderr {:?}; tail {:?}",
        run.stderr,
        &run.stdout[run.stdout.len().saturating_sub(200)..]
    );
    run
}

/// A 1 MB result set, far more than the parser may buffer, with every byte
/// captured (`capture.bytes` at its maximum): the row count is exact and
/// the next query is paired with its own response.
#[test]
fn large_result_set_counted() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let db = must(MariaDb::start(BIG_SQL));
    let ctx = Ctx::start("capture:\n  bytes: 16384\n");
    let run = big_then_small(&db);

    let shop = DATABASE;
    let want = vec![
        query("SELECT", Some("big"), "SELECT id, pad FROM big", shop).rows(5000),
        query("SELECT", Some("big"), "SELECT COUNT(*) FROM big", shop).rows(1),
    ];
    let sides = Sides {
        server_pid: db.pid(),
        client_pid: run.pid,
    };
    check_both_sides(&ctx, &db, &sides, &want, "large_result_set_counted");
    ctx.stop();
}

/// The same 1 MB result set with the default 1 KiB captured per syscall:
/// most of it is gaps. The big query's span may leave the row count out
/// (it cannot be known) but must not guess one, and the next query is
/// still paired with its own response.
#[test]
fn large_result_set_with_gaps() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let db = must(MariaDb::start(BIG_SQL));
    let ctx = Ctx::start("");
    let run = big_then_small(&db);

    let sides = Sides {
        server_pid: db.pid(),
        client_pid: run.pid,
    };
    let (srv, cli, relevant) = (sides.server(), sides.client(), sides.relevant());
    ctx.wait_counts(&[(2, &srv), (2, &cli)]);
    let servers = ctx.spans(&srv);
    let clients = ctx.spans(&cli);
    ctx.check(
        servers.len() == 2 && clients.len() == 2,
        &format!(
            "expected 2 spans per side, got {} mariadbd SERVER and {} client",
            servers.len(),
            clients.len()
        ),
        &relevant,
    );
    let mut p = Problems::new();
    for (side, kind) in [(&servers, Kind::Server), (&clients, Kind::Client)] {
        let (big, small) = (&side[0], &side[1]);
        eprintln!(
            "[large_result_set_with_gaps] {}\n  {}",
            sonde_tests::db::line(big),
            sonde_tests::db::line(small)
        );
        for s in [big, small] {
            sql_common(&mut p, s, kind, db.port);
        }
        p.name(big, "SELECT big");
        p.str(big, "db.system.name", "mariadb");
        p.str(big, "db.query.text", "SELECT id, pad FROM big");
        p.error(big, None);
        if let Some(rows) = big.attr("db.response.returned_rows")
            && rows.as_int() != Some(5000)
        {
            p.push(
                big,
                format!("db.response.returned_rows {rows} is a guess (5000, or no attribute)"),
            );
        }
        sql_expect(
            &mut p,
            small,
            &query("SELECT", Some("big"), "SELECT COUNT(*) FROM big", DATABASE).rows(1),
        );
    }
    ctx.check_problems(p, &relevant);
    ctx.stop();
}

/// The password never leaves the agent: not from the login of either
/// client, not from statements that carry it as a literal, and not from a
/// server error message that quotes it back.
#[test]
fn credentials_never_exported() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let db = must(MariaDb::start(ITEMS_SQL));
    let ctx = Ctx::start("");

    let py = must(run_python(&py_credentials(), &[db.port.to_string()]));
    assert!(
        py.stdout.iter().any(|l| l == "done"),
        "python client: {py:?}"
    );
    let run = must(cli(
        db.port,
        DATABASE,
        "SELECT name FROM items WHERE name <> 'secret';\nSELEC 'secret';\n",
    ));
    assert!(
        run.stderr.contains("ERROR 1064 (42000)"),
        "mariadb client output: {run:?}"
    );

    let server_pid = db.pid();
    let from_py = |s: &ReceivedSpan| s.pid() == Some(py.pid);
    let from_cli = |s: &ReceivedSpan| s.pid() == Some(run.pid);
    let srv = |s: &ReceivedSpan| s.pid() == Some(server_pid) && s.kind == Kind::Server;
    let relevant = |s: &ReceivedSpan| from_py(s) || from_cli(s) || s.pid() == Some(server_pid);
    // Python: SET NAMES, SET autocommit, PING and three statements; the
    // client: two statements.
    ctx.wait_counts(&[(6, &from_py), (2, &from_cli), (8, &srv)]);
    let mut p = Problems::new();
    let py_spans = ctx.spans(from_py);
    let cli_spans = ctx.spans(from_cli);
    let texts = |v: &[ReceivedSpan]| {
        v.iter()
            .map(|s| s.attr_str("db.query.text").unwrap_or("<none>").to_string())
            .collect::<Vec<_>>()
    };
    let want_py = [
        "SET NAMES ? COLLATE ?",
        "SET @@session.autocommit = OFF",
        // COM_PING from `cursor()`: no text.
        "<none>",
        "SET PASSWORD = PASSWORD(?)",
        "SELECT COUNT(*) FROM items WHERE name = ?",
        "SELECT ? AS s",
    ];
    if texts(&py_spans) != want_py {
        p.0.push(format!(
            "python spans' texts {:?}, expected {want_py:?}",
            texts(&py_spans)
        ));
    }
    if cli_spans.len() != 2
        || cli_spans[0].attr_str("db.query.text") != Some("SELECT name FROM items WHERE name <> ?")
    {
        p.0.push(format!(
            "mariadb client spans' texts {:?}, expected the SELECT and the syntax error",
            texts(&cli_spans)
        ));
    }
    if let Some(bad) = cli_spans.get(1) {
        p.error(bad, Some(("1064", "42000")));
    }
    // The agent was there from the start of both connections.
    for s in ctx.spans(relevant) {
        let kind = if srv(&s) { Kind::Server } else { Kind::Client };
        sql_common(&mut p, &s, kind, db.port);
        p.str(&s, "db.system.name", "mariadb");
        p.str(&s, "db.namespace", DATABASE);
    }
    let all = ctx.rx.spans();
    p.extend(leaks(&all, PASSWORD));
    eprintln!(
        "[credentials_never_exported] searched {} spans for {PASSWORD:?}",
        all.len()
    );
    ctx.check_problems(p, &relevant);
    ctx.stop();
}

/// A connection that was open (and used) before the agent started: its
/// later queries are traced on both sides, as `mysql` (the agent never saw
/// the greeting that names the server) and without a database (nor the
/// handshake that chose it).
#[test]
fn preexisting_connection() {
    let _serial = serial();
    if !require_root() {
        return;
    }
    let db = must(MariaDb::start(ITEMS_SQL));
    let mut client = must(PyChild::spawn(&py_preexisting(), &[db.port.to_string()]));
    must(client.wait_line("waiting", Duration::from_secs(20)));
    let ctx = Ctx::start("");
    must(client.send_line("go"));
    let pid = client.pid();
    let out = must(client.finish(Duration::from_secs(20)));
    assert!(
        out.iter().any(|l| l == "rows 1 1"),
        "python client output {out:?}"
    );

    let want = vec![
        query(
            "SELECT",
            Some("items"),
            "SELECT name FROM items WHERE id = ?",
            DATABASE,
        )
        .rows(1)
        .joined_late(),
        query(
            "SELECT",
            Some("items"),
            "SELECT COUNT(*) FROM items",
            DATABASE,
        )
        .rows(1)
        .joined_late(),
    ];
    let sides = Sides {
        server_pid: db.pid(),
        client_pid: pid,
    };
    check_both_sides(&ctx, &db, &sides, &want, "preexisting_connection");
    ctx.stop();
}
