//! The harness's private network: one network namespace per host (registry node, worker,
//! workload client) linked by veth pairs to a bridge that lives in a namespace of its own,
//! with addresses from 10.231.0.0/16 that exist only inside these namespaces.
//!
//! Partitions and packet loss are one nftables rule set on the bridge (`table bridge
//! nemesis`): a set of cut (source, destination) pairs and a set of lossy pairs, replaced
//! atomically with `nft -f`, so any shape — one-way cuts included — applies in one step.
//!
//! Delays are iptables `NFQUEUE` rules in the bridge namespace's `mangle` table (bridged
//! packets reach iptables through bridge netfilter), one per delayed direction, replaced
//! atomically with `iptables-restore`; [`crate::delay`] holds the queued packets.

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write as _;
use std::net::Ipv4Addr;
use std::process::{Command, Stdio};

/// Every namespace and interface the harness creates starts with this, so `cleanup` can
/// find what a crashed run left behind.
pub const NAME_PREFIX: &str = "ffj";

#[derive(Debug, thiserror::Error)]
pub enum NetError {
    #[error("`{command}` failed: {stderr}")]
    Command { command: String, stderr: String },
    #[error("cannot run `{command}`: {source} (is iproute2/nftables installed?)")]
    Spawn { command: String, source: std::io::Error },
}

/// Run a command, failing with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, NetError> {
    run_with_input(program, args, None, &[])
}

/// [`run`] with these environment variables set (and the transport's others removed).
pub fn run_env(program: &str, args: &[&str], env: &[(String, String)]) -> Result<String, NetError> {
    run_with_input(program, args, None, env)
}

fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
    env: &[(String, String)],
) -> Result<String, NetError> {
    let command = format!("{program} {}", args.join(" "));
    let mut builder = Command::new(program);
    for var in crate::tls::ENV_VARS {
        builder.env_remove(var);
    }
    let mut child = builder
        .args(args)
        .envs(env.iter().map(|(k, v)| (k, v)))
        .stdin(if input.is_some() { Stdio::piped() } else { Stdio::null() })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| NetError::Spawn { command: command.clone(), source })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin.write_all(text.as_bytes()).map_err(|source| NetError::Spawn { command: command.clone(), source })?;
    }
    let out = child.wait_with_output().map_err(|source| NetError::Spawn { command: command.clone(), source })?;
    if !out.status.success() {
        return Err(NetError::Command { command, stderr: String::from_utf8_lossy(&out.stderr).trim().to_string() });
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// One host of the test network.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    /// Short name (`n1`, `w2`, `client`), used in logs and reports.
    pub name: String,
    pub netns: String,
    pub ip: Ipv4Addr,
}

/// The whole network of one run. Dropping it tears everything down.
#[derive(Debug)]
pub struct Network {
    tag: String,
    bridge_ns: String,
    pub hosts: Vec<Host>,
}

/// A partition or loss shape: which directed pairs are cut, which drop a percentage.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Faults {
    pub cut: BTreeSet<(Ipv4Addr, Ipv4Addr)>,
    pub lossy: BTreeSet<(Ipv4Addr, Ipv4Addr)>,
    pub loss_percent: u8,
}

impl Faults {
    /// Cut every pair between `a` and `b`, both ways.
    pub fn cut_between(&mut self, a: &[Ipv4Addr], b: &[Ipv4Addr]) {
        for x in a {
            for y in b {
                if x != y {
                    self.cut.insert((*x, *y));
                    self.cut.insert((*y, *x));
                }
            }
        }
    }
}

impl Network {
    /// Create the bridge and one namespace per host name. `run_id` (0..=255) picks the
    /// third octet, so two runs on one machine do not share addresses.
    pub fn create(run_id: u8, names: &[&str]) -> Result<Network, NetError> {
        let tag = format!("{NAME_PREFIX}{run_id}");
        let bridge_ns = format!("{tag}-br");
        let mut network = Network { tag: tag.clone(), bridge_ns: bridge_ns.clone(), hosts: Vec::new() };
        run("ip", &["netns", "add", &bridge_ns])?;
        run("ip", &["netns", "exec", &bridge_ns, "ip", "link", "add", "br0", "type", "bridge"])?;
        run("ip", &["netns", "exec", &bridge_ns, "ip", "link", "set", "br0", "up"])?;
        for (i, name) in names.iter().enumerate() {
            let index = u8::try_from(i + 1).map_err(|_| NetError::Command {
                command: "network create".into(),
                stderr: "more than 250 hosts".into(),
            })?;
            let host = Host {
                name: name.to_string(),
                netns: format!("{tag}-{name}"),
                ip: Ipv4Addr::new(10, 231, run_id, index),
            };
            network.add_host(&host, index)?;
            network.hosts.push(host);
        }
        network.apply(&Faults::default())?;
        Ok(network)
    }

