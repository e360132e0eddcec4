//! The bit layout of an ID: `0 | timestamp | worker ID | sequence` (docs/design.md "ID layout").
//!
//! Pure: no clock, no IO. The top bit is always 0 so IDs stay positive as signed 64-bit
//! integers (Java, Postgres `bigint`).

use fenceflake_proto::wire::{layout_timestamp_bits, LayoutBound};

use crate::limits::{
    DEFAULT_SEQUENCE_BITS, DEFAULT_WORKER_ID_BITS, ID_PAYLOAD_BITS, SEQUENCE_BITS_MAX, TIMESTAMP_BITS_MIN,
    WORKER_ID_BITS_MAX,
};
use crate::worker_id::WorkerId;

/// A validated ID layout. Fields are private so every `Layout` in the program has passed
/// [`Layout::new`]; encode and decode then never need to re-check widths.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Layout {
    /// The ID time origin (ms since the Unix epoch), fixed per deployment and stored in the
    /// registry so no worker mints with a different one.
    epoch_ms: u64,
    /// Width of the worker-ID field.
    worker_id_bits: u8,
    /// Width of the sequence field.
    sequence_bits: u8,
}

/// Why a layout was rejected.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum LayoutError {
    #[error("worker_id_bits {bits} outside 1..={WORKER_ID_BITS_MAX}")]
    WorkerIdBits { bits: u8 },
    #[error("sequence_bits {bits} outside 1..={SEQUENCE_BITS_MAX}")]
    SequenceBits { bits: u8 },
    #[error("timestamp field of {timestamp_bits} bits is below the minimum of {TIMESTAMP_BITS_MIN}")]
    TimestampBits { timestamp_bits: u8 },
    #[error("epoch_ms {epoch_ms} leaves no room for the timestamp range below u64::MAX")]
    EpochTooLate { epoch_ms: u64 },
}

/// Why a value could not be encoded into an ID.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("timestamp {ts_ms} ms is before the ID epoch {epoch_ms} ms")]
    BeforeEpoch { ts_ms: u64, epoch_ms: u64 },
    #[error("timestamp {ts_ms} ms is beyond the last encodable ms {max_ts_ms}")]
    BeyondRange { ts_ms: u64, max_ts_ms: u64 },
    #[error("worker ID {worker_id} exceeds the layout's maximum {max_worker_id}")]
    WorkerIdOutOfRange { worker_id: WorkerId, max_worker_id: WorkerId },
    #[error("sequence {sequence} exceeds the layout's maximum {max_sequence}")]
    SequenceOutOfRange { sequence: u32, max_sequence: u32 },
}

/// The three fields of an ID, with the timestamp made absolute again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DecodedId {
    /// Milliseconds since the Unix epoch.
    pub ts_ms: u64,
    pub worker_id: WorkerId,
    pub sequence: u32,
}

impl Layout {
    /// A layout with `63 - worker_id_bits - sequence_bits` timestamp bits, if it passes the
    /// one layout rule of the wire contract (the registry checks the same rule before it
    /// bootstraps a cluster, so a cluster's layout is always one a worker accepts).
    pub fn new(epoch_ms: u64, worker_id_bits: u8, sequence_bits: u8) -> Result<Layout, LayoutError> {
        layout_timestamp_bits(epoch_ms, worker_id_bits, sequence_bits).map_err(|bound| match bound {
            LayoutBound::WorkerIdBits => LayoutError::WorkerIdBits { bits: worker_id_bits },
            LayoutBound::SequenceBits => LayoutError::SequenceBits { bits: sequence_bits },
            LayoutBound::TimestampBits { timestamp_bits } => LayoutError::TimestampBits { timestamp_bits },
            LayoutBound::EpochTooLate => LayoutError::EpochTooLate { epoch_ms },
        })?;
        Ok(Layout { epoch_ms, worker_id_bits, sequence_bits })
    }

    /// The default, Twitter-compatible 41/10/12 layout with the deployment's epoch.
    pub fn with_default_bits(epoch_ms: u64) -> Result<Layout, LayoutError> {
        Layout::new(epoch_ms, DEFAULT_WORKER_ID_BITS, DEFAULT_SEQUENCE_BITS)
    }

