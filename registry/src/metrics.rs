//! Every metric the registry exports, with its name and help text, rendered in the
//! Prometheus text format. Names are `fenceflake_registry_<name>_<unit>`; labels come only
//! from small fixed sets (RPC names, states), never from holders or addresses.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use fenceflake_proto::metrics::{preamble, single, Histogram};

use crate::rpc::Rpc;

/// Metric names, in one place so alerts and dashboards can be checked against them.
pub mod names {
    pub const GRANTS: &str = "fenceflake_registry_grants_total";
    pub const RENEWALS: &str = "fenceflake_registry_renewals_total";
    pub const MEMORY_RENEWALS: &str = "fenceflake_registry_memory_renewals_total";
    pub const WINDOW_EXTENSIONS: &str = "fenceflake_registry_window_extensions_total";
    pub const FORWARDED_RENEWALS: &str = "fenceflake_registry_forwarded_renewals_total";
    pub const FORWARDED_RENEWAL_CALLS: &str = "fenceflake_registry_forwarded_renewal_calls_total";
    pub const RELEASES: &str = "fenceflake_registry_releases_total";
    pub const FENCED_RENEWALS: &str = "fenceflake_registry_fenced_renewals_total";
    pub const CANARY_HITS: &str = "fenceflake_registry_canary_hits_total";
    pub const SUPERSEDED_RENEWALS: &str = "fenceflake_registry_superseded_renewals_total";
    pub const REFUSED_CALLS: &str = "fenceflake_registry_refused_calls_total";
    pub const DUPLICATE_CLAIMS: &str = "fenceflake_registry_duplicate_claims_total";
    pub const EXHAUSTED: &str = "fenceflake_registry_acquire_exhausted_total";
    pub const NO_QUORUM: &str = "fenceflake_registry_no_quorum_rejections_total";
    pub const CAMPAIGNS: &str = "fenceflake_registry_campaigns_total";
    pub const PRE_VOTES_DENIED: &str = "fenceflake_registry_pre_votes_denied_total";
    pub const LEASE_ROUNDS_UNHEARD: &str = "fenceflake_registry_lease_rounds_unheard_total";
    pub const REQUEST_SECONDS: &str = "fenceflake_registry_request_duration_seconds";
    pub const REQUEST_ERRORS: &str = "fenceflake_registry_request_errors_total";
    pub const TERM: &str = "fenceflake_registry_raft_term";
    pub const LEADER_ID: &str = "fenceflake_registry_raft_leader_id";
    pub const IS_LEADER: &str = "fenceflake_registry_raft_is_leader";
    pub const COMMIT_INDEX: &str = "fenceflake_registry_raft_commit_index";
    pub const APPLIED_INDEX: &str = "fenceflake_registry_raft_applied_index";
    pub const LAST_LOG_INDEX: &str = "fenceflake_registry_raft_last_log_index";
    pub const QUORUM_ACK_AGE: &str = "fenceflake_registry_raft_quorum_ack_age_seconds";
    pub const LEASES: &str = "fenceflake_registry_leases";
    pub const DB_BYTES: &str = "fenceflake_registry_db_size_bytes";
    pub const CLOCK_OFFSET: &str = "fenceflake_registry_clock_offset_seconds";
    pub const CLOCK_EXCLUDED: &str = "fenceflake_registry_clock_excluded";
}

/// Latency of one RPC, and how many of its calls failed.
#[derive(Debug, Default)]
struct RpcStats {
    latency: Histogram,
    errors: AtomicU64,
}

/// Counters and histograms updated on the request path (lock-free).
#[derive(Debug, Default)]
pub struct RegistryMetrics {
    pub grants: AtomicU64,
    pub renewals: AtomicU64,
    /// Counted by the leader that answered them.
    pub memory_renewals: AtomicU64,
    pub window_extensions: AtomicU64,
    /// Counted by the follower that forwarded them.
    pub forwarded_renewals: AtomicU64,
    pub forwarded_renewal_calls: AtomicU64,
    pub releases: AtomicU64,
    pub fenced_renewals: AtomicU64,
    pub canary_hits: AtomicU64,
    pub superseded_renewals: AtomicU64,
    pub refused_calls: AtomicU64,
    pub duplicate_claims: AtomicU64,
    pub exhausted: AtomicU64,
    pub no_quorum: AtomicU64,
    /// Elections this node started after a majority granted its pre-vote.
    pub campaigns: AtomicU64,
    /// Pre-vote rounds of this node that no majority granted.
    pub pre_votes_denied: AtomicU64,
    /// Leader-lease rounds that took no lease: a voter was not heard since a failed probe.
    pub lease_rounds_unheard: AtomicU64,
    rpcs: [RpcStats; Rpc::ALL.len()],
}

