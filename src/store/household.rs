//! Household controls as the store keeps them: each person's rules (`domain::household::Rules`,
//! as JSON) for every doorbell or one, the view of them the outbox applies at send time
//! ([`House`], kept between rings and read again only when a trigger moved its counter or the
//! phones changed), who answered a ring, and the phones a ring's answer quiets.

use super::{Result, Store, StoreError};
use crate::domain::household::{decide, Delivery, Rules};
use jiff::tz::TimeZone;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use std::collections::HashMap;
use std::sync::Arc;

/// One person's rules: for every doorbell, and per doorbell.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PersonRules {
    pub all: Rules,
    pub bells: HashMap<String, Rules>,
}

/// The rules of everyone who has some, and which phones are theirs: small (people, not phones),
/// so a 120,000-phone ring whose people set nothing pays one empty look-up per phone at most.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct House {
    pub people: HashMap<i64, PersonRules>,
    /// The phones of the people above and whose they are, `(phone, user)` in phone-id order
    /// (a ring's phones are in that order too: they are matched in one pass).
    pub phone_user: Vec<(i64, i64)>,
}

impl House {
    pub fn is_empty(&self) -> bool {
        self.people.is_empty()
    }

    /// What each person with rules gets for a ring of `doorbell` at `now_ms`; a phone whose
    /// person is not in it is sent as usual.
    pub fn decisions(&self, doorbell: &str, now_ms: i64, tz: &TimeZone) -> HashMap<i64, Delivery> {
        self.people.iter().map(|(user, r)| (*user, decide(&r.all, r.bells.get(doorbell), now_ms, tz))).collect()
    }
}

/// The kept view and what it was read at: the rules' counter and the phones' (a phone added,
/// removed or moved changes whose phones are whose).
#[derive(Default)]
pub(crate) struct KeptHouse {
    at: Option<(i64, i64, i64)>,
    house: Option<Arc<House>>,
}

/// One line of `quiet list` / the rules of a person.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct RulesRow {
    pub user: String,
    /// `None`: every doorbell.
    pub doorbell: Option<String>,
    pub rules: Rules,
}

/// What answering a ring did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Answered {
    pub ring_id: String,
    pub doorbell_id: String,
    pub doorbell_name: String,
    pub expires_at: i64,
    /// The name of the person who answered.
    pub by: String,
    pub at: i64,
    pub phone_id: i64,
}

/// Why an answer changes nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AnswerDenied {
    /// No such ring, or one of a doorbell the person does not see: they read the same.
    Unknown,
    Expired,
    Taken,
}

fn bell_key(doorbell: Option<&str>) -> &str {
    doorbell.unwrap_or("")
}

impl Store {
    fn check_doorbell(&self, doorbell: Option<&str>) -> Result<()> {
        doorbell.map_or(Ok(()), |d| self.doorbell_exists(d))
    }

    /// The rules of `user` for every doorbell (`None`) or one.
    pub fn rules(&self, user: &str, doorbell: Option<&str>) -> Result<Rules> {
        let uid = self.user_id(user)?;
        rules_tx(&self.conn, uid, doorbell)
    }

    /// Changes the rules of `user` for every doorbell or one, in one transaction; rules left
    /// empty are removed. Returns them as written.
    pub fn update_rules(&mut self, user: &str, doorbell: Option<&str>, f: impl FnOnce(&mut Rules)) -> Result<Rules> {
        let uid = self.user_id(user)?;
        self.check_doorbell(doorbell)?;
        let tx = self.conn.transaction()?;
        let mut rules = rules_tx(&tx, uid, doorbell)?;
        f(&mut rules);
        write_rules(&tx, uid, doorbell, &rules)?;
        tx.commit()?;
        Ok(rules)
    }

    /// Moves when rules change or people come and go: what Home Assistant's controls follow.
    pub fn people_version(&self) -> Result<(i64, i64, i64)> {
        Ok(self.conn.query_row(
            "SELECT (SELECT n FROM household_version), (SELECT COUNT(*) FROM users), (SELECT COALESCE(MAX(id), 0) FROM users)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
        )?)
    }

