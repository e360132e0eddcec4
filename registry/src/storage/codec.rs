//! Versioned encoding of everything the registry keeps in its `Db`: one format byte, then JSON.
//! The byte lets a later release change the encoding without misreading old data.

use std::io::{Read, Write};

use serde::de::DeserializeOwned;
use serde::Serialize;

const FORMAT_V1: u8 = 1;
/// The same JSON, for a snapshot of a table whose apply rules were raised past
/// [`Rules::UNGATED`](crate::lease::Rules::UNGATED): a release that cannot apply them refuses
/// to read it (and so to install it) instead of reading it and applying later entries
/// differently.
const FORMAT_V2: u8 = 2;
/// A head (JSON) and a large opaque body kept as it is: [`encode_framed`].
const FORMAT_FRAME: u8 = 3;

#[derive(Debug, thiserror::Error)]
pub enum CodecError {
    #[error("stored value is empty")]
    Empty,
    #[error("stored value has unknown format byte {0} (written by a newer fenceflake?)")]
    UnknownFormat(u8),
    #[error("stored value does not decode: {0}")]
    Json(#[from] serde_json::Error),
    #[error("stored frame is cut short: {0}")]
    ShortFrame(&'static str),
    #[error("stored value cannot be read or written: {0}")]
    Io(#[from] std::io::Error),
}

pub fn encode<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_as(FORMAT_V1, value)
}

/// [`encode`], marked so that only a release that knows the raised apply rules reads it.
pub fn encode_for_raised_rules<T: Serialize>(value: &T) -> Result<Vec<u8>, CodecError> {
    encode_as(FORMAT_V2, value)
}

fn encode_as<T: Serialize>(format: u8, value: &T) -> Result<Vec<u8>, CodecError> {
    let mut out = Vec::new();
    encode_as_into(&mut out, format, value)?;
    Ok(out)
}

/// [`encode`], or with `raised` [`encode_for_raised_rules`], written straight into `out`: for a
/// value too large to build in memory first (a snapshot of the whole table).
pub fn encode_into<W: Write, T: Serialize>(out: W, value: &T, raised: bool) -> Result<(), CodecError> {
    encode_as_into(out, if raised { FORMAT_V2 } else { FORMAT_V1 }, value)
}

fn encode_as_into<W: Write, T: Serialize>(mut out: W, format: u8, value: &T) -> Result<(), CodecError> {
    out.write_all(&[format])?;
    serde_json::to_writer(out, value)?;
    Ok(())
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&(FORMAT_V1 | FORMAT_V2), body)) => Ok(serde_json::from_slice(body)?),
        Some((&other, _)) => Err(CodecError::UnknownFormat(other)),
    }
}

/// [`decode`], read from `input` as it goes (give it a buffered reader).
pub fn decode_from<R: Read, T: DeserializeOwned>(mut input: R) -> Result<T, CodecError> {
    let mut format = [0u8; 1];
    match input.read(&mut format)? {
        0 => Err(CodecError::Empty),
        _ if matches!(format[0], FORMAT_V1 | FORMAT_V2) => Ok(serde_json::from_reader(input)?),
        _ => Err(CodecError::UnknownFormat(format[0])),
    }
}

/// Encode `head` as JSON followed by `body` as it is: the format byte, the head's length
/// (u32, little-endian), the head, the body. For a value whose bulk is already-encoded bytes
/// (a snapshot: its metadata, then the encoded table): JSON would spell the body as an array
/// of numbers, about 3.6 bytes per byte, and build that copy in memory first.
pub fn encode_framed<H: Serialize>(head: &H, body: &[u8]) -> Result<Vec<u8>, CodecError> {
    let head = serde_json::to_vec(head)?;
    let head_len = u32::try_from(head.len()).map_err(|_| CodecError::ShortFrame("head over 4 GiB"))?;
    let mut out = Vec::with_capacity(1 + 4 + head.len() + body.len());
    out.push(FORMAT_FRAME);
    out.extend_from_slice(&head_len.to_le_bytes());
    out.extend_from_slice(&head);
    out.extend_from_slice(body);
    Ok(out)
}

/// Whether `bytes` were written by [`encode_framed`] (rather than [`encode`]).
pub fn is_framed(bytes: &[u8]) -> bool {
    bytes.first() == Some(&FORMAT_FRAME)
}

/// Decode what [`encode_framed`] wrote: the head, and the body as it was.
pub fn decode_framed<H: DeserializeOwned>(bytes: &[u8]) -> Result<(H, Vec<u8>), CodecError> {
    let rest = match bytes.split_first() {
        None => return Err(CodecError::Empty),
        Some((&FORMAT_FRAME, rest)) => rest,
        Some((&other, _)) => return Err(CodecError::UnknownFormat(other)),
    };
    let (len, rest) = rest.split_first_chunk::<4>().ok_or(CodecError::ShortFrame("no head length"))?;
    let head_len = usize::try_from(u32::from_le_bytes(*len)).map_err(|_| CodecError::ShortFrame("head length"))?;
    if rest.len() < head_len {
        return Err(CodecError::ShortFrame("head longer than the value"));
    }
    let (head, body) = rest.split_at(head_len);
    Ok((serde_json::from_slice(head)?, body.to_vec()))
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

    /// What is written or read as a stream is what `encode`/`decode` make of it, and a bad
    /// stream is an error.
    #[test]
    fn streamed_values_are_the_same_bytes() {
        for raised in [false, true] {
            let mut streamed = Vec::new();
            encode_into(&mut streamed, &(7u32, "x"), raised).unwrap();
            let whole = if raised { encode_for_raised_rules(&(7u32, "x")) } else { encode(&(7u32, "x")) };
            assert_eq!(streamed, whole.unwrap());
            assert_eq!(decode_from::<_, (u32, String)>(&streamed[..]).unwrap(), (7, "x".to_string()));
        }
        assert!(matches!(decode_from::<_, u32>(&[][..]), Err(CodecError::Empty)));
        assert!(matches!(decode_from::<_, u32>(&[9, b'1'][..]), Err(CodecError::UnknownFormat(9))));
        assert!(matches!(decode_from::<_, (u32, String)>(&[FORMAT_V1, b'['][..]), Err(CodecError::Json(_))));
    }

    /// A framed value keeps its body byte for byte (no JSON array of numbers), refuses to be
    /// read as plain JSON, and a cut or foreign frame is an error, not a panic.
    #[test]
    fn framed_values_keep_their_body_as_it_is() {
        let body: Vec<u8> = (0..=255u8).cycle().take(10_000).collect();
        let bytes = encode_framed(&("meta", 7u32), &body).unwrap();
        assert!(
            is_framed(&bytes) && bytes.len() < body.len() + 32,
            "{} bytes for a {}-byte body",
            bytes.len(),
            body.len()
        );
        assert_eq!(decode_framed::<(String, u32)>(&bytes).unwrap(), (("meta".to_string(), 7), body.clone()));
        assert!(matches!(decode::<(String, u32)>(&bytes), Err(CodecError::UnknownFormat(FORMAT_FRAME))));
        for cut in [0, 1, 3, 5, 12] {
            assert!(decode_framed::<(String, u32)>(&bytes[..cut]).is_err(), "cut at {cut}");
        }
        assert!(matches!(decode_framed::<u32>(&encode(&5u32).unwrap()), Err(CodecError::UnknownFormat(FORMAT_V1))));
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
            let _ = decode_framed::<TableGlobals>(bytes);
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
