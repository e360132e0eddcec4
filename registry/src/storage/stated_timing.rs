//! The `election_timeout_max` a leader may still count on from this data dir's node: the
//! leader lease (`leader_lease.rs`) lasts no longer than the smallest value the voters
//! stated in their clock probe answers, and a leader keeps a voter's statement until it
//! hears a newer one. A node restarted with a smaller value (a timing change, or a release
//! whose default is smaller) would otherwise refuse votes for less than a leader still
//! counts on, until that leader's next probe of it. The value is kept in the data dir's
//! identity tree, so the next process knows what its predecessors stated.

use std::time::Duration;

use super::kv::{Db, KvError};

const KEY: &[u8] = b"stated_election_max_ms";

/// What the data dir says about the values its earlier processes stated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EarlierStatement {
    /// A blank data dir: no earlier process took part in anything.
    None,
    /// A data dir of a release that kept no record.
    Unrecorded,
    /// The largest value a leader may still count on.
    Recorded(Duration),
}

/// What `db` records; `had_state`: whether the data dir held Raft state before this start.
pub fn read(db: &Db, had_state: bool) -> Result<EarlierStatement, KvError> {
    let tree = db.open_tree(super::IDENTITY_TREE)?;
    Ok(match tree.get(KEY)? {
        Some(bytes) => match <[u8; 8]>::try_from(bytes.as_slice()) {
            Ok(ms) => EarlierStatement::Recorded(Duration::from_millis(u64::from_be_bytes(ms))),
            // Written only by `record`; anything else is treated as no record at all, which
            // assumes the largest default any release had.
            Err(_) => EarlierStatement::Unrecorded,
        },
        None if had_state => EarlierStatement::Unrecorded,
        None => EarlierStatement::None,
    })
}

/// Record `stated` as the largest value a leader may count on from now, durably.
pub async fn record(db: &Db, stated: Duration) -> Result<(), KvError> {
    let ms = u64::try_from(stated.as_millis()).unwrap_or(u64::MAX);
    db.open_tree(super::IDENTITY_TREE)?.insert(KEY, ms.to_be_bytes().to_vec())?;
    db.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::MemDisk;

    #[tokio::test]
    async fn a_record_survives_and_a_blank_dir_differs_from_an_older_releases() {
        let db = Db::Memory(MemDisk::default());
        assert_eq!(read(&db, false).unwrap(), EarlierStatement::None);
        assert_eq!(read(&db, true).unwrap(), EarlierStatement::Unrecorded);
        record(&db, Duration::from_millis(600)).await.unwrap();
        assert_eq!(read(&db, true).unwrap(), EarlierStatement::Recorded(Duration::from_millis(600)));
        record(&db, Duration::from_millis(300)).await.unwrap();
        assert_eq!(read(&db, false).unwrap(), EarlierStatement::Recorded(Duration::from_millis(300)));
    }
}
