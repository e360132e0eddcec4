//! The operator docs run as written: every `fenceflake` (and `curl`) line of the code blocks
//! of docs/operations.md, docs/failure-modes.md and the README's `ctl` section is executed
//! against real local clusters, procedure by procedure in the order written, with the
//! placeholders (`H1:2379`, `/backups/`, …) replaced by loopback addresses and temp dirs.
//! What the prose says to do between commands (start a node, lose a disk, restart under a
//! supervisor) each test does itself, at that point. Other shell lines are skipped by pattern
//! with a reason (`runbook::SKIPPED`), and a line that is neither run nor skipped fails
//! `every_doc_command_is_run_or_skipped`.

use std::collections::BTreeSet;
use std::time::Duration;

use fenceflake_proto::tls::Role;
use fenceflake_proto::v1 as pb;
use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::free_port;
use fenceflake_tests::runbook::{extract, sh, workspace_root, Class, DocLine, Ran, Runbook, Vars};
use fenceflake_tests::worker::WorkerProcess;

const OPS: &str = "docs/operations.md";
const FAILURE_MODES: &str = "docs/failure-modes.md";
const README: &str = "README.md";
/// Only this section of the README is an operator runbook.
const README_CTL: &str = "Operate it with `ctl`";

/// Which test runs the commands of which doc section: (doc, heading, test). A section's
/// commands run in the order written; sections of one test in this order (the docs' order).
const PROCEDURES: &[(&str, &str, &str)] = &[
    (OPS, "Bootstrap a cluster", "bootstrap_then_rolling_upgrade"),
    (OPS, "Rolling upgrade with no worker parked", "bootstrap_then_rolling_upgrade"),
    (OPS, "Add a node", "membership"),
    (OPS, "Add a node in two steps: learner, then voter", "membership"),
    (OPS, "Remove a node", "membership"),
    (OPS, "Remove or replace the current leader", "membership"),
    (OPS, "Backup and restore", "backup_and_restore"),
    (FAILURE_MODES, "Failure modes: detection, alerts and what to do", "failure_modes"),
    (FAILURE_MODES, "Two workers hold the same worker ID", "failure_modes"),
    (FAILURE_MODES, "Canary hit: two holders minted with one ID", "failure_modes"),
    (FAILURE_MODES, "Duplicate claim: two manifests with one worker ID", "failure_modes"),
    (FAILURE_MODES, "Registry outage", "failure_modes"),
    (FAILURE_MODES, "Registry leader loss", "failure_modes"),
    (FAILURE_MODES, "Registry member loss or replacement", "failure_modes"),
    (FAILURE_MODES, "Worker IDs exhausted", "failure_modes"),
    (README, README_CTL, "readme_ctl_section"),
];

const WAIT: Duration = Duration::from_secs(30);

/// Every shell line of the three docs (the README's `ctl` section only).
fn all_lines() -> Vec<DocLine> {
    let mut lines = extract(OPS, None);
    lines.extend(extract(FAILURE_MODES, None));
    lines.extend(extract(README, Some(README_CTL)));
    lines
}

/// The lines of the sections `test` runs, in [`PROCEDURES`] order.
fn procedure(test: &str) -> Vec<DocLine> {
    let all = all_lines();
    let mut lines = Vec::new();
    for (doc, section, _) in PROCEDURES.iter().filter(|p| p.2 == test) {
        lines.extend(all.iter().filter(|l| l.doc == *doc && l.section == *section).cloned());
    }
    assert!(!lines.is_empty(), "no commands for {test}");
    lines
}