    pub fn epoch_ms(&self) -> u64 {
        self.epoch_ms
    }

    pub fn worker_id_bits(&self) -> u8 {
        self.worker_id_bits
    }

    pub fn sequence_bits(&self) -> u8 {
        self.sequence_bits
    }

    pub fn timestamp_bits(&self) -> u8 {
        ID_PAYLOAD_BITS - self.worker_id_bits - self.sequence_bits
    }

    /// Largest sequence number: IDs per millisecond per worker minus one.
    pub fn max_sequence(&self) -> u32 {
        low_mask(self.sequence_bits) as u32
    }

    /// Largest worker ID this layout can carry.
    pub fn max_worker_id(&self) -> WorkerId {
        WorkerId::new(low_mask(self.worker_id_bits) as u16)
    }

    /// Last absolute millisecond (since the Unix epoch) that can be encoded.
    pub fn max_ts_ms(&self) -> u64 {
        // Cannot overflow: `new` checked this sum.
        self.epoch_ms + self.max_ts_offset_ms()
    }

    fn max_ts_offset_ms(&self) -> u64 {
        low_mask(self.timestamp_bits())
    }

    /// The ID for `(ts_ms, worker_id, sequence)`; `ts_ms` is absolute (ms since the Unix
    /// epoch) and must lie within `epoch_ms..=max_ts_ms()`.
    pub fn encode(&self, ts_ms: u64, worker_id: WorkerId, sequence: u32) -> Result<u64, EncodeError> {
        let Some(offset_ms) = ts_ms.checked_sub(self.epoch_ms) else {
            return Err(EncodeError::BeforeEpoch { ts_ms, epoch_ms: self.epoch_ms });
        };
        if offset_ms > self.max_ts_offset_ms() {
            return Err(EncodeError::BeyondRange { ts_ms, max_ts_ms: self.max_ts_ms() });
        }
        if worker_id > self.max_worker_id() {
            return Err(EncodeError::WorkerIdOutOfRange { worker_id, max_worker_id: self.max_worker_id() });
        }
        if sequence > self.max_sequence() {
            return Err(EncodeError::SequenceOutOfRange { sequence, max_sequence: self.max_sequence() });
        }
        Ok((offset_ms << self.timestamp_shift())
            | (u64::from(worker_id.get()) << self.sequence_bits)
            | u64::from(sequence))
    }

    /// The fields of `id`. The sign bit is ignored: every ID this layout encodes has it 0.
    pub fn decode(&self, id: u64) -> DecodedId {
        let offset_ms = (id >> self.timestamp_shift()) & self.max_ts_offset_ms();
        DecodedId {
            // Cannot overflow: the offset is masked to the range `new` checked.
            ts_ms: self.epoch_ms + offset_ms,
            // Masked to at most 16 and 22 bits, so the narrowing casts are lossless.
            worker_id: WorkerId::new(((id >> self.sequence_bits) & low_mask(self.worker_id_bits)) as u16),
            sequence: (id & low_mask(self.sequence_bits)) as u32,
        }
    }

    fn timestamp_shift(&self) -> u8 {
        self.worker_id_bits + self.sequence_bits
    }
}