/// Point-in-time values read at scrape time.
#[derive(Debug, Default, Clone)]
pub struct Gauges {
    pub term: u64,
    pub leader_id: u64,
    pub is_leader: bool,
    pub commit_index: u64,
    pub applied_index: u64,
    pub last_log_index: u64,
    pub quorum_ack_age: Option<Duration>,
    pub leases_held: u64,
    pub leases_free: u64,
    /// Held, but this (leader) node has seen no renewal for ttl + cool-down: grantable.
    pub leases_expired: u64,
    pub leases_quarantined: u64,
    pub db_bytes: u64,
    /// This node's wall clock minus the median of a quorum's, in seconds (the middle of the
    /// proven interval); `None` while too few peers answered clock probes.
    pub clock_offset_seconds: Option<f64>,
    /// The clock check keeps this node from campaigning and leading.
    pub clock_excluded: bool,
}

pub fn inc(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl RegistryMetrics {
    /// Record one RPC's latency and whether it failed.
    pub fn observe(&self, rpc: Rpc, elapsed: Duration, failed: bool) {
        let stats = &self.rpcs[rpc.index()];
        stats.latency.observe(elapsed);
        if failed {
            stats.errors.fetch_add(1, Ordering::Relaxed);
        }
    }

    /// The counters: (name, help, value).
    fn counters(&self) -> [(&'static str, &'static str, &AtomicU64); 17] {
        [
            (names::GRANTS, "Leases granted (new grants, and re-acquires by the same holder).", &self.grants),
            (names::RENEWALS, "Leases renewed.", &self.renewals),
            (
                names::MEMORY_RENEWALS,
                "Renewals this node answered as leader from memory, under its leader lease, without a log write.",
                &self.memory_renewals,
            ),
            (
                names::WINDOW_EXTENSIONS,
                "High-water windows this leader extended in the background (one log write covers the renewals after).",
                &self.window_extensions,
            ),
            (
                names::FORWARDED_RENEWALS,
                "Renewals this node forwarded to the leader as a follower in ForwardRenewals calls (one or more per call).",
                &self.forwarded_renewals,
            ),
            (
                names::FORWARDED_RENEWAL_CALLS,
                "Peer calls that carried them: renewals over calls is the average batch.",
                &self.forwarded_renewal_calls,
            ),
            (names::RELEASES, "Leases released.", &self.releases),
            (
                names::FENCED_RENEWALS,
                "Renewals or releases refused because their token was stale (FENCED).",
                &self.fenced_renewals,
            ),
            (
                names::SUPERSEDED_RENEWALS,
                "Renewals refused SUPERSEDED: a newer process of the same holder took the lease over while the old one \
                 still ran (a copied worker state dir).",
                &self.superseded_renewals,
            ),
            (
                names::CANARY_HITS,
                "Stale renewals that proved two holders minted at overlapping times (the ID is quarantined).",
                &self.canary_hits,
            ),
            (
                names::DUPLICATE_CLAIMS,
                "Acquires of a specific worker ID that another holder holds (copy-pasted manifests).",
                &self.duplicate_claims,
            ),
            (names::EXHAUSTED, "Acquires refused because no worker ID was free.", &self.exhausted),
            (
                names::REFUSED_CALLS,
                "Calls refused UNAUTHENTICATED or PERMISSION_DENIED (no or wrong certificate, wrong role, another identity's lease).",
                &self.refused_calls,
            ),
            (names::NO_QUORUM, "Requests refused because the leader could not confirm a quorum.", &self.no_quorum),
            (
                names::CAMPAIGNS,
                "Elections this node started after a majority of the voters granted its pre-vote.",
                &self.campaigns,
            ),
            (
                names::PRE_VOTES_DENIED,
                "Pre-vote rounds of this node that no majority granted (its log says why, per voter): it heard no leader \
                 while the voters did (a paused host, a link to the leader down) or could not reach them. It deposes nobody.",
                &self.pre_votes_denied,
            ),
            (
                names::LEASE_ROUNDS_UNHEARD,
                "Leader-lease rounds that took no lease because a voter that may have acknowledged them has not answered a \
                 clock probe since one failed (a restart behind a partition could hide a smaller election timeout): renewals \
                 take the log path until a probe hears it. Rising steadily: a voter answers appends but not probes.",
                &self.lease_rounds_unheard,
            ),
        ]
    }

    /// The Prometheus text exposition of everything.
    pub fn render(&self, g: &Gauges) -> String {
        let mut out = String::with_capacity(8192);
        for (name, help, value) in self.counters() {
            let _ =
                writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter\n{name} {}", value.load(Ordering::Relaxed));
        }
        self.render_histograms(&mut out);
        let gauges: [(&str, &str, f64); 10] = [
            (names::TERM, "Current Raft term of this node.", g.term as f64),
            (names::LEADER_ID, "Node id of the leader this node knows (0: none).", g.leader_id as f64),
            (names::IS_LEADER, "1 if this node is the leader.", f64::from(u8::from(g.is_leader))),
            (names::COMMIT_INDEX, "Raft commit index known to this node.", g.commit_index as f64),
            (names::APPLIED_INDEX, "Last Raft log index applied to the lease table.", g.applied_index as f64),
            (names::LAST_LOG_INDEX, "Last Raft log index stored on this node.", g.last_log_index as f64),
            (
                names::QUORUM_ACK_AGE,
                "Leader only: seconds since a quorum last acknowledged this leader (-1 elsewhere).",
                g.quorum_ack_age.map_or(-1.0, |d| d.as_secs_f64()),
            ),
            (names::DB_BYTES, "Size of this node's sled database on disk.", g.db_bytes as f64),
            (
                names::CLOCK_OFFSET,
                "This node's wall clock minus the median of a quorum of the voters' clocks, as probed over the peer port (NaN until a quorum answered).",
                g.clock_offset_seconds.unwrap_or(f64::NAN),
            ),
            (
                names::CLOCK_EXCLUDED,
                "1 if this node may not campaign or lead: its wall clock is not proven within --max-clock-offset of the quorum's median.",
                f64::from(u8::from(g.clock_excluded)),
            ),
        ];
        for (name, help, value) in gauges {
            single(&mut out, name, "gauge", help, value);
        }
        let name = names::LEASES;
        preamble(
            &mut out,
            name,
            "gauge",
            "Worker IDs by state, as `ctl leases` shows them on this node (expired: only on the leader, which alone decides expiry; grantable like free).",
        );
        let states = [
            ("held", g.leases_held),
            ("free", g.leases_free),
            ("expired", g.leases_expired),
            ("quarantined", g.leases_quarantined),
        ];
        for (state, value) in states {
            let _ = writeln!(out, "{name}{{state=\"{state}\"}} {value}");
        }
        out
    }

    fn render_histograms(&self, out: &mut String) {
        let name = names::REQUEST_SECONDS;
        preamble(out, name, "histogram", "Latency of registry RPCs served on this node (including forwarding).");
        for (rpc, stats) in Rpc::ALL.iter().zip(&self.rpcs) {
            stats.latency.render(out, name, &format!("rpc=\"{}\"", rpc.name()));
        }
        let name = names::REQUEST_ERRORS;
        preamble(out, name, "counter", "Registry RPCs that returned an error status.");
        for (rpc, stats) in Rpc::ALL.iter().zip(&self.rpcs) {
            let _ = writeln!(out, "{name}{{rpc=\"{}\"}} {}", rpc.name(), stats.errors.load(Ordering::Relaxed));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_every_name_is_exported() {
        let m = RegistryMetrics::default();
        m.observe(Rpc::Renew, Duration::from_micros(700), false);
        m.observe(Rpc::Renew, Duration::from_millis(30), true);
        inc(&m.canary_hits);
        let text = m.render(&Gauges::default());
        assert!(text.contains("fenceflake_registry_request_duration_seconds_bucket{rpc=\"Renew\",le=\"0.001\"} 1"));
        assert!(text.contains("fenceflake_registry_request_duration_seconds_bucket{rpc=\"Renew\",le=\"0.05\"} 2"));
        assert!(text.contains("fenceflake_registry_request_errors_total{rpc=\"Renew\"} 1"));
        assert!(text.contains("fenceflake_registry_canary_hits_total 1"));
        for name in [names::TERM, names::LEADER_ID, names::COMMIT_INDEX, names::LEASES, names::DUPLICATE_CLAIMS] {
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} missing");
        }
    }
}
