//! `fenceflake decode`: split IDs into their timestamp (RFC 3339), worker ID and sequence.

use clap::Args;
use fenceflake_worker::limits::{DEFAULT_SEQUENCE_BITS, DEFAULT_WORKER_ID_BITS};
use fenceflake_worker::Layout;

/// The registry's default ID epoch: 2024-01-01T00:00:00Z (also `fenceflake dev`'s, so the
/// IDs it prints decode with the defaults).
pub const DEFAULT_EPOCH_MS: u64 = 1_704_067_200_000;

/// Decode IDs into timestamp, worker ID and sequence.
#[derive(Debug, Args)]
pub struct DecodeArgs {
    /// The IDs, as printed by `fenceflake mint`.
    #[arg(required = true)]
    ids: Vec<u64>,
    /// ID time origin of the deployment, ms since the Unix epoch (the registry's --epoch-ms).
    #[arg(long, env = "FENCEFLAKE_EPOCH_MS", default_value_t = DEFAULT_EPOCH_MS)]
    epoch_ms: u64,
    /// Worker-ID bits of the layout (the registry's --worker-id-bits).
    #[arg(long, env = "FENCEFLAKE_WORKER_ID_BITS", default_value_t = DEFAULT_WORKER_ID_BITS)]
    worker_id_bits: u8,
    /// Sequence bits of the layout (the workers' --sequence-bits).
    #[arg(long, env = "FENCEFLAKE_SEQUENCE_BITS", default_value_t = DEFAULT_SEQUENCE_BITS)]
    sequence_bits: u8,
    /// Print one JSON object per line instead of a table.
    #[arg(long)]
    json: bool,
}

/// `ts_ms` as RFC 3339 with milliseconds, in UTC.
pub fn rfc3339(ts_ms: u64) -> String {
    i64::try_from(ts_ms).ok().and_then(chrono::DateTime::from_timestamp_millis).map_or_else(
        || format!("{ts_ms} ms (out of range)"),
        |t| t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
    )
}

/// One decoded ID as a table row: `ID  TIMESTAMP  WORKER  SEQUENCE`.
pub fn row(layout: &Layout, id: u64) -> String {
    let d = layout.decode(id);
    format!("{id:<20} {:<25} {:>6} {:>8}", rfc3339(d.ts_ms), d.worker_id, d.sequence)
}

pub fn header() -> String {
    format!("{:<20} {:<25} {:>6} {:>8}", "ID", "TIMESTAMP", "WORKER", "SEQUENCE")
}

pub fn run(args: DecodeArgs) -> anyhow::Result<()> {
    let layout = Layout::new(args.epoch_ms, args.worker_id_bits, args.sequence_bits)?;
    if !args.json {
        println!("{}", header());
    }
    for id in args.ids {
        if args.json {
            let d = layout.decode(id);
            let line = serde_json::json!({
                "id": id,
                "timestamp": rfc3339(d.ts_ms),
                "ts_ms": d.ts_ms,
                "worker_id": d.worker_id.get(),
                "sequence": d.sequence,
            });
            println!("{line}");
        } else {
            println!("{}", row(&layout, id));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Goal: decoding the default layout gives the documented fields and an RFC 3339 time.
    #[test]
    fn decodes_the_default_layout() {
        let layout = Layout::with_default_bits(DEFAULT_EPOCH_MS).expect("default layout");
        let id = (1_500u64 << 22) | (7 << 12) | 9;
        assert_eq!(rfc3339(DEFAULT_EPOCH_MS + 1_500), "2024-01-01T00:00:01.500Z");
        let line = row(&layout, id);
        assert!(line.contains("2024-01-01T00:00:01.500Z") && line.contains(" 7 ") && line.ends_with(" 9"), "{line}");
    }
}