/// Goal: no documented command escapes: each shell line is run by the test its section is
/// assigned to (which fails unless it ran them all), or skipped by a pattern with a reason.
/// Also: the table names real sections and real tests of this file.
#[test]
fn every_doc_command_is_run_or_skipped() {
    let source = std::fs::read_to_string(workspace_root().join("tests/tests/t47_runbooks.rs")).expect("read myself");
    let (mut run, mut skipped, mut problems) = (0, 0, Vec::new());
    for line in all_lines() {
        match line.class() {
            None => problems.push(format!("{}: neither run nor skipped: {}", line.at(), line.text)),
            Some(Class::Skipped(why)) => {
                skipped += 1;
                println!("skipped {}: {} ({why})", line.at(), line.text);
            }
            Some(Class::Run | Class::Daemon) => {
                run += 1;
                let assigned = PROCEDURES.iter().any(|(doc, section, _)| line.doc == *doc && line.section == *section);
                if !assigned {
                    problems.push(format!(
                        "{}: section `{}` is run by no test: {}",
                        line.at(),
                        line.section,
                        line.text
                    ));
                }
            }
        }
    }
    for (doc, section, test) in PROCEDURES {
        assert!(source.contains(&format!("async fn {test}(")), "PROCEDURES names {test}, which is no test here");
        let has = all_lines().iter().any(|l| l.doc == *doc && l.section == *section && l.runs());
        assert!(has, "PROCEDURES names `{section}` of {doc}: no such section with commands");
    }
    println!("{run} documented commands run, {skipped} skipped");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// Goal: every documented command parses (no clap usage error, exit status 2), checked fast
/// against addresses where nothing listens, before the procedures run them for real.
#[test]
fn every_doc_command_parses() {
    let mut vars = Vars::new();
    let dead = format!("127.0.0.1:{}", free_port());
    for n in 1..=9 {
        for port in [2379, 2380, 2381] {
            vars.set(&format!("H{n}:{port}"), &dead);
            vars.set(&format!("NEW{n}:{port}"), &dead);
        }
        for port in [7, 8, 9] {
            vars.set(&format!("127.0.0.1:23{port}{n}"), &dead);
        }
    }
    vars.set("W1:7379", &dead);
    vars.set("W1:7380", &dead);
    vars.env("IC", &format!("1={dead}/{dead}"));
    // The restore presumes a backup exists (its command finds the newest).
    std::fs::write(vars.dir().join("backups/fenceflake-2024-06-01-0300.json"), "{}").expect("write a backup");
    let lines: Vec<DocLine> = all_lines().into_iter().filter(|l| l.class() == Some(Class::Run)).collect();
    for line in lines.iter().filter(|l| !l.text.starts_with("curl ")) {
        let command = vars.substitute(&line.text);
        let (code, _, stderr) = sh(&command, vars.dir(), &vars.env_for(&command));
        assert_ne!(code, Some(2), "{}: `{}` does not parse:\n{stderr}", line.at(), line.text);
        assert!(code.is_some(), "{}: `{}` hung against a dead address", line.at(), line.text);
    }
}

/// Goal: the lines not run here name real things: harness scenarios and flags, packages,
/// and process tests.
#[test]
fn skipped_lines_name_real_scenarios_packages_and_tests() {
    let root = workspace_root();
    let read = |p: &str| std::fs::read_to_string(root.join(p)).unwrap_or_else(|e| panic!("read {p}: {e}"));
    let (scenarios, harness) = (read("jepsen/src/scenario.rs"), read("jepsen/src/main.rs"));
    let tests: String = std::fs::read_dir(root.join("tests/tests"))
        .expect("list tests")
        .map(|e| std::fs::read_to_string(e.expect("entry").path()).expect("read test"))
        .collect();
    for line in all_lines().iter().filter(|l| matches!(l.class(), Some(Class::Skipped(_)))) {
        let words: Vec<&str> = line.text.split_whitespace().collect();
        for pair in words.windows(2) {
            match pair[0] {
                "--scenario" => {
                    assert!(scenarios.contains(&format!("name: \"{}\"", pair[1])), "{}: {}", line.at(), pair[1])
                }
                "-p" => {
                    assert!(read(&format!("{}/Cargo.toml", pair[1].trim_start_matches("fenceflake-"))).contains(pair[1]))
                }
                "--time-limit" => assert!(pair[1].ends_with('s') || pair[1].ends_with('m'), "{}: unit", line.at()),
                _ => {}
            }
        }
        for flag in words.iter().filter(|w| w.starts_with("--") && line.text.contains("fenceflake-jepsen")) {
            let field = flag.trim_start_matches("--").replace('-', "_");
            assert!(harness.contains(&field), "{}: the harness has no {flag}", line.at());
        }
        for name in line.text.split("test(").skip(1).filter_map(|s| s.split(')').next()) {
            assert!(tests.contains(&format!("fn {name}(")), "{}: no process test {name}", line.at());
        }
    }
}

/// One member's row of a `status`/`members` table: NODE ROLE KIND PEER CLIENT MATCHED LAST_ACK_MS REACHABLE QUIET_MS.
fn row(ran: &Ran, node: u64) -> Option<Vec<String>> {
    ran.stdout
        .lines()
        .map(|l| l.split_whitespace().map(str::to_string).collect::<Vec<_>>())
        .find(|cols| cols.len() == 9 && cols[0] == node.to_string())
}

/// A `status` table's number after `word` on its `leader N  term T  commit C …` line.
fn field(ran: &Ran, word: &str) -> Option<u64> {
    let line = ran.stdout.lines().find(|l| l.starts_with("leader "))?;
    let words: Vec<&str> = line.split_whitespace().collect();
    words.windows(2).find(|w| w[0] == word).and_then(|w| w[1].parse().ok())
}

fn serving(ran: &Ran) -> bool {
    ran.ok() && ran.stdout.starts_with("health: serving")
}

/// Serving, and `node` is a voter the leader reaches, caught up with the commit index.
fn caught_up(ran: &Ran, node: u64) -> bool {
    let (Some(cols), Some(commit)) = (row(ran, node), field(ran, "commit")) else { return false };
    let matched: u64 = cols[5].parse().unwrap_or(0);
    serving(ran) && cols[2] == "voter" && matches!(cols[7].as_str(), "yes" | "self") && matched + 2 >= commit
}

fn leader(ran: &Ran) -> u64 {
    field(ran, "leader").unwrap_or_else(|| panic!("no leader in\n{ran}"))
}

/// Make `node` the leader if it is not (set-up between doc steps, not a doc command).
async fn lead(cluster: &Cluster, node: u64) {
    if cluster.wait_all_know_the_leader(WAIT).await != node {
        let registry = cluster.client_addrs().join(",");
        let out = cluster
            .fenceflake(Role::Operator)
            .args(["ctl", "--registry", &registry, "transfer-leader", "--to", &node.to_string()])
            .output()
            .expect("run ctl");
        assert!(out.status.success(), "transfer-leader: {}", String::from_utf8_lossy(&out.stderr));
    }
    assert_eq!(cluster.wait_all_know_the_leader(WAIT).await, node);
}

/// docs/operations.md, "Bootstrap a cluster" then "Rolling upgrade with no worker parked",
/// on the cluster and the worker the bootstrap commands started.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bootstrap_then_rolling_upgrade() {
    let mut vars = Vars::new();
    for n in 1..=5 {
        vars.fresh_node("H", n);
    }
    vars.set("W1:7379", &format!("127.0.0.1:{}", free_port()));
    vars.set("W1:7380", &format!("127.0.0.1:{}", free_port()));
    let mut rb = Runbook::new(procedure("bootstrap_then_rolling_upgrade"), vars);
    let mint = bootstrap(&mut rb).await;
    rolling_upgrade(&mut rb, &mint).await;
    rb.finish();
}