    /// Every person's rules, by user and doorbell.
    pub fn list_rules(&self) -> Result<Vec<RulesRow>> {
        let mut st = self.conn.prepare(
            "SELECT u.name, r.doorbell_id, r.rules FROM household_rules r JOIN users u ON u.id = r.user_id
             ORDER BY u.name, r.doorbell_id",
        )?;
        let rows =
            st.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
        let mut out = Vec::new();
        for row in rows {
            let (user, bell, json) = row?;
            out.push(RulesRow { user, doorbell: (!bell.is_empty()).then_some(bell), rules: parse_rules(&json)? });
        }
        Ok(out)
    }

    /// The household's rules as the outbox applies them: `None` when nobody has any (the
    /// usual case, and the one a building's ring takes). Read again only after a change.
    pub fn house(&mut self) -> Result<Option<Arc<House>>> {
        let at: (i64, i64, i64) = self.conn.prepare_cached(
            "SELECT (SELECT n FROM household_version), (SELECT n FROM recipients_version), (SELECT COALESCE(MAX(id), 0) FROM phones)",
        )?
        .query_row([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
        if self.house.at != Some(at) {
            let house = read_house(&self.conn)?;
            self.house = KeptHouse { at: Some(at), house: (!house.is_empty()).then(|| Arc::new(house)) };
        }
        Ok(self.house.house.clone())
    }
}

/// The rules of user `uid` for `doorbell` within a transaction (or on the connection).
pub(crate) fn rules_tx(conn: &rusqlite::Connection, uid: i64, doorbell: Option<&str>) -> Result<Rules> {
    let json: Option<String> = conn
        .query_row(
            "SELECT rules FROM household_rules WHERE user_id = ?1 AND doorbell_id = ?2",
            params![uid, bell_key(doorbell)],
            |r| r.get(0),
        )
        .optional()?;
    json.map_or(Ok(Rules::default()), |j| parse_rules(&j))
}

/// Writes (or, when empty, removes) the rules of `uid` for `doorbell`.
pub(crate) fn write_rules(conn: &rusqlite::Connection, uid: i64, doorbell: Option<&str>, rules: &Rules) -> Result<()> {
    if *rules == Rules::default() {
        conn.execute(
            "DELETE FROM household_rules WHERE user_id = ?1 AND doorbell_id = ?2",
            params![uid, bell_key(doorbell)],
        )?;
    } else {
        let json = serde_json::to_string(rules).expect("rules always serialise");
        conn.execute(
            "INSERT INTO household_rules (user_id, doorbell_id, rules, updated_at) VALUES (?1, ?2, ?3, ?4)
             ON CONFLICT (user_id, doorbell_id) DO UPDATE SET rules = excluded.rules, updated_at = excluded.updated_at",
            params![uid, bell_key(doorbell), json, crate::domain::now_ms()],
        )?;
    }
    Ok(())
}

fn parse_rules(json: &str) -> Result<Rules> {
    serde_json::from_str(json).map_err(|e| StoreError::Invalid(format!("household_rules: unreadable rules ({e})")))
}

fn read_house(conn: &rusqlite::Connection) -> Result<House> {
    let mut house = House::default();
    let mut st = conn.prepare("SELECT user_id, doorbell_id, rules FROM household_rules")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, i64>(0)?, r.get::<_, String>(1)?, r.get::<_, String>(2)?)))?;
    for row in rows {
        let (uid, bell, json) = row?;
        // Rules that cannot be read (a hand-edited database) must not cost a ring: that
        // person's phones ring as usual, and the log says why.
        let rules = match parse_rules(&json) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!(user_id = uid, doorbell = %bell, error = %e, "household rules unreadable: ringing as usual");
                continue;
            }
        };
        let person = house.people.entry(uid).or_default();
        if bell.is_empty() {
            person.all = rules;
        } else {
            person.bells.insert(bell, rules);
        }
    }
    let mut st = conn.prepare_cached("SELECT id FROM phones INDEXED BY phones_user WHERE user_id = ?1")?;
    for uid in house.people.keys() {
        for id in st.query_map([uid], |r| r.get::<_, i64>(0))? {
            house.phone_user.push((id?, *uid));
        }
    }
    house.phone_user.sort_unstable();
    Ok(house)
}

