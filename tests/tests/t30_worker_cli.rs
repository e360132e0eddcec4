//! The worker-side CLI end to end: `fenceflake dev` starts a registry and two workers in one
//! process (with mutual TLS and throwaway certificates), `fenceflake mint` draws IDs from them
//! (waiting out rate limits) with the client certificate dev made, `fenceflake decode` reads
//! them back, and Ctrl-C stops everything cleanly.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use fenceflake_tests::certs::{ENV_CA, ENV_CERT, ENV_INSECURE, ENV_KEY};
use fenceflake_tests::fenceflake_bin;

fn run_ok(env: &[(&str, String)], args: &[&str]) -> String {
    let mut cmd = Command::new(fenceflake_bin());
    cmd.env_remove(ENV_INSECURE).envs(env.iter().map(|(k, v)| (k, v)));
    let out = cmd.args(args).output().expect("run fenceflake");
    assert!(out.status.success(), "fenceflake {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).expect("utf-8 output")
}

/// Goal: `fenceflake dev` prints its addresses and next commands, each naming this very
/// binary by its path (it need not be on PATH) so it works when pasted into a shell; its
/// first boot logs no warning (no "lost disk" for the state it just created); minting through
/// the printed workers yields unique IDs (a batch larger than the per-caller burst waits out
/// the limit), they decode to the workers' IDs, and SIGINT stops it with exit 0.
#[test]
fn dev_mint_decode_round_trip() {
    let mut dev = Command::new(fenceflake_bin())
        .arg("dev")
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn fenceflake dev");
    let stderr = dev.stderr.take().expect("piped stderr");
    let logged = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::Read::read_to_string(&mut BufReader::new(stderr), &mut text);
        text
    });
    let stdout = dev.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let mut printed = Vec::new();
    while !printed.last().is_some_and(|l: &String| l.contains("Press Ctrl-C")) {
        let line = rx.recv_timeout(Duration::from_secs(30));
        if line.is_err() {
            let _ = dev.kill();
            panic!("dev printed no summary in time; got:\n{}", printed.join("\n"));
        }
        printed.extend(line);
    }
    let field = |prefix: &str| -> Vec<String> {
        printed
            .iter()
            .filter_map(|l| l.trim().strip_prefix(prefix))
            .map(|r| r.split_whitespace().next().unwrap_or("").to_string())
            .collect()
    };
    let workers = field("worker:").join(",");
    assert_eq!(field("worker:").len(), 2, "{printed:?}");
    assert!(printed.iter().any(|l| l.contains("fenceflake mint --workers")), "{printed:?}");

    let try_from = printed.iter().position(|l| l == "Try:").expect("a Try: section") + 1;
    let commands: Vec<&str> = printed[try_from..].iter().map(|l| l.trim()).take_while(|l| !l.is_empty()).collect();
    assert!(commands.len() >= 5, "{printed:?}");
    let bin = std::fs::canonicalize(fenceflake_bin()).expect("the binary's real path");
    for command in &commands {
        let program = command.split_whitespace().next().unwrap_or_default();
        assert_eq!(std::fs::canonicalize(program).ok().as_ref(), Some(&bin), "not this binary: {command}");
    }
    // Pasted as printed into a shell whose PATH has no fenceflake on it.
    for command in commands.iter().filter(|c| c.contains(" ctl ") || c.contains(" decode ")) {
        let out = Command::new("sh").args(["-c", command]).env("PATH", "/usr/bin:/bin").output().expect("run sh");
        assert!(out.status.success(), "{command}: {}", String::from_utf8_lossy(&out.stderr));
        assert!(!out.stdout.is_empty(), "{command} printed nothing");
    }

    mint_and_decode(&client_tls(&commands), &workers);

    let _ = Command::new("kill").args(["-s", "INT", &dev.id().to_string()]).status();
    let exit = (0..300).find_map(|_| {
        std::thread::sleep(Duration::from_millis(50));
        dev.try_wait().expect("poll dev")
    });
    let Some(exit) = exit else {
        let _ = dev.kill();
        panic!("dev did not stop within 15 s of SIGINT");
    };
    assert!(exit.success(), "dev exited with {exit:?}");
    let logged = logged.join().expect("stderr reader");
    assert!(!logged.contains("lost disk") && !logged.contains("WARN"), "dev's first boot warned:\n{logged}");
}

/// `mint` through `workers` with the `client` env (5 single IDs, then a batch larger than the
/// per-caller burst): unique IDs that decode to the workers' IDs.
fn mint_and_decode(client: &[(&str, String)], workers: &str) {
    let ids = |args: &[&str]| -> Vec<u64> {
        let mut all = vec!["mint", "--workers", workers];
        all.extend(args);
        run_ok(client, &all).lines().map(|l| l.parse().expect("an ID")).collect()
    };
    let (single, batch) = (ids(&["-n", "5"]), ids(&["-n", "150000", "--batch"]));
    assert_eq!((single.len(), batch.len()), (5, 150_000));
    let unique: BTreeSet<u64> = single.iter().chain(&batch).copied().collect();
    assert_eq!(unique.len(), single.len() + batch.len(), "an ID repeated");

    let decoded = run_ok(&[], &["decode", "--json", &single[0].to_string()]);
    let json: serde_json::Value = serde_json::from_str(decoded.trim()).expect("decode --json");
    assert!(json["worker_id"].as_u64().is_some_and(|w| w <= 1), "{json}");
    assert!(json["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')), "{json}");
}

/// The TLS files of the printed `mint` command (dev runs with TLS by default, so it carries
/// the client certificate dev made), as the env vars that give them to a `fenceflake mint`.
fn client_tls(commands: &[&str]) -> Vec<(&'static str, String)> {
    let mint = commands.iter().find(|c| c.contains(" mint ")).expect("dev prints a mint command");
    let words: Vec<&str> = mint.split_whitespace().collect();
    let env: Vec<(&'static str, String)> = [("--tls-ca", ENV_CA), ("--tls-cert", ENV_CERT), ("--tls-key", ENV_KEY)]
        .into_iter()
        .filter_map(|(flag, var)| {
            words.windows(2).find(|w| w[0] == flag).map(|w| (var, w[1].trim_matches('\'').into()))
        })
        .collect();
    assert_eq!(env.len(), 3, "dev's mint command carries a client's --tls-ca, --tls-cert and --tls-key: {mint}");
    env
}
