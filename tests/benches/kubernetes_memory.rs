//! What pod metadata costs the agent in memory: the real release agent
//! watches the local API server (tests/k8s/apiserver.py, the real
//! list/watch protocol), pointed at it by a kubeconfig and `NODE_NAME` as
//! a DaemonSet's agent would be, and its memory is read from
//! `/proc/PID/status` and `/proc/PID/smaps_rollup`:
//!
//! 1. synced, with no pod on its node;
//! 2. after as many pods are added on another node (the field selector
//!    keeps them out of its watch: they should cost nothing);
//! 3. after that many pods are added on its node, through its watch;
//! 4. a new agent started with those pods there, which lists them.
//!
//! Pods are what the API server stores: labels, annotations, an owner
//! reference, one to three containers and their statuses, and the
//! `managedFields` the server adds on create (the agent strips it all to
//! what labels use). Each figure is read once the agent is settled (its
//! chores run, its CPU time and RSS flat for two seconds), as the median
//! of five readings. A control agent with its metadata off then goes
//! through the same steps and traffic (the API server runs on this host,
//! so the agent traces it): the growth with metadata minus the control's
//! is what the metadata costs, printed beside both.
//!
//! Needs root and the release agent: `cargo xtask bench kubernetes`, or,
//! after `cargo build --release -p sonde`, as root
//! `cargo bench -p sonde-tests --bench kubernetes_memory -- [--pods N] [--rounds N] [--no-control]`.

use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use serde_json::Value;
use sonde_tests::apiserver::{ApiServer, container_id, job, namespace, pod, replicaset, uid_for};
use sonde_tests::{Agent, Receiver, require_root};

/// The agent's node, and the node of the pods it must not watch.
const NODE: &str = "node-bench";
const OTHER_NODE: &str = "node-elsewhere";
/// Namespaces the pods are spread over.
const NAMESPACES: usize = 50;
/// Pods per workload.
const PODS_PER_APP: usize = 10;
/// Objects per bulk request to the API server.
const BULK: usize = 500;
/// How long a step may take to be seen and settle.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// Time for the agent's once-every-10-s chores (pages handed back to the
/// system among them) to run after a step's traffic.
const CHORES: Duration = Duration::from_secs(11);

const USAGE: &str = "usage: kubernetes_memory [--pods N] [--rounds N] [--no-control]";

fn main() -> anyhow::Result<()> {
    let (pods, rounds, control) = parse_args()?;
    if !require_root() {
        return Ok(());
    }
    let mut all = Vec::new();
    for round in 1..=rounds {
        println!("round {round} of {rounds}: {pods} pods per node");
        let with = run_round(pods, true)?;
        print_table("the agent with Kubernetes metadata", &with);
        let without = if control {
            let steps = run_round(pods, false)?;
            print_table(
                "the control: the same agent, steps and traffic, metadata off",
                &steps,
            );
            print_difference(&with, &steps);
            Some(steps)
        } else {
            None
        };
        all.push((with, without));
    }
    if rounds > 1 {
        println!("median of {rounds} rounds, growth over the first row (MiB):");
        for (i, (name, _)) in all[0].0.iter().enumerate() {
            let med = |f: &dyn Fn(&Round) -> Option<f64>| {
                let mut v: Vec<f64> = all.iter().filter_map(f).collect();
                (!v.is_empty()).then(|| median(&mut v))
            };
            let with_rss = med(&|(w, _)| Some(growth(w, i, |m| m.rss)));
            let with_private = med(&|(w, _)| Some(growth(w, i, |m| m.private)));
            let diff_rss =
                med(&|(w, c)| Some(growth(w, i, |m| m.rss) - growth(c.as_ref()?, i, |m| m.rss)));
            let diff_private = med(&|(w, c)| {
                Some(growth(w, i, |m| m.private) - growth(c.as_ref()?, i, |m| m.private))
            });
            let show = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:+.1}"));
            println!(
                "  {name:<40} with metadata: VmRSS {:>6} Private {:>6}; minus the control: VmRSS {:>6} Private {:>6}",
                show(with_rss),
                show(with_private),
                show(diff_rss),
                show(diff_private)
            );
        }
    }
    Ok(())
}

/// Pods per node, rounds, and whether the control runs.
fn parse_args() -> anyhow::Result<(usize, usize, bool)> {
    let (mut pods, mut rounds, mut control) = (10_000, 1, true);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        let slot = match arg.as_str() {
            "--pods" => &mut pods,
            "--rounds" => &mut rounds,
            "--no-control" => {
                control = false;
                continue;
            }
            // cargo bench passes --bench.
            "--bench" => continue,
            _ => bail!("unknown argument `{arg}`\n{USAGE}"),
        };
        *slot = args
            .next()
            .and_then(|v| v.parse().ok())
            .filter(|n| *n > 0)
            .with_context(|| format!("{arg} needs a positive number\n{USAGE}"))?;
    }
    Ok((pods, rounds, control))
}

