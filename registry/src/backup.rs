//! The backup file `ctl snapshot export` writes and `ctl snapshot import` reads: a JSON
//! document naming its format and version, where it came from, and a CRC-32 of the table, so
//! a truncated, edited or foreign file is refused before anything reaches Raft.

use serde::{Deserialize, Serialize};

use crate::lease::TableBackup;
use crate::limits::BACKUP_BYTES_MAX;

/// The `format` field of every backup file.
pub const FORMAT: &str = "fenceflake-registry-backup";
/// The only version this build reads and writes.
pub const VERSION: u32 = 1;

/// Where a backup came from (for the operator; the restore does not depend on it).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Provenance {
    pub cluster_id: String,
    pub applied_index: u64,
    pub exported_at_ms: u64,
}

#[derive(Debug, Serialize, Deserialize)]
struct BackupFile {
    format: String,
    version: u32,
    #[serde(flatten)]
    provenance: Provenance,
    /// CRC-32 (IEEE) of the compact JSON encoding of `table`.
    crc32: u32,
    table: TableBackup,
}

#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    #[error("{bytes} bytes is over the {BACKUP_BYTES_MAX}-byte backup limit")]
    TooLarge { bytes: usize },
    #[error("not a backup file: {0}")]
    Json(#[from] serde_json::Error),
    #[error("format {found:?} is not {FORMAT:?}")]
    Format { found: String },
    #[error("version {found} is not supported (this build reads version {VERSION})")]
    Version { found: u32 },
    #[error(
        "checksum mismatch (file says {stored:08x}, table hashes to {computed:08x}): the file is damaged or was edited"
    )]
    Checksum { stored: u32, computed: u32 },
    #[error("{0}")]
    Inconsistent(String),
}

fn table_crc(table: &TableBackup) -> Result<u32, serde_json::Error> {
    Ok(crc32fast::hash(&serde_json::to_vec(table)?))
}

/// Encode `table` as a backup file (pretty-printed: operators read and diff these).
pub fn encode(table: &TableBackup, provenance: Provenance) -> Result<Vec<u8>, BackupError> {
    let file = BackupFile {
        format: FORMAT.to_string(),
        version: VERSION,
        provenance,
        crc32: table_crc(table)?,
        table: table.clone(),
    };
    Ok(serde_json::to_vec_pretty(&file)?)
}