/// Bootstrap steps 2-4; returns the `mint` line, to check the worker serves later.
async fn bootstrap(rb: &mut Runbook) -> DocLine {
    // Step 2: node 1's command as written; nodes 2..5 "the same command with their own
    // --node-id, addresses and --data-dir".
    let node_1 = rb.take("registry --node-id 1");
    for n in 1..=5 {
        rb.spawn(&format!("registry-{n}"), &node_1.for_node(n));
    }
    // Step 3.
    let status = rb.until("status", WAIT, |r| serving(r) && (1..=5).all(|n| caught_up(r, n))).await;
    assert_status_header_as_documented(&status);
    let leases = rb.ok("leases");
    assert_eq!(leases.stdout.lines().count(), 1, "a new cluster has no leases:\n{leases}");
    let json = rb.ok("status --json");
    assert_status_json_as_documented(&json);
    // Step 4.
    rb.start("fenceflake worker", "worker");
    let mint = rb.take("mint --workers W1:7379 -n 3");
    let minted = rb.exec_until(&mint, WAIT, Ran::ok).await;
    assert_eq!(minted.stdout.lines().filter(|l| l.parse::<u64>().is_ok()).count(), 3, "{minted}");
    let decoded = rb.ok("decode");
    assert!(decoded.stdout.contains(" 42 "), "{decoded}");
    mint
}

/// The example output in "Bootstrap a cluster" has the real table's columns.
fn assert_status_header_as_documented(status: &Ran) {
    let doc = std::fs::read_to_string(workspace_root().join(OPS)).expect("read ops");
    let documented = doc.lines().map(str::trim).find(|l| l.starts_with("NODE ")).expect("example table in the doc");
    let real = status.stdout.lines().find(|l| l.starts_with("NODE ")).expect("status table");
    let words = |s: &str| s.split_whitespace().map(str::to_string).collect::<Vec<_>>();
    assert_eq!(words(documented), words(real), "the doc's example status table is out of date");
}