/// The agent's memory, KiB.
#[derive(Clone, Copy, Debug, Default)]
struct Memory {
    rss: u64,
    rss_anon: u64,
    hwm: u64,
    pss: u64,
    private: u64,
}

fn read_memory(pid: u32) -> anyhow::Result<Memory> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let rollup = std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))?;
    let field = |text: &str, name: &str| -> u64 {
        text.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    Ok(Memory {
        rss: field(&status, "VmRSS:"),
        rss_anon: field(&status, "RssAnon:"),
        hwm: field(&status, "VmHWM:"),
        pss: field(&rollup, "Pss:"),
        private: field(&rollup, "Private_Clean:") + field(&rollup, "Private_Dirty:"),
    })
}

/// User and system CPU time of `pid`, in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name, which may hold spaces: utime and
    // stime are the 12th and 13th.
    let rest = stat.rfind(')').map_or("", |i| &stat[i + 1..]);
    let f: Vec<u64> = rest
        .split_whitespace()
        .skip(11)
        .take(2)
        .filter_map(|v| v.parse().ok())
        .collect();
    f.iter().sum()
}

/// Waits for the agent's chores, then until it is quiet (under 5 ticks
/// of CPU and 256 KiB of RSS change over two seconds), then reads its
/// memory five times.
fn settled_memory(pid: u32) -> anyhow::Result<Memory> {
    std::thread::sleep(CHORES);
    let deadline = Instant::now() + STEP_TIMEOUT;
    let mut last = (cpu_ticks(pid), read_memory(pid)?.rss);
    loop {
        std::thread::sleep(Duration::from_secs(2));
        let now = (cpu_ticks(pid), read_memory(pid)?.rss);
        if now.0 - last.0 < 5 && now.1.abs_diff(last.1) < 256 {
            break;
        }
        if Instant::now() > deadline {
            println!("  (the agent did not settle; reading anyway)");
            break;
        }
        last = now;
    }
    let mut readings = Vec::new();
    for _ in 0..5 {
        readings.push(read_memory(pid)?);
        std::thread::sleep(Duration::from_millis(500));
    }
    let med = |f: fn(&Memory) -> u64| {
        let mut v: Vec<u64> = readings.iter().map(f).collect();
        v.sort_unstable();
        v[v.len() / 2]
    };
    Ok(Memory {
        rss: med(|m| m.rss),
        rss_anon: med(|m| m.rss_anon),
        hwm: med(|m| m.hwm),
        pss: med(|m| m.pss),
        private: med(|m| m.private),
    })
}

/// Pods on one node and the ReplicaSets and Jobs that own some of them.
struct Objects {
    owners: Vec<Value>,
    replicasets: usize,
    pods: Vec<Value>,
}