/// Decode and check a backup file.
pub fn decode(bytes: &[u8]) -> Result<(TableBackup, Provenance), BackupError> {
    if bytes.len() > BACKUP_BYTES_MAX {
        return Err(BackupError::TooLarge { bytes: bytes.len() });
    }
    let file: BackupFile = serde_json::from_slice(bytes)?;
    if file.format != FORMAT {
        return Err(BackupError::Format { found: file.format });
    }
    if file.version != VERSION {
        return Err(BackupError::Version { found: file.version });
    }
    let computed = table_crc(&file.table)?;
    if computed != file.crc32 {
        return Err(BackupError::Checksum { stored: file.crc32, computed });
    }
    file.table.check().map_err(BackupError::Inconsistent)?;
    Ok((file.table, file.provenance))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::lease::{ClusterConfig, Command, LeaseTable, LogPos};

    fn table() -> TableBackup {
        let mut t = LeaseTable::default();
        let config =
            ClusterConfig { epoch_ms: 1, worker_id_bits: 3, sequence_bits: 12, ttl_ms_max: 1000, cool_down_ms: 10 };
        t.apply(LogPos::new(1, 0), 5, &Command::Configure(config));
        t.apply(
            LogPos::new(2, 0),
            5,
            &Command::Quarantine(crate::lease::Quarantine { worker_id: crate::lease::WorkerId(2), reason: "x".into() }),
        );
        t.backup().expect("configured")
    }

    fn provenance() -> Provenance {
        Provenance { cluster_id: "c".into(), applied_index: 2, exported_at_ms: 9 }
    }

    /// Goal: a backup round-trips, and damage, edits, foreign documents and other versions
    /// are each refused with their own error.
    #[test]
    fn round_trips_and_refuses_damage() {
        let bytes = encode(&table(), provenance()).unwrap();
        assert_eq!(decode(&bytes).unwrap(), (table(), provenance()));

        let text = String::from_utf8(bytes.clone()).unwrap();
        let edited = text.replacen("\"x\"", "\"y\"", 1);
        assert!(matches!(decode(edited.as_bytes()), Err(BackupError::Checksum { .. })), "edited reason");
        assert!(matches!(decode(&bytes[..bytes.len() / 2]), Err(BackupError::Json(_))), "truncated");
        let foreign = text.replacen(FORMAT, "something-else", 1);
        assert!(matches!(decode(foreign.as_bytes()), Err(BackupError::Format { .. })));
        let newer = text.replacen("\"version\": 1", "\"version\": 2", 1);
        assert!(matches!(decode(newer.as_bytes()), Err(BackupError::Version { found: 2 })));
        let huge = vec![b' '; BACKUP_BYTES_MAX + 1];
        assert!(matches!(decode(&huge), Err(BackupError::TooLarge { .. })));
    }

    /// A table whose every one of 2^16 worker IDs is held, each re-granted once, with
    /// production-sized names: a cloud host name, pid and boot nonce as the holder, a SPIFFE
    /// ID per host as the owner (and as the past owner of the earlier token).
    fn full_sixteen_bit_table() -> TableBackup {
        use crate::lease::record::PastOwner;
        use crate::lease::{HolderId, Incarnation, LeaseRecord, Token, WorkerId};
        let config = ClusterConfig {
            epoch_ms: 1_704_067_200_000,
            worker_id_bits: 16,
            sequence_bits: 6,
            ttl_ms_max: 60_000,
            cool_down_ms: 1_000,
        };
        let wall = 1_764_000_000_000u64;
        let records: Vec<_> = (0..1u32 << 16)
            .map(|w| {
                let host = format!("ip-10-{}-{}-{}.eu-west-1.compute.internal", w >> 12, (w >> 6) & 63, w & 63);
                let owner = format!("spiffe://prod.example.com/fenceflake/worker/{host}");
                let token = Token((u64::from(w) + 70_000) << 12);
                let record = LeaseRecord {
                    holder: Some(HolderId(format!("{host}/{}/{:016x}", 40_000 + w, u64::from(w) * 7919))),
                    token,
                    ttl_ms: 10_000,
                    last_renew: LogPos(token.0),
                    high_water_ms: wall + 40_000,
                    not_before_ms: wall - 20_000,
                    max_minted_ms: wall - 3_000,
                    quarantine: None,
                    owner: Some(owner.clone()),
                    past_owners: vec![PastOwner { token: Token(u64::from(w + 1) << 12), owner }],
                    incarnation: Some(Incarnation(0x9e37_79b9_7f4a_7c15 ^ u64::from(w))),
                    superseded: None,
                };
                (WorkerId(w), record)
            })
            .collect();
        let last_token = records.iter().map(|(_, r)| r.token).max().expect("records");
        TableBackup { config, generation: 0, last_token, records, audit: Vec::new() }
    }

    /// Goal (issue 11): a full 16-bit table (65,536 held IDs with production-sized names)
    /// exports as a backup file under the backup limit, imports (decodes and passes the
    /// restore's checks), and its restore command fits one Raft entry — so fits a peer message
    /// — with room to spare. Its encoded size is printed for BENCHMARKS.md.
    #[test]
    fn a_full_sixteen_bit_table_exports_and_restores_within_the_limits() {
        use crate::lease::{Command, TokenOffset};
        use crate::limits::ENTRY_BYTES_MAX;
        let table = full_sixteen_bit_table();
        let file = encode(&table, provenance()).unwrap();
        let (decoded, _) = decode(&file).expect("a full table imports");
        assert_eq!(decoded.records.len(), 1 << 16);
        let restore = Command::RestoreWithOffset {
            backup: Box::new(decoded),
            token_offset: TokenOffset::from_random_bits(u64::MAX),
            window_ms: 30_000,
        };
        let entry = serde_json::to_vec(&restore).unwrap().len();
        eprintln!("full 16-bit table: backup file {} bytes (limit {BACKUP_BYTES_MAX}), restore entry {entry} bytes (limit {ENTRY_BYTES_MAX})", file.len());
        assert!(entry <= ENTRY_BYTES_MAX / 2, "restore entry {entry} bytes: under half of headroom");
    }

    mod props {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::*;
        use crate::strategies;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// Goal (issue 9): no file panics the decoder, and what it accepts passes the
            /// checks a restore repeats in apply.
            #[test]
            fn arbitrary_files_never_panic(bytes in vec(any::<u8>(), 0..256), table in strategies::any_backup()) {
                let forged = encode(&table, provenance()).unwrap();
                for file in [&bytes[..], &forged[..]] {
                    if let Ok((table, _)) = decode(file) {
                        prop_assert_eq!(table.check(), Ok(()));
                    }
                }
            }

            /// Goal (issue 9): a valid backup decodes as written; with one byte changed it is
            /// refused, or decodes to the very same table (the byte was layout or provenance,
            /// which the checksum does not cover); cut short anywhere it is refused.
            #[test]
            fn damaged_backups_are_refused(
                table in strategies::valid_backup(),
                at in any::<prop::sample::Index>(),
                flip in 1..=u8::MAX,
            ) {
                prop_assert_eq!(table.check(), Ok(()));
                let mut bytes = encode(&table, provenance()).unwrap();
                prop_assert_eq!(decode(&bytes).unwrap(), (table.clone(), provenance()));
                let i = at.index(bytes.len());
                prop_assert!(decode(&bytes[..i]).is_err(), "cut at {}", i);
                bytes[i] ^= flip;
                if let Ok((decoded, _)) = decode(&bytes) {
                    prop_assert_eq!(decoded, table, "byte {} xor {}", i, flip);
                }
            }
        }
    }
}