/// The fields "Bootstrap a cluster" lists for `status --json`.
fn assert_status_json_as_documented(ran: &Ran) {
    let json: serde_json::Value = serde_json::from_str(&ran.stdout).expect("status --json is JSON");
    for key in ["verdict", "exit_code", "leader_id", "quorum_ack_age_ms", "leader_lease_ms"] {
        assert!(json["health"].get(key).is_some(), "health.{key} missing: {json}");
    }
    assert_eq!(json["health"]["verdict"], "serving");
    for key in ["reported_by_leader", "answered_by", "served_node_ids", "commit_index"] {
        assert!(json.get(key).is_some(), "{key} missing: {json}");
    }
    for member in json["members"].as_array().expect("members") {
        for key in ["node_id", "role", "voter", "peer_addr", "client_addr", "matched_index", "last_ack_ms"] {
            assert!(member.get(key).is_some(), "members[].{key} missing: {member}");
        }
    }
}

/// "Rolling upgrade with no worker parked": followers one at a time, the leader last after
/// `transfer-leader`, then the worker; `mint` must succeed after every restart.
async fn rolling_upgrade(rb: &mut Runbook, mint: &DocLine) {
    let first = rb.until("status", WAIT, serving).await;
    let old_leader = leader(&first);
    let status = rb.take("status");
    for n in (1..=5).filter(|n| *n != old_leader) {
        rb.restart(&format!("registry-{n}")); // `sudo systemctl restart fenceflake-registry`
        rb.exec_until(&status, WAIT, |r| caught_up(r, n)).await;
        assert!(rb.exec(mint).ok(), "the worker stopped serving after node {n} restarted");
    }
    let moved = rb.ok("transfer-leader");
    assert!(moved.stdout.contains(&format!("from node {old_leader} to node")), "{moved}");
    rb.restart(&format!("registry-{old_leader}")); // `sudo systemctl restart fenceflake-registry`
    let after = rb.until("status", WAIT, |r| caught_up(r, old_leader)).await;
    assert_ne!(leader(&after), old_leader);
    assert!(rb.exec(mint).ok(), "the worker stopped serving after the leader's restart");
    rb.restart("worker"); // `sudo systemctl restart fenceflake-worker`: SIGTERM, exit 0, start
    rb.until("mint --workers W1:7379 -n 1", WAIT, Ran::ok).await;
}

/// docs/operations.md, "Membership: add, replace, remove": add node 6, add node 7 as a
/// learner and promote it, remove follower 5, move leadership off node 1 and remove it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership() {
    let mut cluster = Cluster::start(5, &[]).await;
    cluster.add_node(6);
    cluster.add_node(7);
    let mut vars = Vars::new();
    vars.cluster("H", &cluster);
    let mut rb = Runbook::new(procedure("membership"), vars);
    // "Add a node".
    rb.start("registry --node-id 6", "registry-6");
    rb.ok("add-member 6 --peer-addr H6:2380 --client-addr H6:2379");
    let status = rb.ok("status");
    assert!(caught_up(&status, 6), "node 6 is a caught-up voter:\n{status}");
    // "Add a node in two steps": node 7 started "as node 6 above".
    cluster.spawn(7);
    rb.ok("add-member 7 --peer-addr H7:2380 --client-addr H7:2379 --learner");
    rb.until("status", WAIT, |r| {
        let (Some(cols), Some(commit)) = (row(r, 7), field(r, "commit")) else { return false };
        cols[2] == "learner" && cols[5].parse::<u64>().is_ok_and(|m| m + 2 >= commit)
    })
    .await;
    let promoted = rb.ok("promote-member 7");
    assert_eq!(row(&promoted, 7).map(|c| c[2].clone()).as_deref(), Some("voter"), "{promoted}");
    // "Remove a node": a follower.
    lead(&cluster, 1).await;
    rb.ok("remove-member 5");
    cluster.kill(5); // "then stop it for good"
    remove_the_leader(&mut rb, &mut cluster).await;
    rb.finish();
}