/// `count` pods on `node`, ten per workload: most workloads are
/// Deployments, some StatefulSets, DaemonSets or CronJobs.
fn objects(prefix: &str, node: &str, count: usize) -> Objects {
    let mut owners = Vec::new();
    let mut replicasets = 0;
    let mut pods = Vec::with_capacity(count);
    let containers = ["app", "istio-proxy", "log-shipper"];
    for a in 0..count.div_ceil(PODS_PER_APP) {
        let app = format!("{prefix}-{a}");
        let ns = format!("team-{}", a % NAMESPACES);
        let hash = format!("{:x}", 0x5_d4f8_c7b9 + a * 7_919);
        let (kind, owner_name) = match a % 20 {
            0..16 => ("ReplicaSet", format!("{app}-{hash}")),
            16 | 17 => ("StatefulSet", app.clone()),
            18 => ("DaemonSet", app.clone()),
            _ => ("Job", format!("{app}-29012345")),
        };
        let owner_uid = uid_for(&format!("{kind}/{ns}/{owner_name}"));
        match kind {
            "ReplicaSet" => {
                owners.push(replicaset(&ns, &owner_name, &owner_uid, Some(&app)));
                replicasets += 1;
            }
            "Job" => owners.push(job(&ns, &owner_name, &owner_uid, Some(&app))),
            _ => {}
        }
        for p in 0..PODS_PER_APP.min(count - a * PODS_PER_APP) {
            let name = match kind {
                "StatefulSet" => format!("{app}-{p}"),
                _ => format!("{owner_name}-{:05x}", (a * 31 + p * 7919) % 0xfffff),
            };
            let uid = uid_for(&format!("pod/{ns}/{name}"));
            let version = format!("1.{}.{}", a % 7, p % 3);
            let checksum = container_id(&format!("config/{app}"));
            let mut labels = vec![
                ("app.kubernetes.io/name", app.as_str()),
                ("app.kubernetes.io/instance", app.as_str()),
                ("app.kubernetes.io/version", version.as_str()),
                ("app.kubernetes.io/managed-by", "Helm"),
                ("helm.sh/chart", "service-2.14.1"),
                ("team", ns.as_str()),
            ];
            if kind == "ReplicaSet" {
                labels.push(("pod-template-hash", hash.as_str()));
            }
            let mut annotations = vec![
                ("checksum/config", checksum.as_str()),
                ("prometheus.io/scrape", "true"),
                ("prometheus.io/port", "9090"),
                ("kubectl.kubernetes.io/restartedAt", "2025-01-01T00:00:00Z"),
            ];
            if a % 5 == 0 {
                annotations.push(("resource.opentelemetry.io/service.name", app.as_str()));
            }
            let ids: Vec<(String, String)> = containers[..1 + (a + p) % 3]
                .iter()
                .map(|c| ((*c).to_owned(), container_id(&format!("{uid}/{c}"))))
                .collect();
            let ids: Vec<(&str, &str)> =
                ids.iter().map(|(c, i)| (c.as_str(), i.as_str())).collect();
            pods.push(pod(
                &ns,
                &name,
                &uid,
                node,
                &labels,
                &annotations,
                Some((kind, &owner_name, &owner_uid)),
                &ids,
            ));
        }
    }
    Objects {
        owners,
        replicasets,
        pods,
    }
}

/// Adds `objs` in bulk requests; returns the resourceVersion after them.
fn add(api: &ApiServer, objs: &[Value]) -> anyhow::Result<u64> {
    let mut rv = 0;
    for chunk in objs.chunks(BULK) {
        rv = api.bulk(chunk)?;
    }
    Ok(rv)
}