    fn add_host(&self, host: &Host, index: u8) -> Result<(), NetError> {
        let veth = format!("{}v{index}", self.tag);
        run("ip", &["netns", "add", &host.netns])?;
        run("ip", &["link", "add", &veth, "type", "veth", "peer", "name", "eth0", "netns", &host.netns])?;
        run("ip", &["link", "set", &veth, "netns", &self.bridge_ns])?;
        run("ip", &["netns", "exec", &self.bridge_ns, "ip", "link", "set", &veth, "master", "br0"])?;
        run("ip", &["netns", "exec", &self.bridge_ns, "ip", "link", "set", &veth, "up"])?;
        let addr = format!("{}/16", host.ip);
        run("ip", &["netns", "exec", &host.netns, "ip", "addr", "add", &addr, "dev", "eth0"])?;
        run("ip", &["netns", "exec", &host.netns, "ip", "link", "set", "eth0", "up"])?;
        run("ip", &["netns", "exec", &host.netns, "ip", "link", "set", "lo", "up"])?;
        Ok(())
    }

    pub fn host(&self, name: &str) -> Option<&Host> {
        self.hosts.iter().find(|h| h.name == name)
    }

    /// Replace the fault rule set atomically (an empty `Faults` heals everything).
    pub fn apply(&self, faults: &Faults) -> Result<(), NetError> {
        run_with_input("ip", &["netns", "exec", &self.bridge_ns, "nft", "-f", "-"], Some(&ruleset(faults)), &[])?;
        Ok(())
    }

    /// The namespace that holds the bridge (where the delay thread must run).
    pub fn bridge_ns(&self) -> &str {
        &self.bridge_ns
    }

    /// Queue the bridged packets of each delayed link to [`crate::delay::QUEUE_NUM`],
    /// replacing any earlier delay rules (an empty list removes them all).
    pub fn apply_delays(&self, links: &[crate::delay::Link]) -> Result<(), NetError> {
        // On by default where bridge netfilter is built in; said explicitly so that a kernel
        // without it fails here, by name, instead of delaying nothing.
        let sysctl = "net.bridge.bridge-nf-call-iptables=1";
        run("ip", &["netns", "exec", &self.bridge_ns, "sysctl", "-q", "-w", sysctl])?;
        let script = delay_rules(links);
        run_with_input("ip", &["netns", "exec", &self.bridge_ns, "iptables-restore"], Some(&script), &[])?;
        Ok(())
    }

    /// Delete every namespace of this run (their veths go with them).
    pub fn teardown(&self) {
        for host in &self.hosts {
            let _ = run("ip", &["netns", "del", &host.netns]);
        }
        let _ = run("ip", &["netns", "del", &self.bridge_ns]);
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        self.teardown();
    }
}

/// The nftables script for `faults`. The table is deleted and recreated in one transaction.
pub fn ruleset(faults: &Faults) -> String {
    let pairs = |set: &BTreeSet<(Ipv4Addr, Ipv4Addr)>| {
        set.iter().map(|(a, b)| format!("{a} . {b}")).collect::<Vec<_>>().join(", ")
    };
    let mut script = String::from("table bridge nemesis\ndelete table bridge nemesis\ntable bridge nemesis {\n");
    let _ = writeln!(script, "  set cut {{ type ipv4_addr . ipv4_addr; }}");
    let _ = writeln!(script, "  set lossy {{ type ipv4_addr . ipv4_addr; }}");
    let _ = writeln!(script, "  chain forward {{\n    type filter hook forward priority 0; policy accept;");
    let _ = writeln!(script, "    ip saddr . ip daddr @cut drop");
    if faults.loss_percent > 0 {
        let _ = writeln!(script, "    ip saddr . ip daddr @lossy numgen random mod 100 < {} drop", faults.loss_percent);
    }
    script.push_str("  }\n}\n");
    if !faults.cut.is_empty() {
        let _ = writeln!(script, "add element bridge nemesis cut {{ {} }}", pairs(&faults.cut));
    }
    if !faults.lossy.is_empty() {
        let _ = writeln!(script, "add element bridge nemesis lossy {{ {} }}", pairs(&faults.lossy));
    }
    script
}