/// A mask of the low `bits` bits; `bits` is at most 63 here.
fn low_mask(bits: u8) -> u64 {
    (1u64 << bits) - 1
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    /// Twitter's epoch, 2010-11-04T01:42:54.657Z: a realistic non-zero origin.
    const EPOCH_MS: u64 = 1_288_834_974_657;

    /// Goal: the default layout is 41/10/12 with 1024 workers and 4096 IDs per ms.
    #[test]
    fn default_layout_is_twitter_compatible() {
        let l = Layout::with_default_bits(EPOCH_MS).unwrap();
        assert_eq!(l.timestamp_bits(), 41);
        assert_eq!(l.max_worker_id(), WorkerId::new(1023));
        assert_eq!(l.max_sequence(), 4095);
        assert_eq!(l.max_ts_ms(), EPOCH_MS + (1u64 << 41) - 1);
        // The bit positions are the documented ones, not just self-consistent.
        let id = l.encode(EPOCH_MS + 1, WorkerId::new(1), 1).unwrap();
        assert_eq!(id, (1 << 22) | (1 << 12) | 1);
    }

    /// Goal: every out-of-range width is rejected, and the edges of each range are accepted.
    #[test]
    fn new_validates_widths() {
        let cases: &[(u8, u8, Result<u8, LayoutError>)] = &[
            (0, 12, Err(LayoutError::WorkerIdBits { bits: 0 })),
            (17, 12, Err(LayoutError::WorkerIdBits { bits: 17 })),
            (10, 0, Err(LayoutError::SequenceBits { bits: 0 })),
            (10, 23, Err(LayoutError::SequenceBits { bits: 23 })),
            (16, 22, Err(LayoutError::TimestampBits { timestamp_bits: 25 })),
            (10, 22, Ok(31)),
            (1, 1, Ok(61)),
            (16, 16, Ok(31)),
        ];
        for (w, s, want) in cases {
            let got = Layout::new(EPOCH_MS, *w, *s).map(|l| l.timestamp_bits());
            assert_eq!(&got, want, "worker_id_bits={w} sequence_bits={s}");
        }
        assert_eq!(Layout::new(u64::MAX - 5, 10, 12), Err(LayoutError::EpochTooLate { epoch_ms: u64::MAX - 5 }));
    }

    /// Goal: decode inverts encode at the corners of every field, for several layouts.
    #[test]
    fn encode_decode_round_trip_at_the_corners() {
        for (w, s) in [(10, 12), (1, 1), (16, 16), (5, 22), (16, 1)] {
            let l = Layout::new(EPOCH_MS, w, s).unwrap();
            for ts_ms in [EPOCH_MS, EPOCH_MS + 1, EPOCH_MS + 12_345, l.max_ts_ms()] {
                for wid in [0, 1, l.max_worker_id().get()] {
                    for seq in [0, 1, l.max_sequence()] {
                        let worker_id = WorkerId::new(wid);
                        let id = l.encode(ts_ms, worker_id, seq).unwrap();
                        assert_eq!(id >> 63, 0, "sign bit set for layout {w}/{s}");
                        assert_eq!(l.decode(id), DecodedId { ts_ms, worker_id, sequence: seq }, "layout {w}/{s}");
                    }
                }
            }
        }
    }

    /// Goal: IDs order by (timestamp, worker ID, sequence) — the property time-ordering and
    /// the minter's "strictly increasing" assertion rely on.
    #[test]
    fn ids_order_by_time_then_worker_then_sequence() {
        let l = Layout::with_default_bits(EPOCH_MS).unwrap();
        let max_w = l.max_worker_id();
        let a = l.encode(EPOCH_MS + 7, max_w, l.max_sequence()).unwrap();
        let b = l.encode(EPOCH_MS + 8, WorkerId::new(0), 0).unwrap();
        assert!(a < b);
        let c = l.encode(EPOCH_MS + 8, WorkerId::new(0), 1).unwrap();
        assert!(b < c);
    }

    /// Goal: values outside the layout are errors, never silently truncated into another
    /// worker's or another millisecond's bits.
    #[test]
    fn encode_rejects_out_of_range_fields() {
        let l = Layout::with_default_bits(EPOCH_MS).unwrap();
        let w = WorkerId::new(3);
        assert_eq!(
            l.encode(EPOCH_MS - 1, w, 0),
            Err(EncodeError::BeforeEpoch { ts_ms: EPOCH_MS - 1, epoch_ms: EPOCH_MS })
        );
        assert_eq!(
            l.encode(l.max_ts_ms() + 1, w, 0),
            Err(EncodeError::BeyondRange { ts_ms: l.max_ts_ms() + 1, max_ts_ms: l.max_ts_ms() })
        );
        assert_eq!(
            l.encode(EPOCH_MS, WorkerId::new(1024), 0),
            Err(EncodeError::WorkerIdOutOfRange { worker_id: WorkerId::new(1024), max_worker_id: WorkerId::new(1023) })
        );
        assert_eq!(
            l.encode(EPOCH_MS, w, 4096),
            Err(EncodeError::SequenceOutOfRange { sequence: 4096, max_sequence: 4095 })
        );
    }
}
