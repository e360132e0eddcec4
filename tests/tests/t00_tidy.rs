//! Tidy checks, run as ordinary tests: crate dependency edges, where wall-clock time may be
//! read, no unfinished-work macros, and a `//!` line atop every Rust file.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the workspace").to_path_buf()
}

/// Every `.rs` file under the workspace's crates (not `target/`).
fn rust_files() -> Vec<PathBuf> {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).expect("read dir") {
            let path = entry.expect("dir entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if !matches!(name, "target" | ".git" | "node_modules") {
                    walk(&path, out);
                }
            } else if name.ends_with(".rs") {
                out.push(path);
            }
        }
    }
    let mut files = Vec::new();
    for krate in ["proto", "registry", "worker", "client", "cli", "tests", "bench", "jepsen"] {
        let dir = workspace_root().join(krate);
        if dir.exists() {
            walk(&dir, &mut files);
        }
    }
    files
}

/// Goal: the crate graph has only the allowed edges (registry and worker never meet).
#[test]
fn crate_dependency_edges_are_the_allowed_ones() {
    let allowed: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::from([
        ("fenceflake-proto", BTreeSet::new()),
        ("fenceflake-registry", BTreeSet::from(["fenceflake-proto"])),
        ("fenceflake-worker", BTreeSet::from(["fenceflake-proto"])),
        ("fenceflake-client", BTreeSet::from(["fenceflake-proto"])),
        (
            "fenceflake-cli",
            BTreeSet::from(["fenceflake-proto", "fenceflake-registry", "fenceflake-worker", "fenceflake-client"]),
        ),
        ("fenceflake-tests", BTreeSet::from(["fenceflake-proto"])),
        ("fenceflake-bench", BTreeSet::from(["fenceflake-proto", "fenceflake-worker", "fenceflake-client"])),
        ("fenceflake-jepsen", BTreeSet::from(["fenceflake-proto", "fenceflake-client"])),
    ]);
    let out = std::process::Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--no-deps", "--offline"])
        .current_dir(workspace_root())
        .output()
        .expect("run cargo metadata");
    assert!(out.status.success(), "cargo metadata failed: {}", String::from_utf8_lossy(&out.stderr));
    let metadata: serde_json::Value = serde_json::from_slice(&out.stdout).expect("metadata is JSON");
    for package in metadata["packages"].as_array().expect("packages") {
        let name = package["name"].as_str().expect("package name");
        let edges = allowed
            .get(name)
            .unwrap_or_else(|| panic!("new crate {name}: add its allowed edges here and in ARCHITECTURE.md"));
        for dep in package["dependencies"].as_array().expect("dependencies") {
            let dep_name = dep["name"].as_str().expect("dependency name");
            if dep_name.starts_with("fenceflake-") && dep["kind"].is_null() {
                assert!(edges.contains(dep_name), "{name} must not depend on {dep_name} (see ARCHITECTURE.md)");
            }
        }
    }
}

/// Goal: the registry and worker libraries read time (wall or monotonic) only in their
/// `clock.rs`, so every clock fault is injectable everywhere else. Tools and tests may read
/// clocks.
#[test]
fn clocks_are_read_only_in_clock_modules() {
    for file in rust_files() {
        let rel = file.strip_prefix(workspace_root()).expect("inside workspace").to_string_lossy().into_owned();
        let in_library = rel.starts_with("registry/src/") || rel.starts_with("worker/src/");
        if !in_library || rel.ends_with("/clock.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        for read in ["SystemTime::now", "Instant::now"] {
            assert!(!text.contains(read), "{rel} calls {read}; go through its Clock");
        }
    }
}

/// Goal: the registry's lease domain stays pure: no runtime, Raft, gRPC or clock under
/// `registry/src/lease/` (time arrives in commands).
#[test]
fn the_lease_domain_imports_no_runtime_raft_grpc_or_clock() {
    let dir = workspace_root().join("registry/src/lease");
    let mut checked = 0;
    for file in rust_files().into_iter().filter(|f| f.starts_with(&dir)) {
        let text = std::fs::read_to_string(&file).expect("read source");
        let code = text.lines().filter(|line| !line.trim_start().starts_with("//"));
        for line in code {
            for banned in ["tokio", "openraft", "tonic", "crate::clock", "Instant", "SystemTime"] {
                assert!(
                    !line.contains(banned),
                    "{}: `{line}` uses {banned}; the lease domain stays pure",
                    file.display()
                );
            }
        }
        checked += 1;
    }
    assert!(checked >= 5, "expected the lease module's files under {}", dir.display());
}

/// Goal: no unfinished work ships.
#[test]
fn no_unfinished_work_macros() {
    let banned = ["todo!(", "unimplemented!(", "dbg!("];
    for file in rust_files() {
        if file.ends_with("t00_tidy.rs") {
            continue;
        }
        let text = std::fs::read_to_string(&file).expect("read source");
        for word in banned {
            assert!(!text.contains(word), "{} contains {word}", file.display());
        }
    }
}

/// Goal: every Rust file says what it is for in its first line.
#[test]
fn every_rust_file_opens_with_a_module_doc() {
    for file in rust_files() {
        let text = std::fs::read_to_string(&file).expect("read source");
        assert!(text.starts_with("//!"), "{} does not open with a `//!` line", file.display());
    }
}

/// Goal (issue 9, point 8): the unsafe test switches (the worker's deadline check and
/// incarnations, the servers' authorization, the registry's clock check) exist only in the
/// separately built test binary. No workspace member enables the `unsafe-test-switches`
/// feature, nor proto's `sim-transport` (the simulator's, issue 10), so cargo's feature
/// unification cannot pull them into `cargo build` or `cargo build --release`; and the
/// binary the tests run — and any release binary built here — carries none of the switches'
/// variable names.
#[test]
fn unsafe_switches_stay_out_of_the_binaries_the_tests_and_users_run() {
    for manifest in [
        "Cargo.toml",
        "proto/Cargo.toml",
        "registry/Cargo.toml",
        "worker/Cargo.toml",
        "client/Cargo.toml",
        "cli/Cargo.toml",
        "tests/Cargo.toml",
        "bench/Cargo.toml",
        "jepsen/Cargo.toml",
    ] {
        let text = std::fs::read_to_string(workspace_root().join(manifest)).expect("read manifest");
        // `sim-transport` too: the simulator's transport trusts identities it is handed.
        for feature in ["unsafe-test-switches", "sim-transport"] {
            for line in text.lines().filter(|l| l.contains(feature)) {
                let defines_it = line.trim_start().starts_with(&format!("{feature} ="));
                assert!(defines_it, "{manifest} enables {feature}: {line}");
            }
        }
    }
    let marker = b"FENCEFLAKE_UNSAFE_";
    let mut checked = 0;
    for binary in [fenceflake_tests::fenceflake_bin(), workspace_root().join("target/release/fenceflake")] {
        let Ok(bytes) = std::fs::read(&binary) else { continue };
        checked += 1;
        assert!(
            !bytes.windows(marker.len()).any(|w| w == marker),
            "{} carries the unsafe test switches",
            binary.display()
        );
    }
    assert!(checked > 0, "no fenceflake binary found to check");
}
