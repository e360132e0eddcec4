//! The `fenceflake` CLI refuses bad flags and foreign data dirs with messages naming the
//! problem, and `ctl` prints tables and stable JSON.

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use fenceflake_proto::tls::Role;
use fenceflake_tests::certs::{Certs, TEST_NAME};
use fenceflake_tests::cluster::Cluster;
use fenceflake_tests::free_port;

/// `fenceflake registry` as node `node_id` of `certs`' CA (so that TLS is not what it refuses).
fn registry_cmd(certs: &Certs, node_id: u64, data_dir: &std::path::Path, initial_cluster: &str) -> Command {
    let mut cmd = certs.command(Role::Node, &node_id.to_string());
    let peer = free_port();
    cmd.arg("registry")
        .args(["--node-id", &node_id.to_string()])
        .args(["--client-addr", &format!("127.0.0.1:{}", free_port())])
        .args(["--peer-addr", &format!("127.0.0.1:{peer}")])
        .arg("--data-dir")
        .arg(data_dir)
        .args(["--initial-cluster", &initial_cluster.replace("PEER", &format!("127.0.0.1:{peer}"))]);
    cmd
}

/// Run a command that must fail fast; kill it if it is still running after 20 s.
fn stderr_of(cmd: &mut Command) -> String {
    let mut child = cmd.stdout(Stdio::null()).stderr(Stdio::piped()).spawn().expect("run fenceflake");
    let deadline = Instant::now() + Duration::from_secs(20);
    while child.try_wait().expect("poll child").is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("fenceflake kept running instead of refusing to start");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let out = child.wait_with_output().expect("collect output");
    assert!(!out.status.success(), "expected failure, got {:?}", out.status);
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Goal: bad flag values are refused before anything starts, naming the value.
#[test]
fn bad_flags_are_refused_naming_the_value() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new();
    let err = stderr_of(&mut registry_cmd(&certs, 1, dir.path(), "1=nohost"));
    assert!(err.contains("1=nohost"), "{err}");
    let err = stderr_of(&mut registry_cmd(&certs, 1, dir.path(), "2=127.0.0.1:1"));
    assert!(err.contains("does not name this node (1)"), "{err}");
    let err = stderr_of(registry_cmd(&certs, 1, dir.path(), "1=PEER").args(["--cool-down", "soon"]));
    assert!(err.contains("soon"), "{err}");
    let err = stderr_of(registry_cmd(&certs, 1, dir.path(), "1=PEER").args(["--worker-id-bits", "40"]));
    assert!(err.contains("--worker-id-bits"), "{err}");
}

/// Goal: one duration syntax — a bare number given to a duration flag (registry, worker,
/// ctl) is refused before anything starts, naming the value and the units, never read as
/// ms or s.
#[test]
fn bare_number_durations_are_refused_naming_the_units() {
    let dir = tempfile::tempdir().unwrap();
    let certs = Certs::new();
    let no_unit = |err: &str, value: &str| {
        assert!(err.contains(&format!("\"{value}\" has no unit")) && err.contains("ms, s, m, h"), "{err}");
    };
    no_unit(&stderr_of(registry_cmd(&certs, 1, dir.path(), "1=PEER").args(["--cool-down", "500"])), "500");
    let mut worker = certs.command(Role::Worker, TEST_NAME);
    worker.args(["worker", "--registry", "127.0.0.1:1", "--state-dir"]).arg(dir.path().join("w"));
    no_unit(&stderr_of(worker.args(["--lease-ttl", "3"])), "3");
    let mut ctl = certs.command(Role::Operator, TEST_NAME);
    no_unit(&stderr_of(ctl.args(["ctl", "--registry", "127.0.0.1:1", "--timeout", "5", "status"])), "5");
    let mut env = certs.command(Role::Operator, TEST_NAME);
    env.args(["ctl", "--registry", "127.0.0.1:1", "status"]).env("FENCEFLAKE_CTL_TIMEOUT", "250");
    no_unit(&stderr_of(&mut env), "250");
}

/// Goal: a data dir that belongs to another node id or cluster is refused, saying why.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn foreign_data_dir_is_refused() {
    let mut cluster = Cluster::start(1, &[]).await;
    let data_dir = cluster.nodes[&1].data_dir.clone();
    cluster.kill(1);
    let err = stderr_of(&mut registry_cmd(&cluster.certs, 2, &data_dir, "2=PEER"));
    assert!(err.contains("belongs to node 1"), "{err}");
    let err = stderr_of(registry_cmd(&cluster.certs, 1, &data_dir, "1=PEER").args(["--cluster-id", "other"]));
    assert!(err.contains("belongs to cluster"), "{err}");
}

/// Goal: `ctl` answers through any listed node, skipping dead ones, in tables and JSON.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_status_and_leases_in_table_and_json() {
    let cluster = Cluster::start(3, &[]).await;
    let dead = format!("127.0.0.1:{}", free_port());
    let registry = format!("{dead},{}", cluster.client_addrs().join(","));
    let ctl = |args: &[&str]| {
        let out =
            cluster.fenceflake(Role::Operator).args(["ctl", "--registry", &registry]).args(args).output().unwrap();
        assert!(out.status.success(), "ctl {args:?}: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8(out.stdout).unwrap()
    };
    let table = ctl(&["status"]);
    assert!(table.contains("LEADER") && table.contains("NODE"), "{table}");
    let status: serde_json::Value = serde_json::from_str(&ctl(&["status", "--json"])).unwrap();
    assert_eq!(status["members"].as_array().map(Vec::len), Some(3));
    assert!(status["leader_id"].as_u64().unwrap() > 0);
    ctl(&["quarantine", "3", "--reason", "suspected duplicate"]);
    let lease: serde_json::Value = serde_json::from_str(&ctl(&["lease", "3", "--json"])).unwrap();
    assert_eq!(lease["state"], "QUARANTINED");
    let audit: serde_json::Value = serde_json::from_str(&ctl(&["audit", "--json"])).unwrap();
    assert_eq!(audit[0]["kind"], "operator");
    ctl(&["unquarantine", "3"]);
    let leases: serde_json::Value = serde_json::from_str(&ctl(&["leases", "--all", "--json"])).unwrap();
    assert_eq!(leases.as_array().map(Vec::len), Some(1024));
}

/// Goal: `--metrics-addr` serves the Prometheus text with the raft and lease metrics.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_endpoint_serves_prometheus_text() {
    let addr = format!("127.0.0.1:{}", free_port());
    let cluster = Cluster::start(1, &["--metrics-addr", &addr]).await;
    let mut client = cluster.client(1);
    let request =
        fenceflake_proto::v1::AcquireRequest { holder: "m".into(), worker_id: None, ttl_ms: 5000, incarnation: 0 };
    client.acquire(request).await.expect("acquire");
    let body = tokio::task::spawn_blocking(move || {
        use std::io::{Read, Write};
        let mut stream = std::net::TcpStream::connect(&addr).expect("connect to metrics");
        stream.write_all(b"GET /metrics HTTP/1.1\r\nhost: x\r\n\r\n").expect("send");
        let mut body = String::new();
        stream.read_to_string(&mut body).expect("read");
        body
    })
    .await
    .expect("metrics fetch");
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    for line in [
        "fenceflake_registry_grants_total 1",
        "fenceflake_registry_raft_leader_id 1",
        "fenceflake_registry_leases{state=\"held\"} 1",
        "fenceflake_registry_request_duration_seconds_count{rpc=\"Acquire\"} 1",
    ] {
        assert!(body.contains(line), "missing {line:?} in\n{body}");
    }
}