/// The `iptables-restore` script of `links`: the whole `mangle` table (nothing else of the
/// harness uses it), so applying it replaces the previous delays in one step. Each link is
/// one direction; `--queue-bypass` lets packets through when no delay thread listens.
pub fn delay_rules(links: &[crate::delay::Link]) -> String {
    let mut script = String::from("*mangle\n:FORWARD ACCEPT [0:0]\n");
    let directions: BTreeSet<(Ipv4Addr, Ipv4Addr)> = links.iter().map(|l| (l.from, l.to)).collect();
    for (from, to) in directions {
        let _ = writeln!(
            script,
            "-A FORWARD -s {from}/32 -d {to}/32 -j NFQUEUE --queue-num {} --queue-bypass",
            crate::delay::QUEUE_NUM
        );
    }
    script.push_str("COMMIT\n");
    script
}

/// Namespaces left behind by earlier runs (for `cleanup`).
pub fn leftover_namespaces() -> Result<Vec<String>, NetError> {
    let out = run("ip", &["netns", "list"])?;
    Ok(out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(NAME_PREFIX))
        .map(str::to_string)
        .collect())
}

/// Could traffic from this process's network namespace leave the machine? True when the
/// namespace has an IPv4 default route: from the root namespace, 10.231.x.x would follow it
/// off the machine. The harness's namespaces have only their own /16, so the workload
/// refuses to run anywhere else.
pub fn has_default_route() -> Result<bool, std::io::Error> {
    Ok(default_route_in(&std::fs::read_to_string("/proc/self/net/route")?))
}

/// `/proc/net/route` lists destinations in hex; a default route has destination 00000000.
fn default_route_in(table: &str) -> bool {
    table.lines().skip(1).any(|line| line.split_whitespace().nth(1) == Some("00000000"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_default_route_is_recognised() {
        let header = "Iface\tDestination\tGateway\tFlags\n";
        assert!(default_route_in(&format!("{header}eth0\t00000000\t0100000A\t0003\n")));
        assert!(!default_route_in(&format!("{header}eth0\t0000E70A\t00000000\t0001\n")));
    }

    #[test]
    fn ruleset_cuts_both_directions_and_adds_loss_only_when_asked() {
        let a = Ipv4Addr::new(10, 231, 0, 1);
        let b = Ipv4Addr::new(10, 231, 0, 2);
        let mut faults = Faults::default();
        faults.cut_between(&[a], &[b]);
        let script = ruleset(&faults);
        assert!(script.contains("10.231.0.1 . 10.231.0.2") && script.contains("10.231.0.2 . 10.231.0.1"));
        assert!(!script.contains("numgen"), "no loss rule without loss");
        faults.loss_percent = 10;
        faults.lossy.insert((a, b));
        assert!(ruleset(&faults).contains("numgen random mod 100 < 10 drop"));
        assert!(!ruleset(&Faults::default()).contains("add element"), "healing leaves the sets empty");
    }

    /// Goal: each delayed direction is queued once, the other direction of a one-way delay
    /// not at all, and an empty list still rewrites (so clears) the table.
    #[test]
    fn delay_rules_queue_each_listed_direction_only() {
        let a = Ipv4Addr::new(10, 231, 0, 1);
        let b = Ipv4Addr::new(10, 231, 0, 2);
        let link = |from, to| crate::delay::Link {
            from,
            to,
            delay: std::time::Duration::from_millis(100),
            jitter: std::time::Duration::ZERO,
        };
        let script = delay_rules(&[link(a, b), link(a, b)]);
        assert_eq!(script.matches("-j NFQUEUE --queue-num 0 --queue-bypass").count(), 1, "{script}");
        assert!(script.contains("-s 10.231.0.1/32 -d 10.231.0.2/32"));
        assert!(!script.contains("-s 10.231.0.2/32"));
        assert_eq!(delay_rules(&[]), "*mangle\n:FORWARD ACCEPT [0:0]\nCOMMIT\n");
    }
}
