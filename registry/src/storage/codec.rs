//! Versioned encoding of everything the registry keeps in sled: one format byte, then JSON.
//! The byte lets a later release change the encoding without misreading old data.

use serde::de::DeserializeOwned;
use serde::Serialize;

const FORMAT_V1: u8 = 1;

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
    let mut out = vec![FORMAT_V1];
    serde_json::to_writer(&mut out, value)?;
    Ok(out)
}

pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    match bytes.split_first() {
        None => Err(CodecError::Empty),
        Some((&FORMAT_V1, body)) => Ok(serde_json::from_slice(body)?),
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
    }
}
