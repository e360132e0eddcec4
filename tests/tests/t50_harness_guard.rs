//! The harness's network guard: its workload refuses to run in a namespace with a default
//! route (the root one), where connects to test addresses would leave the machine.

use std::process::Command;

/// Goal: `fenceflake-jepsen workload` started outside the harness's namespaces exits non-zero
/// before sending anything, and says why.
#[test]
fn workload_refuses_to_run_outside_the_harness_namespaces() {
    let has_default_route = std::fs::read_to_string("/proc/self/net/route")
        .map(|t| t.lines().skip(1).any(|l| l.split_whitespace().nth(1) == Some("00000000")))
        .unwrap_or(false);
    if !has_default_route {
        eprintln!("SKIPPED: this namespace has no default route, so the guard has nothing to refuse");
        return;
    }
    let harness = fenceflake_tests::fenceflake_bin().with_file_name("fenceflake-jepsen");
    let history = tempfile::NamedTempFile::new().unwrap();
    // With TLS like every run (a CA of its own): the guard refuses before any certificate is read.
    let certs = fenceflake_tests::certs::Certs::new();
    let out = Command::new(&harness)
        .args(["workload", "--workers", "w1=10.231.0.9:7379", "--registry", "10.231.0.1:2379"])
        .arg("--certs")
        .arg(certs.dir())
        .args(["--rate", "10", "--duration-ms", "100", "--seed", "1", "--origin-ns", "0", "--history"])
        .arg(history.path())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e} (build it: cargo build -p fenceflake-jepsen)", harness.display()));
    assert!(!out.status.success(), "the workload ran outside the harness namespaces");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("refusing to run the workload"), "{stderr}");
    assert_eq!(std::fs::metadata(history.path()).unwrap().len(), 0, "nothing may be recorded");
}
