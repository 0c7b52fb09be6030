//! Pruning from the legacy feedback service: a phone is removed only if it was not registered
//! again after the moment Apple names (Apple's advice, which seeds 000-003 ignored).

use super::{Result, Store};
use rusqlite::params;

/// What applying a batch of feedback tuples did to the phones table.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FeedbackPruned {
    /// Registrations removed.
    pub pruned: usize,
    /// Registrations kept because they are newer than Apple's timestamp.
    pub kept: usize,
    /// Tuples naming a token no phone has.
    pub unknown: usize,
}

impl Store {
    /// Applies `(token, timestamp in UNIX seconds)` tuples in one transaction. A registration
    /// made in the same second as the timestamp is kept: the second's resolution cannot tell
    /// which came first, and deleting a live phone is the worse mistake.
    pub fn prune_feedback(&mut self, items: &[(String, u32)]) -> Result<FeedbackPruned> {
        let mut r = FeedbackPruned::default();
        let now = crate::domain::now_ms();
        let tx = self.conn.transaction()?;
        {
            let mut delete = tx.prepare_cached("DELETE FROM phones WHERE token = ?1 AND registered_at < ?2")?;
            let mut keep = tx.prepare_cached(
                "UPDATE phones SET last_outcome = 'feedback: re-registered since', last_outcome_at = ?2 WHERE token = ?1",
            )?;
            for (token, secs) in items {
                let since_ms = *secs as i64 * 1000;
                let deleted = delete.execute(params![token, since_ms])?;
                let kept = keep.execute(params![token, now])?;
                r.pruned += deleted;
                r.kept += kept;
                if deleted + kept == 0 {
                    r.unknown += 1;
                }
            }
        }
        tx.commit()?;
        Ok(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::Environment;

    #[test]
    fn prunes_only_phones_not_registered_again() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.add_user("a").unwrap();
        s.add_user("b").unwrap();
        let (old, fresh, shared) = ("aa".repeat(32), "bb".repeat(32), "cc".repeat(32));
        for t in [&old, &fresh, &shared] {
            s.add_phone("a", t, Environment::Production, None, None).unwrap();
        }
        s.add_phone("b", &shared, Environment::Production, None, None).unwrap();
        let now_s = (crate::domain::now_ms() / 1000) as u32;
        s.conn().execute("UPDATE phones SET registered_at = ?1 WHERE token = ?2", params![1_000_000i64, old]).unwrap();
        s.conn()
            .execute("UPDATE phones SET registered_at = ?1 WHERE token = ?2", params![1_000_000i64, shared])
            .unwrap();
        let r = s
            .prune_feedback(&[
                (old.clone(), now_s),          // registered long before: pruned
                (fresh.clone(), now_s - 3600), // registered after Apple's timestamp: kept
                (shared.clone(), now_s),       // two users' registrations: both pruned
                ("dd".repeat(32), now_s),      // nobody's
            ])
            .unwrap();
        assert_eq!(r, FeedbackPruned { pruned: 3, kept: 1, unknown: 1 });
        let left: Vec<String> = s.list_phones().unwrap().into_iter().map(|p| p.token).collect();
        assert_eq!(left, vec![fresh]);
    }
}