/// Waits until the agent's pod watch has been sent every change up to
/// `rv` and the namespace watch is open.
fn wait_watched(api: &ApiServer, rv: u64) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let stats = api.stats()?;
        let watches = stats["watches"].as_array().cloned().unwrap_or_default();
        let ours = |w: &&Value| {
            w["resource"] == "pods" && w["query"].as_str().is_some_and(|q| q.contains(NODE))
        };
        let pods_sent = watches
            .iter()
            .filter(ours)
            .any(|w| w["sent_resource_version"].as_u64().is_some_and(|s| s >= rv));
        let namespaces = watches.iter().any(|w| w["resource"] == "namespaces");
        if pods_sent && namespaces {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agent's watches did not reach resourceVersion {rv}: {watches:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Waits until the API server has answered `n` GETs of ReplicaSets: the
/// agent asks for each new one's owner as it takes in its first pod.
fn wait_replicaset_gets(api: &ApiServer, n: usize) -> anyhow::Result<()> {
    let deadline = Instant::now() + STEP_TIMEOUT;
    loop {
        let stats = api.stats()?;
        let gets = stats["requests_by_resource"]["replicasets"]["get"]
            .as_u64()
            .unwrap_or(0);
        if gets as usize >= n {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("the agent asked for {gets} of {n} ReplicaSets");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Starts the agent, as the agent of [`NODE`] watching `api` when `k8s`,
/// waits until its pod watch has every change up to now, and gives it
/// some traffic to trace: an agent's first spans and exports grow it by a
/// few MiB once, whatever they are, and the baseline must not count that.
fn start_agent(
    rx: &Receiver,
    api: &ApiServer,
    kubeconfig: &str,
    k8s: bool,
) -> anyhow::Result<Agent> {
    let agent = Agent::start_with_env(
        &rx.grpc_endpoint(),
        "grpc",
        // Metrics off: the API server runs on this host, so its answers to
        // the agent are traced too, and their distinct paths (a GET per
        // ReplicaSet) would each make series that no cluster's agent has.
        &format!(
            "kubernetes:\n  enabled: {k8s}\n  pod_labels: [team]\nmetrics:\n  enabled: false\n"
        ),
        &[],
        &[("KUBECONFIG", kubeconfig), ("NODE_NAME", NODE)],
    )?;
    if k8s {
        wait_watched(api, api.resource_version()?)?;
    }
    for _ in 0..20 {
        api.request("GET", "/version", None)?;
    }
    Ok(agent)
}

type Steps = Vec<(&'static str, Memory)>;
/// A round's steps with metadata, and the control's.
type Round = (Steps, Option<Steps>);

/// One agent through the steps (and a second one for the last), with its
/// Kubernetes metadata on or off.
fn run_round(count: usize, k8s: bool) -> anyhow::Result<Steps> {
    let api = ApiServer::start()?;
    let dir = tempfile::Builder::new()
        .prefix("sonde-k8s-bench-")
        .tempdir()?;
    let kubeconfig = api
        .write_kubeconfig(dir.path())?
        .to_str()
        .map(str::to_owned)
        .context("a kubeconfig path that is not UTF-8")?;
    let namespaces: Vec<Value> = (0..NAMESPACES)
        .map(|n| namespace(&format!("team-{n}"), &[("team", &format!("team-{n}"))]))
        .collect();
    add(&api, &namespaces)?;
    let rx = Receiver::start()?;
    let mut steps = Steps::new();

    let agent = start_agent(&rx, &api, &kubeconfig, k8s)?;
    steps.push(("synced, no pod on its node", settled_memory(agent.pid())?));

    let elsewhere = objects("far", OTHER_NODE, count);
    add(&api, &elsewhere.owners)?;
    let rv = add(&api, &elsewhere.pods)?;
    if k8s {
        wait_watched(&api, rv)?;
    }
    steps.push(("pods added on another node", settled_memory(agent.pid())?));

    let here = objects("svc", NODE, count);
    add(&api, &here.owners)?;
    api.reset_stats()?;
    let rv = add(&api, &here.pods)?;
    if k8s {
        wait_watched(&api, rv)?;
        wait_replicaset_gets(&api, here.replicasets)?;
    }
    steps.push((
        "pods added on its node (watched)",
        settled_memory(agent.pid())?,
    ));
    let one = api.get_json(&format!(
        "/api/v1/namespaces/team-0/pods/{}",
        here.pods[0]["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
    ))?;
    agent.stop()?;

    api.reset_stats()?;
    let agent = start_agent(&rx, &api, &kubeconfig, k8s)?;
    if k8s {
        wait_replicaset_gets(&api, here.replicasets)?;
    }
    steps.push(("a new agent that listed them", settled_memory(agent.pid())?));
    let peak = read_memory(agent.pid())?.hwm;
    agent.stop()?;
    if k8s {
        println!(
            "  {count} pods on each node, {} workloads, {} ReplicaSets; one pod as served: {} bytes of JSON, \
             {} managedFields entries; the listing agent's peak VmRSS {:.1} MiB",
            count.div_ceil(PODS_PER_APP),
            here.replicasets,
            serde_json::to_vec(&one)?.len(),
            one["metadata"]["managedFields"]
                .as_array()
                .map_or(0, Vec::len),
            mib(peak)
        );
    }
    Ok(steps)
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

/// Step `i`'s growth over the first step, MiB.
fn growth(steps: &Steps, i: usize, f: fn(&Memory) -> u64) -> f64 {
    mib(f(&steps[i].1)) - mib(f(&steps[0].1))
}

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn print_table(title: &str, steps: &Steps) {
    println!(
        "  {:<40} {:>15} {:>15} {:>15} {:>15} {:>8}",
        format!("{title} (MiB; growth over the first row)"),
        "VmRSS",
        "RssAnon",
        "Pss",
        "Private",
        "VmHWM"
    );
    for (i, (name, m)) in steps.iter().enumerate() {
        let cell =
            |f: fn(&Memory) -> u64| format!("{:6.1} ({:+5.1})", mib(f(m)), growth(steps, i, f));
        println!(
            "  {name:<40} {:>15} {:>15} {:>15} {:>15} {:>8.1}",
            cell(|m| m.rss),
            cell(|m| m.rss_anon),
            cell(|m| m.pss),
            cell(|m| m.private),
            mib(m.hwm)
        );
    }
}

/// What the metadata itself grew the agent by: its growth minus the
/// control's, step by step.
fn print_difference(with: &Steps, control: &Steps) {
    println!("  growth with metadata minus the control's (MiB)");
    for (i, (name, _)) in with.iter().enumerate() {
        let d = |f: fn(&Memory) -> u64| growth(with, i, f) - growth(control, i, f);
        println!(
            "  {name:<40} VmRSS {:+5.1}  RssAnon {:+5.1}  Pss {:+5.1}  Private {:+5.1}",
            d(|m| m.rss),
            d(|m| m.rss_anon),
            d(|m| m.pss),
            d(|m| m.private)
        );
    }
}