/// "Remove or replace the current leader", with node 1 leading as the doc's example says.
async fn remove_the_leader(rb: &mut Runbook, cluster: &mut Cluster) {
    lead(cluster, 1).await;
    let status = rb.ok("status");
    assert_eq!(leader(&status), 1, "{status}");
    let moved = rb.ok("transfer-leader --to 2");
    assert!(moved.stdout.contains("to node 2"), "{moved}");
    rb.ok("remove-member 1");
    cluster.kill(1);
    let s = cluster.status(2).await.expect("node 2 answers");
    let voters: BTreeSet<u64> = s.members.iter().filter(|m| m.voter).map(|m| m.node_id).collect();
    assert_eq!(voters, BTreeSet::from([2, 3, 4, 6, 7]), "{s:?}");
}

/// docs/operations.md, "Backup and restore": export from a cluster with a lease and a
/// quarantine, stop it, bootstrap a fresh one, import the newest backup, see the embargo.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backup_and_restore() {
    let args = ["--max-ttl", "2s"];
    let old = Cluster::start(3, &args).await;
    let mut c = old.client(1);
    let acquire = pb::AcquireRequest { holder: "holder-a".into(), worker_id: Some(5), ttl_ms: 2000, incarnation: 0 };
    c.acquire(acquire).await.expect("acquire 5");
    let quarantine = pb::QuarantineRequest { worker_id: 9, reason: "suspected overlap".into() };
    old.operator(1).quarantine(quarantine).await.expect("quarantine 9");
    let mut vars = Vars::new();
    vars.cluster("H", &old);
    let mut rb = Runbook::new(procedure("backup_and_restore"), vars);
    let exported = rb.ok("snapshot export /backups/");
    assert!(exported.stdout.contains("exported 2 worker-ID records"), "{exported}");
    let certs = old.certs.clone();
    drop(old); // Step 1: stop the old cluster for good.
               // Step 2: a fresh cluster, with the old one's CA (one operator certificate for both).
    let fresh = Cluster::start_with_certs(certs, 3, &args, &[]).await;
    rb.vars_mut().cluster("NEW", &fresh);
    let restored = rb.ok("snapshot import");
    assert!(restored.stdout.contains("token generation 1"), "{restored}");
    let leases = rb.ok("leases");
    assert!(leases.stdout.contains("fenceflake:restore-embargo/"), "{leases}");
    assert!(leases.stdout.contains("suspected overlap"), "the quarantine came back:\n{leases}");
    rb.finish();
}

/// docs/failure-modes.md, every section with commands, in order, on one cluster with a
/// worker holding worker ID 42.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failure_modes() {
    let mut cluster = Cluster::start(5, &[]).await;
    let registry = cluster.client_addrs();
    cluster.add_node(6);
    let mut vars = Vars::new();
    vars.cluster("H", &cluster);
    let metrics = format!("127.0.0.1:{}", free_port());
    let worker_args = ["--worker-id", "42", "--metrics-addr", metrics.as_str()];
    let worker = WorkerProcess::spawn(&cluster, "w42", &registry, &worker_args);
    vars.set("W1:7379", &worker.addr);
    vars.set("W1:7380", &metrics);
    worker.wait_serving(WAIT).await;
    let mut rb = Runbook::new(procedure("failure_modes"), vars);
    let parked = rb.ok("curl");
    assert!(parked.stdout.contains("fenceflake_worker_parked{reason="), "{parked}");
    workers_sections(&mut rb, &cluster).await;
    outage_and_leader_sections(&mut rb, &mut cluster).await;
    member_replacement_section(&mut rb, &mut cluster).await;
    exhausted_section(&mut rb);
    rb.finish();
}

/// "Two workers hold the same worker ID", "Canary hit", "Duplicate claim".
async fn workers_sections(rb: &mut Runbook, cluster: &Cluster) {
    let lease = rb.ok("lease 42");
    assert!(lease.stdout.contains("HELD") && lease.stdout.contains("test-w42"), "{lease}");
    // The canary quarantines the ID and audits it; an operator quarantine does both too.
    let q = pb::QuarantineRequest { worker_id: 42, reason: "canary (test)".into() };
    cluster.operator(1).quarantine(q).await.expect("quarantine 42");
    let audit = rb.ok("audit --json");
    let entries: serde_json::Value = serde_json::from_str(&audit.stdout).expect("audit --json is JSON");
    assert!(entries.as_array().is_some_and(|a| a.iter().any(|e| e["worker_id"] == 42)), "{audit}");
    let decoded = rb.ok("decode 55082955571372039");
    assert!(decoded.stdout.contains("2024-06-01T00:00:00.000Z") && decoded.stdout.contains(" 42 "), "{decoded}");
    let cleared = rb.ok("unquarantine 42");
    assert!(!cleared.stdout.contains("QUARANTINED"), "{cleared}");
    let quarantined = rb.ok("quarantine 42 --reason \"suspected duplicate\"");
    assert!(quarantined.stdout.contains("suspected duplicate"), "{quarantined}");
    let leases = rb.ok("leases");
    assert!(leases.stdout.lines().any(|l| l.starts_with("42 ")), "{leases}");
}

