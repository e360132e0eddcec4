//! Identity newtypes of the lease domain: worker IDs, fencing tokens, holders, log positions.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::limits::{TOKEN_GENERATION_SHIFT, TOKEN_LOG_INDEX_BITS, TOKEN_OFFSET_BITS, TOKEN_SLOT_BITS};

/// One worker ID: the middle field of every minted ID.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct WorkerId(pub u32);

impl fmt::Display for WorkerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Position of one command in the replicated log: `log_index << TOKEN_SLOT_BITS | slot`.
/// Deterministic on every replica and strictly increasing along the log, so it can serve as
/// a fencing token (for grants) and as the identity of a renewal (for the expiry CAS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct LogPos(pub u64);

impl LogPos {
    /// The position of command `slot` inside the entry at `log_index`.
    pub fn new(log_index: u64, slot: usize) -> LogPos {
        assert!(slot < (1 << TOKEN_SLOT_BITS), "slot {slot} outside the token slot space");
        assert!(log_index < (1 << TOKEN_LOG_INDEX_BITS), "log index {log_index} overflows tokens");
        LogPos((log_index << TOKEN_SLOT_BITS) | slot as u64)
    }

    /// Like [`LogPos::new`], `None` instead of a panic when the position has no token.
    pub fn checked(log_index: u64, slot: usize) -> Option<LogPos> {
        let fits = slot < (1 << TOKEN_SLOT_BITS) && log_index < (1 << TOKEN_LOG_INDEX_BITS);
        fits.then(|| LogPos::new(log_index, slot))
    }

    /// The Raft log index this position lies in.
    pub fn log_index(self) -> u64 {
        self.0 >> TOKEN_SLOT_BITS
    }
}

/// Fencing token of a grant: the table's restore generation above its restore's token offset
/// plus the `LogPos` of the grant command. `Token(0)` means "never granted".
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Token(pub u64);

impl Token {
    /// The token a worker ID has before its first grant.
    pub const NONE: Token = Token(0);

    /// The token of a grant at `pos` in restore generation `generation` (0: never restored),
    /// shifted by that restore's `offset`. `TOKEN_LOG_INDEX_BITS` and `TOKEN_OFFSET_BITS` keep
    /// the sum below the generation bits (checked at compile time in `limits`).
    pub fn granted(generation: u8, offset: TokenOffset, pos: LogPos) -> Token {
        let shifted = offset.0 + pos.0;
        assert!(shifted < (1 << TOKEN_GENERATION_SHIFT), "position {} reaches the generation bits", pos.0);
        Token((u64::from(generation) << TOKEN_GENERATION_SHIFT) | shifted)
    }

    /// The log position of the grant this token came from, given the offset of the table that
    /// granted it (without the generation).
    pub fn position(self, offset: TokenOffset) -> LogPos {
        LogPos((self.0 & ((1 << TOKEN_GENERATION_SHIFT) - 1)).saturating_sub(offset.0))
    }
}

impl fmt::Display for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Where the grant positions of a restored table start inside its generation's token range:
/// a random number the leader draws when it proposes the restore (apply only reads it from the
/// command, so every replica computes the same tokens). Clusters restored from one backup share
/// a generation; their independent offsets keep their token values apart (docs/design.md,
/// Restores). 0 for a table never restored, and for restores proposed before offsets existed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
#[serde(try_from = "u64", into = "u64")]
pub struct TokenOffset(u64);

impl TokenOffset {
    /// No offset: tables never restored, and restores written before offsets.
    pub const NONE: TokenOffset = TokenOffset(0);

    /// The offset made of the top [`TOKEN_OFFSET_BITS`] of `bits`: uniform over
    /// `0..2^TOKEN_OFFSET_BITS` when `bits` is uniform.
    pub fn from_random_bits(bits: u64) -> TokenOffset {
        TokenOffset(bits >> (u64::BITS - TOKEN_OFFSET_BITS))
    }

    pub fn get(self) -> u64 {
        self.0
    }
}

/// A stored or logged offset outside `0..2^TOKEN_OFFSET_BITS` (only a forged or corrupt value):
/// refused when it is read, so no table ever holds one.
#[derive(Debug, thiserror::Error)]
#[error("token offset {0} is not below 2^{TOKEN_OFFSET_BITS}")]
pub struct OffsetTooLarge(u64);

