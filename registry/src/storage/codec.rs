//! Versioned encoding of everything the registry keeps in its `Db`: one format byte, then JSON.
//! The byte lets a later release change the encoding without misreading old data.

use serde::de::DeserializeOwned;
use serde::Serialize;

const FORMAT_V1: u8 = 1;
/// The same JSON, for a snapshot of a table whose apply rules were raised past
/// [`Rules::UNGATED`](crate::lease::Rules::UNGATED): a release that cannot apply them refuses
/// to read it (and so to install it) instead of reading it and applying later entries
/// differently.
const FORMAT_V2: u8 = 2;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("stored value is empty")]
    Empty,
    #[error("stored value has unknown format byte {0} (written by a newer fenceflake?)")]
    UnknownFormat(u8),
    #[error("stored value does not decode: {0}")]
    Json(#[from] serde_json::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_as(FORMAT_V1, value)
}

/// [`encode`], marked so that only a release that knows the raised apply rules reads it.
pub fn encode_for_raised_rules<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_as(FORMAT_V2, value)
}

fn encode_as<T: Serialize>(format: u8, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = vec![format];
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&(FORMAT_V1 | FORMAT_V2), body)) => Ok(serde_json::from_slice(body)?),
        Some((&other, _)) => Err(CodecError::UnknownFormat(other)),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn round_trips_and_refuses_unknown_formats() {
        let bytes = encode(&(7u32, "x")).unwrap();
        assert_eq!(decode::<(u32, String)>(&bytes).unwrap(), (7, "x".to_string()));
        assert!(matches!(decode::<u32>(&[9, b'1']), Err(CodecError::UnknownFormat(9))));
        assert!(matches!(decode::<u32>(&[]), Err(CodecError::Empty)));
        let raised = encode_for_raised_rules(&5u32).unwrap();
        assert_eq!((raised[0], decode::<u32>(&raised).unwrap()), (FORMAT_V2, 5));
    }

    /// Goal: issue 9 — a cluster config stored before the registry recorded the sequence width
    /// (in the table's globals, or a Configure entry of the log) reads as 12, the width every
    /// worker of such a cluster defaulted to; one stored now keeps its own. Globals stored
    /// before token offsets read as offset 0 (their tokens stay what they were).
    #[test]
    fn configs_stored_before_the_sequence_width_read_as_twelve() {
        use crate::lease::{ClusterConfig, Command, TableGlobals, TokenOffset};
        let old = r#"{"epoch_ms":1704067200000,"worker_id_bits":10,"ttl_ms_max":60000,"cool_down_ms":1000}"#;
        let globals = format!(r#"{{"config":{old},"last_token":4096,"generation":0,"served_nodes":[1,2]}}"#);
        let mut bytes = vec![FORMAT_V1];
        bytes.extend_from_slice(globals.as_bytes());
        let read: TableGlobals = decode(&bytes).unwrap();
        assert_eq!(read.token_offset, TokenOffset::NONE);
        let config = read.config.unwrap();
        assert_eq!((config.epoch_ms, config.worker_id_bits, config.sequence_bits), (1_704_067_200_000, 10, 12));

        let mut bytes = vec![FORMAT_V1];
        bytes.extend_from_slice(format!(r#"{{"Configure":{old}}}"#).as_bytes());
        match decode::<Command>(&bytes).unwrap() {
            Command::Configure(config) => assert_eq!(config.sequence_bits, 12),
            other => panic!("decoded {other:?}"),
        }

        let now = ClusterConfig { epoch_ms: 5, worker_id_bits: 8, sequence_bits: 14, ttl_ms_max: 1, cool_down_ms: 1 };
        assert_eq!(decode::<ClusterConfig>(&encode(&now).unwrap()).unwrap(), now);
    }

    mod props {
        use proptest::collection::vec;
        use proptest::prelude::*;

        use super::super::*;
        use crate::lease::{AuditEntry, Batch, Command, LeaseRecord, LeaseTable, TableGlobals};
        use crate::strategies;

        /// Decode `bytes` as every type the registry keeps in its `Db`; none may panic.
        fn decode_all(bytes: &[u8]) {
            let _ = decode::<Command>(bytes);
            let _ = decode::<Batch>(bytes);
            let _ = decode::<LeaseRecord>(bytes);
            let _ = decode::<AuditEntry>(bytes);
            let _ = decode::<TableGlobals>(bytes);
            let _ = decode::<LeaseTable>(bytes);
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(128))]

            /// Goal (issue 9): no stored value panics the decoder: arbitrary bytes, and valid
            /// encodings with one byte changed or cut short (corrupt storage is an error).
            #[test]
            fn decoding_never_panics(
                bytes in vec(any::<u8>(), 0..64),
                batch in strategies::batch(),
                at in any::<prop::sample::Index>(),
                flip in 1..=u8::MAX,
            ) {
                decode_all(&bytes);
                let mut encoded = encode(&batch).unwrap();
                let i = at.index(encoded.len());
                decode_all(&encoded[..i]);
                encoded[i] ^= flip;
                decode_all(&encoded);
            }

            /// Goal: whatever the registry stores decodes to what was stored.
            #[test]
            fn stored_values_round_trip(
                batch in strategies::batch(),
                record in strategies::record(),
                audit in strategies::audit_entry(),
                globals in strategies::globals(),
            ) {
                prop_assert_eq!(decode::<Batch>(&encode(&batch).unwrap()).unwrap(), batch.clone());
                for command in batch.commands {
                    prop_assert_eq!(decode::<Command>(&encode(&command).unwrap()).unwrap(), command);
                }
                prop_assert_eq!(decode::<LeaseRecord>(&encode(&record).unwrap()).unwrap(), record);
                prop_assert_eq!(decode::<AuditEntry>(&encode(&audit).unwrap()).unwrap(), audit);
                prop_assert_eq!(decode::<TableGlobals>(&encode(&globals).unwrap()).unwrap(), globals);
            }
        }
    }
}