/// Records that the person of phone `phone_id` (user `uid`) answers `ring_id`: the first
/// answer of a live ring of a doorbell they see wins. Within the signed request's transaction.
pub(crate) fn answer_tx(
    tx: &rusqlite::Connection,
    uid: i64,
    phone_id: i64,
    ring_id: &str,
    now: i64,
) -> Result<std::result::Result<Answered, AnswerDenied>> {
    type Row = (String, String, i64, Option<String>);
    let ring: Option<Row> = tx
        .query_row(
            "SELECT r.doorbell_id, r.doorbell_name, r.expires_at, r.answered_by FROM rings r
             WHERE r.id = ?1 AND (r.doorbell_id IN (SELECT id FROM doorbells WHERE owner_id = ?2)
                                  OR r.doorbell_id IN (SELECT doorbell_id FROM shares WHERE user_id = ?2))",
            params![ring_id, uid],
            |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)),
        )
        .optional()?;
    let Some((doorbell_id, doorbell_name, expires_at, answered_by)) = ring else {
        return Ok(Err(AnswerDenied::Unknown));
    };
    if expires_at <= now {
        return Ok(Err(AnswerDenied::Expired));
    }
    if answered_by.is_some() {
        return Ok(Err(AnswerDenied::Taken));
    }
    let by: String = tx.query_row("SELECT name FROM users WHERE id = ?1", [uid], |r| r.get(0))?;
    tx.execute(
        "UPDATE rings SET answered_by = ?2, answered_at = ?3 WHERE id = ?1 AND answered_by IS NULL",
        params![ring_id, by, now],
    )?;
    Ok(Ok(Answered { ring_id: ring_id.into(), doorbell_id, doorbell_name, expires_at, by, at: now, phone_id }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::household::{Change, Mode, Snooze};
    use crate::domain::Environment;
    use crate::store::rings::{Press, RingStart};

    fn press(id: &str) -> Press<'_> {
        let now = crate::domain::now_ms();
        Press {
            ring_id: id,
            doorbell_id: "front",
            doorbell_name: "front",
            pressed_at: now,
            received_at: now,
            recorded_at: now,
            expiry_ms: 300_000,
            debounce_ms: 0,
            read_later: false,
        }
    }

    /// The view follows changes made through the store (as by the CLI, another process) and
    /// its phones; rules nobody can read ring as usual instead of stopping the ring.
    #[test]
    fn the_view_follows_changes_and_unreadable_rules_cost_no_ring() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.add_user("a").unwrap();
        s.add_user("b").unwrap();
        s.add_doorbell("front", None, "a").unwrap();
        s.add_phone("a", &"ab".repeat(32), Environment::Production, None, None).unwrap();
        assert_eq!(s.house().unwrap(), None, "nobody has rules");
        let snooze = Snooze { until: crate::domain::now_ms() + 60_000, mode: Mode::Skip };
        s.update_rules("a", None, |r| Change::Mute(snooze).apply(r).unwrap()).unwrap();
        let house = s.house().unwrap().expect("a has rules");
        assert_eq!(house.phone_user.len(), 1);
        // A phone added to a person with rules joins the view.
        s.add_phone("a", &"cd".repeat(32), Environment::Production, None, None).unwrap();
        assert_eq!(s.house().unwrap().unwrap().phone_user.len(), 2);
        // Rules emptied are removed: back to nobody.
        s.update_rules("a", None, |r| Change::Unmute.apply(r).unwrap()).unwrap();
        assert_eq!(s.house().unwrap(), None);
        assert!(s.list_rules().unwrap().is_empty());
        // A rules row that cannot be read.
        s.conn
            .execute(
                "INSERT INTO household_rules (user_id, doorbell_id, rules, updated_at) VALUES ((SELECT id FROM users WHERE name = 'a'), '', '{not json', 0)",
                [],
            )
            .unwrap();
        let RingStart::Created(job) = s.create_ring(&press("r1")).unwrap() else { panic!("no ring") };
        assert_eq!((job.phones.len(), job.house), (2, None), "rung as usual");
        assert!(s.update_rules("nobody", None, |_| {}).is_err());
        assert!(s.update_rules("b", Some("nowhere"), |_| {}).is_err());
    }
}