impl TryFrom<u64> for TokenOffset {
    type Error = OffsetTooLarge;

    fn try_from(value: u64) -> Result<TokenOffset, OffsetTooLarge> {
        if value >= 1 << TOKEN_OFFSET_BITS {
            return Err(OffsetTooLarge(value));
        }
        Ok(TokenOffset(value))
    }
}

impl From<TokenOffset> for u64 {
    fn from(offset: TokenOffset) -> u64 {
        offset.0
    }
}

impl fmt::Display for TokenOffset {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// One start of a worker process: a random number the process draws when it starts and never
/// persists. Two processes that share a holder ID (a restart, or a copied state dir) are told
/// apart by it, so they never share a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct Incarnation(pub u64);

impl Incarnation {
    /// The incarnation an Acquire states: 0 on the wire means none (a worker older than
    /// incarnations).
    pub fn stated(value: u64) -> Option<Incarnation> {
        (value != 0).then_some(Incarnation(value))
    }
}

impl fmt::Display for Incarnation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Identity of one worker process. Validated (non-empty, bounded, not reserved) at the RPC
/// boundary.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
pub struct HolderId(pub String);

impl HolderId {
    /// Holders starting with this are the registry's own: a restore parks every worker ID on
    /// such a holder until the embargo expires. No client may claim one.
    pub const RESERVED_PREFIX: &'static str = fenceflake_proto::wire::REGISTRY_HOLDER_PREFIX;

    /// The holder a restore leaves `worker_id` with (one per ID: the holder index is 1:1).
    pub fn restore_embargo(worker_id: WorkerId) -> HolderId {
        HolderId(format!("{}restore-embargo/{worker_id}", Self::RESERVED_PREFIX))
    }

    pub fn is_reserved(&self) -> bool {
        self.0.starts_with(Self::RESERVED_PREFIX)
    }
}

impl fmt::Display for HolderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_positions_order_by_index_then_slot() {
        assert!(LogPos::new(5, 4095) < LogPos::new(6, 0));
        assert!(LogPos::new(6, 0) < LogPos::new(6, 1));
        assert_eq!(LogPos::new(77, 3).log_index(), 77);
    }

    /// Goal: a later generation's tokens are above every token of an earlier one, whatever
    /// either's offset, and the position survives the generation bits and the offset.
    #[test]
    fn generations_order_tokens_above_any_earlier_position() {
        let last = LogPos::new((1 << TOKEN_LOG_INDEX_BITS) - 1, 4095);
        let largest = TokenOffset::from_random_bits(u64::MAX);
        let late_in_gen0 = Token::granted(0, largest, last);
        let early_in_gen1 = Token::granted(1, TokenOffset::NONE, LogPos::new(1, 0));
        assert!(early_in_gen1 > late_in_gen0);
        assert_eq!(late_in_gen0.0 >> TOKEN_GENERATION_SHIFT, 0, "the largest offset and position stay in gen 0");
        assert_eq!(early_in_gen1.position(TokenOffset::NONE), LogPos::new(1, 0));
        assert_eq!(late_in_gen0.position(largest), last);
        assert_eq!(Token::granted(0, TokenOffset::NONE, LogPos(77)), Token(77));
    }

    /// Goal: an offset is uniform over its range when its bits are, and a stored one outside
    /// the range is refused when read (never held by a table).
    #[test]
    fn offsets_stay_in_their_range() {
        assert_eq!(TokenOffset::from_random_bits(0), TokenOffset::NONE);
        assert_eq!(TokenOffset::from_random_bits(u64::MAX).get(), (1 << TOKEN_OFFSET_BITS) - 1);
        assert_eq!(TokenOffset::from_random_bits(1 << 63).get(), 1 << (TOKEN_OFFSET_BITS - 1));
        let ok: TokenOffset = serde_json::from_str("12345").expect("in range");
        assert_eq!((ok.get(), serde_json::to_string(&ok).expect("encodes")), (12345, "12345".to_string()));
        let too_large = (1u64 << TOKEN_OFFSET_BITS).to_string();
        assert!(serde_json::from_str::<TokenOffset>(&too_large).is_err());
    }
}