/// "Registry outage" (three of five nodes down: exit 3, then restarted) and "Registry
/// leader loss".
async fn outage_and_leader_sections(rb: &mut Runbook, cluster: &mut Cluster) {
    for n in [3, 4, 5] {
        cluster.kill(n);
    }
    let status = rb.take("status");
    let lost = rb.exec_until(&status, WAIT, |r| r.code == Some(3)).await;
    assert!(lost.stdout.starts_with("health: no quorum") || lost.stdout.starts_with("health: no leader"), "{lost}");
    let members = rb.ok("members");
    assert!(row(&members, 5).is_some(), "{members}");
    for n in [3, 4, 5] {
        cluster.spawn(n); // Step 2: restart dead nodes with their data dirs.
    }
    rb.exec_until(&status, WAIT, |r| serving(r) && (1..=5).all(|n| caught_up(r, n))).await;
    // "Registry leader loss": `status` for churn, then a planned hand-over.
    rb.until("status", WAIT, serving).await;
    let moved = rb.ok("transfer-leader");
    assert!(moved.stdout.contains("leadership moved from node"), "{moved}");
}

/// "Registry member loss or replacement": node 5's disk is lost; it is replaced by node 6.
async fn member_replacement_section(rb: &mut Runbook, cluster: &mut Cluster) {
    rb.until("status", WAIT, serving).await;
    cluster.kill(5);
    cluster.wipe(5);
    cluster.wait_leader(WAIT).await;
    rb.ok("remove-member 5");
    rb.start("registry --node-id 6", "registry-6");
    rb.ok("add-member 6 --peer-addr H6:2380 --client-addr H6:2379");
    let status = rb.until("status", WAIT, |r| caught_up(r, 6)).await;
    assert!(row(&status, 5).is_none(), "node 5 is gone:\n{status}");
}

/// "Worker IDs exhausted".
fn exhausted_section(rb: &mut Runbook) {
    let leases = rb.ok("leases");
    assert!(leases.stdout.contains("suspected duplicate"), "{leases}");
    let all = rb.ok("leases --all");
    assert_eq!(all.stdout.lines().count(), 1 + 1024, "every worker ID, with a header");
    rb.ok("audit");
    let cleared = rb.ok("unquarantine 42");
    assert!(!cleared.stdout.contains("suspected duplicate"), "{cleared}");
}

/// README.md, "Operate it with `ctl`", against the README's by-hand cluster (`$B`, `$IC`,
/// `127.0.0.1:237N`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readme_ctl_section() {
    let mut cluster = Cluster::start(5, &[]).await;
    cluster.add_node(6);
    let mut vars = Vars::new();
    vars.readme_cluster(&cluster);
    let mut rb = Runbook::new(procedure("readme_ctl_section"), vars);
    lead(&cluster, 1).await; // `transfer-leader --to 2` below needs another leader
    assert!(serving(&rb.ok("status")));
    rb.ok("members");
    assert_eq!(rb.ok("leases --all").stdout.lines().count(), 1 + 1024);
    rb.ok("lease 42");
    assert!(rb.ok("quarantine 42").stdout.contains("suspected duplicate"));
    rb.ok("unquarantine 42");
    assert!(rb.ok("audit").stdout.lines().any(|l| l.starts_with("42 ")));
    assert!(rb.ok("transfer-leader --to 2").stdout.contains("to node 2"));
    rb.ok("snapshot export /var/lib/fenceflake/backup.json");
    assert!(rb.vars().dir().join("var/lib/fenceflake/backup.json").exists());
    rb.start("registry --node-id 6", "registry-6");
    rb.ok("add-member 6");
    let removed = rb.ok("remove-member 5");
    assert!(row(&removed, 5).is_none() && row(&removed, 6).is_some(), "{removed}");
    cluster.kill(5);
    rb.finish();
}
