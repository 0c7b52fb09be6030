//! Who a ring reaches: the doorbell's owner's and every shared user's phones, each token once,
//! in phone-id order (the order of a ring's seqs). Read whole ([`recipients_on`]), or in
//! chunks that the outbox sends while the rest is still being read
//! ([`Store::read_recipients`]); the lists of big doorbells are kept between rings
//! ([`KeptRecipients`]) while nothing changed who a press reaches.

use super::{Result, Store};
use crate::domain::{Address, Environment, Target, Token};
use rusqlite::params;
use std::sync::Arc;

/// One phone a press reaches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobPhone {
    pub phone_id: i64,
    pub address: Address,
    /// The app's bundle id, for an iPhone whose app differs from `apns.topic`.
    pub topic: Option<String>,
}

/// A ring's phones as the transports take them: shared, not copied, between the ring and
/// [`Store`]'s memory of the doorbell's recipients.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Recipients {
    pub targets: Arc<Vec<Target>>,
    pub topics: Topics,
}

impl Default for Recipients {
    /// No phones.
    fn default() -> Self {
        Recipients { targets: Arc::new(Vec::new()), topics: Topics::Same(None) }
    }
}

/// The app topic of each phone of a [`Recipients`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Topics {
    /// Every phone has this one (nearly always `None`: the configured `apns.topic`).
    Same(Option<String>),
    /// Phone by phone, in `targets` order.
    PerPhone(Arc<Vec<Option<String>>>),
}

impl Recipients {
    /// The job of `phones`, in their order. The phones' buffer becomes the targets' (no
    /// second copy of a building's phones).
    pub fn from_phones(phones: Vec<JobPhone>) -> Recipients {
        let same = phones.windows(2).all(|w| w[0].topic == w[1].topic);
        let topics = if same {
            Topics::Same(phones.first().and_then(|p| p.topic.clone()))
        } else {
            Topics::PerPhone(Arc::new(phones.iter().map(|p| p.topic.clone()).collect()))
        };
        let mut targets: Vec<Target> =
            phones.into_iter().map(|p| Target { phone_id: p.phone_id, address: p.address }).collect();
        // Collected in place, the buffer keeps the size of the phones; hand the rest back.
        targets.shrink_to_fit();
        Recipients { targets: Arc::new(targets), topics }
    }

    pub fn len(&self) -> usize {
        self.targets.len()
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// Recipient lists of at least this many phones are kept between rings (see
/// [`Store::create_ring`]); smaller ones are quicker to read again than to hold.
pub(crate) const KEEP_RECIPIENTS_FROM: usize = 1_000;
/// At most this many phones' worth of recipient lists are kept.
const KEEP_RECIPIENTS_MAX: usize = 250_000;

/// A ring whose recipients may be this many or more is recorded before they are read: the
/// outbox reads them while it sends the first of them (a building's 120,000 phones take
/// 40-100 ms to read). Smaller lists are read with the ring, at once.
pub const READ_LATER_FROM: usize = 4_096;
/// The first phones of a list read later are handed over in parts as soon as they are read:
/// phones `0..EARLY[0]` (so that sending starts at once), then up to `EARLY[1]`, then all of
/// them. Reading is some 30 times quicker than sending, so the early parts keep the
/// connections busy until the rest is read, even while the store thread and the sending
/// share the CPU.
pub const EARLY: [usize; 2] = [2_048, 16_384];

/// The users whose phones a press of `doorbell` reaches: its owner and those it is shared with.
fn users_of(conn: &rusqlite::Connection, doorbell: &str) -> Result<Vec<i64>> {
    Ok(conn
        .prepare_cached(
            "SELECT owner_id FROM doorbells WHERE id = ?1 UNION SELECT user_id FROM shares WHERE doorbell_id = ?1",
        )?
        .query_map([doorbell], |r| r.get(0))?
        .collect::<rusqlite::Result<_>>()?)
}

/// How many phones `users` have (a token shared by two users counts twice).
fn phones_of(conn: &rusqlite::Connection, users: &[i64]) -> Result<usize> {
    let mut count = conn.prepare_cached("SELECT COUNT(*) FROM phones INDEXED BY phones_user WHERE user_id = ?1")?;
    let mut total = 0usize;
    for user in users {
        total += count.query_row([user], |r| r.get::<_, i64>(0))? as usize;
    }
    Ok(total)
}

/// At most how many phones a press of `doorbell` reaches (before tokens shared by two users
/// are counted once).
pub(crate) fn recipients_bound(conn: &rusqlite::Connection, doorbell: &str) -> Result<usize> {
    phones_of(conn, &users_of(conn, doorbell)?)
}

/// Calls `f` with every phone of `users` in phone-id order, each token once (the oldest
/// registration wins). Each user's phones are read in id order through `phones_user` and
/// merged, so a building of 120,000 phones is one sequential pass with no sort in SQLite.
/// Phones of every platform: the outbox splits them by transport.
fn each_recipient(conn: &rusqlite::Connection, users: &[i64], f: &mut dyn FnMut(JobPhone) -> Result<()>) -> Result<()> {
    const SQL: &str = "SELECT id, token, environment, topic, platform, subscription FROM phones
                       INDEXED BY phones_user WHERE user_id = ?1 ORDER BY id";
    let mut stmts = Vec::with_capacity(users.len());
    for _ in users {
        stmts.push(conn.prepare_cached(SQL)?);
    }
    let mut rows = Vec::with_capacity(users.len());
    for (st, user) in stmts.iter_mut().zip(users) {
        rows.push(st.query([user])?);
    }
    let mut heads = Vec::with_capacity(rows.len());
    for r in &mut rows {
        heads.push(next_phone(r)?);
    }
    // Only a doorbell shared between users can reach one token twice.
    let mut seen = (users.len() > 1).then(std::collections::HashSet::new);
    loop {
        let Some(k) =
            (0..heads.len()).filter(|&k| heads[k].is_some()).min_by_key(|&k| heads[k].as_ref().map(|p| p.phone_id))
        else {
            return Ok(());
        };
        let phone = std::mem::replace(&mut heads[k], next_phone(&mut rows[k])?).expect("a head was found");
        if seen.as_mut().is_none_or(|s| s.insert(phone.address.clone())) {
            f(phone)?;
        }
    }
}

/// The next phone of a user's rows; a row no way in would have written (edited by hand: every
/// way in validates tokens) is skipped, not sent.
fn next_phone(rows: &mut rusqlite::Rows<'_>) -> Result<Option<JobPhone>> {
    while let Some(r) = rows.next()? {
        let Some(address) = address_of(r)? else {
            tracing::warn!(phone = r.get::<_, i64>(0)?, "a phone's token in the database is not usable: skipped");
            continue;
        };
        return Ok(Some(JobPhone { phone_id: r.get(0)?, address, topic: r.get(3)? }));
    }
    Ok(None)
}

/// The address of a phones row read as `id, token, environment, topic, platform, subscription`;
/// `None` for a row no way in would have written (edited by hand).
fn address_of(r: &rusqlite::Row) -> Result<Option<Address>> {
    let text = |i| r.get_ref(i).and_then(|v| v.as_str().map_err(rusqlite::Error::from));
    let token = text(1)?;
    Ok(match text(4)? {
        "apns" => Token::from_hex(token).map(|token| Address::Apns {
            token,
            environment: Environment::parse(text(2).unwrap_or("")).unwrap_or(Environment::Production),
        }),
        "fcm" => Some(Address::Fcm(token.into())),
        "webpush" => {
            let json: Option<String> = r.get(5)?;
            json.and_then(|j| super::phones::webpush_keys(j.as_bytes()).ok()).map(|k| Address::WebPush(Arc::new(k)))
        }
        _ => None,
    })
}

/// The phones a press of `doorbell` reaches, on a connection or inside a transaction, in
/// phone-id order, each token once.
pub fn recipients_on(conn: &rusqlite::Connection, doorbell: &str) -> Result<Vec<JobPhone>> {
    let users = users_of(conn, doorbell)?;
    // Sized once: growing by doubling would hold two copies of a building's job at once.
    let mut phones = Vec::with_capacity(phones_of(conn, &users)?);
    each_recipient(conn, &users, &mut |p| {
        phones.push(p);
        Ok(())
    })?;
    Ok(phones)
}

impl Store {
    /// Reads and keeps the recipient lists of the big doorbells (those a ring would read while
    /// sending, [`READ_LATER_FROM`] phones or more), widest first, within what is kept at most:
    /// called at start-up, so that the first ring of a newly started daemon finds its list as
    /// a later ring does. Returns how many lists and phones are kept.
    pub fn keep_big_lists(&mut self) -> Result<(usize, usize)> {
        let doorbells: Vec<String> = self
            .conn
            .prepare("SELECT id FROM doorbells")?
            .query_map([], |r| r.get(0))?
            .collect::<rusqlite::Result<_>>()?;
        let mut big = Vec::new();
        for d in doorbells {
            let n = recipients_bound(&self.conn, &d)?;
            if (READ_LATER_FROM..=KEEP_RECIPIENTS_MAX).contains(&n) {
                big.push((n, d));
            }
        }
        big.sort_unstable_by(|a, b| b.cmp(a));
        let mut kept = std::mem::take(&mut self.recipients);
        let tx = self.conn.transaction()?;
        let mut lists = 0;
        for (n, d) in big {
            if kept.phones() + n > KEEP_RECIPIENTS_MAX {
                continue;
            }
            kept.read(&tx, &d)?;
            lists += 1;
        }
        tx.commit()?;
        let phones = kept.phones();
        self.recipients = kept;
        Ok((lists, phones))
    }

    /// Reads the recipients of ring `ring_id` (of `doorbell`) in one snapshot: hands copies
    /// of the first phones to `early` as soon as they are read (see [`EARLY`]; `early` gets
    /// each part and its place in the list), records how many phones the ring reaches, keeps
    /// a big list for the next ring, and returns the whole list with how many phones went
    /// early.
    pub fn read_recipients(
        &mut self,
        ring_id: &str,
        doorbell: &str,
        early: &mut dyn FnMut(Recipients, usize),
    ) -> Result<(Recipients, usize)> {
        let tx = self.conn.transaction()?;
        let version = KeptRecipients::version(&tx)?;
        let users = users_of(&tx, doorbell)?;
        let mut list = List::with_capacity(phones_of(&tx, &users)?);
        let mut sent = 0;
        each_recipient(&tx, &users, &mut |p| {
            list.push(p);
            // Only parts with more phones behind them: the last part is the whole list.
            if EARLY.contains(&list.targets.len()) {
                early(list.part(sent), sent);
                sent = list.targets.len();
            }
            Ok(())
        })?;
        tx.commit()?;
        let phones = list.finish();
        self.conn.execute("UPDATE rings SET phones = ?2 WHERE id = ?1", params![ring_id, phones.len() as i64])?;
        self.recipients.keep(doorbell, version, &phones);
        // A list that ended right at an early mark was handed over whole already.
        Ok((phones, sent))
    }
}

/// A recipient list as it is read: the targets directly (a building's phones are held once,
/// never as [`JobPhone`]s first), and app topics only once one differs.
struct List {
    targets: Vec<Target>,
    /// The app topic of every phone so far, once not all are the same.
    topics: Option<Vec<Option<String>>>,
    /// The app topic of every phone so far, while all are the same.
    same: Option<Option<String>>,
}

impl List {
    /// Sized once: growing by doubling would hold two copies of a building's job at once.
    fn with_capacity(n: usize) -> List {
        List { targets: Vec::with_capacity(n), topics: None, same: None }
    }

    fn push(&mut self, p: JobPhone) {
        match (&mut self.topics, &self.same) {
            (Some(topics), _) => topics.push(p.topic),
            (None, None) => self.same = Some(p.topic),
            (None, Some(same)) if *same == p.topic => {}
            (None, Some(same)) => {
                let mut topics = vec![same.clone(); self.targets.len()];
                topics.push(p.topic);
                self.topics = Some(topics);
            }
        }
        self.targets.push(Target { phone_id: p.phone_id, address: p.address });
    }

    fn topics(&self, from: usize) -> Topics {
        match &self.topics {
            Some(t) => Topics::PerPhone(Arc::new(t[from..].to_vec())),
            None => Topics::Same(self.same.clone().flatten()),
        }
    }

    /// A copy of the phones from `from` on.
    fn part(&self, from: usize) -> Recipients {
        Recipients { targets: Arc::new(self.targets[from..].to_vec()), topics: self.topics(from) }
    }

    fn finish(self) -> Recipients {
        let topics = match self.topics {
            Some(t) => Topics::PerPhone(Arc::new(t)),
            None => Topics::Same(self.same.flatten()),
        };
        Recipients { targets: Arc::new(self.targets), topics }
    }
}

/// Recipient lists kept between rings (in [`Store`]), valid for one `recipients_version`;
/// shared with the rings that send them, never copied.
#[derive(Debug, Default)]
pub struct KeptRecipients {
    /// `recipients_version.n` and the highest phone id when the lists were read.
    version: (i64, i64),
    lists: std::collections::HashMap<String, Recipients>,
}

impl KeptRecipients {
    /// What moves whenever who a press reaches changes. A new phone takes an id above every
    /// other (ids of removed phones are reused only after a removal, which moves the counter).
    fn version(tx: &rusqlite::Connection) -> Result<(i64, i64)> {
        Ok(tx.query_row(
            "SELECT (SELECT n FROM recipients_version WHERE id = 1), (SELECT IFNULL(MAX(id), 0) FROM phones)",
            [],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )?)
    }

    /// `doorbell`'s kept list, if nothing changed since it was read.
    pub(crate) fn get(&mut self, tx: &rusqlite::Connection, doorbell: &str) -> Result<Option<Recipients>> {
        let version = Self::version(tx)?;
        if version != self.version {
            self.lists.clear();
            self.version = version;
        }
        Ok(self.lists.get(doorbell).cloned())
    }

    /// `doorbell`'s recipients inside `tx`: the kept list when nothing changed since it was
    /// read, else read now (and kept when big).
    pub(crate) fn read(&mut self, tx: &rusqlite::Connection, doorbell: &str) -> Result<Recipients> {
        if let Some(phones) = self.get(tx, doorbell)? {
            return Ok(phones);
        }
        let phones = Recipients::from_phones(recipients_on(tx, doorbell)?);
        self.keep(doorbell, self.version, &phones);
        Ok(phones)
    }

    /// Keeps `phones` as `doorbell`'s list read at `version`, when it is big enough to be
    /// worth holding.
    fn keep(&mut self, doorbell: &str, version: (i64, i64), phones: &Recipients) {
        if phones.len() < KEEP_RECIPIENTS_FROM || phones.len() > KEEP_RECIPIENTS_MAX {
            return;
        }
        if version != self.version {
            self.lists.clear();
            self.version = version;
        }
        if self.phones() + phones.len() > KEEP_RECIPIENTS_MAX {
            self.lists.clear();
        }
        self.lists.insert(doorbell.to_string(), phones.clone());
    }

    /// Phones held in kept lists.
    pub fn phones(&self) -> usize {
        self.lists.values().map(Recipients::len).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::rings::{Press, RingJob, RingStart};

    fn tok(i: u64) -> String {
        format!("{:064x}", 0xd00d_0000_u64 + i)
    }

    /// A store with `n` phones for "owner" and a doorbell "building" of theirs.
    fn building(n: u64) -> (tempfile::TempDir, Store) {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.add_user("owner").unwrap();
        s.add_doorbell("building", None, "owner").unwrap();
        let tokens: String = (0..n).map(|i| tok(i) + "\n").collect();
        s.import_phones(
            crate::store::import::ImportFormat::Tokens { user: "owner" },
            tokens.as_bytes(),
            Environment::Production,
        )
        .unwrap();
        (dir, s)
    }

    fn ring(s: &mut Store, id: &str, at: i64) -> RingJob {
        let press = Press {
            ring_id: id,
            doorbell_id: "building",
            doorbell_name: "building",
            pressed_at: at,
            received_at: at,
            recorded_at: at,
            expiry_ms: 300_000,
            debounce_ms: 0,
            read_later: true,
        };
        let RingStart::Created(job) = s.create_ring(&press).unwrap() else { panic!("no ring") };
        job
    }

    fn phones_of_ring(s: &Store, id: &str) -> i64 {
        s.conn.query_row("SELECT phones FROM rings WHERE id = ?1", [id], |r| r.get(0)).unwrap()
    }

    /// Read ahead at start-up, a big doorbell's list is there for its first ring (nothing left
    /// to read while sending); small doorbells are not held.
    #[test]
    fn big_lists_read_ahead_serve_the_first_ring() {
        let (_dir, mut s) = building(READ_LATER_FROM as u64 + 10);
        s.add_doorbell("porch", None, "owner").unwrap();
        s.add_user("guest").unwrap();
        s.add_doorbell("shed", None, "guest").unwrap();
        s.add_phone("guest", &tok(999_999), Environment::Production, None, None).unwrap();
        assert_eq!(s.keep_big_lists().unwrap(), (2, 2 * (READ_LATER_FROM + 10)), "building and porch, not shed");
        let job = ring(&mut s, "r1", 1_000);
        assert!(!job.unread, "sent from the kept list");
        assert_eq!(job.phones.len(), READ_LATER_FROM + 10);
        // A change (a phone added) makes the next ring read again.
        s.add_phone("owner", &tok(888_888), Environment::Production, None, None).unwrap();
        assert!(ring(&mut s, "r2", 2_000).unread);
    }

    /// A big doorbell's ring is recorded before its phones are read; the first come early, the
    /// whole list (one snapshot) after, and the next ring reuses it as it is.
    #[test]
    fn a_big_list_is_read_after_the_ring_its_first_phones_early_and_kept() {
        let n = 2 * EARLY[1];
        let (_d, mut s) = building(n as u64);
        let now = crate::domain::now_ms();
        let job = ring(&mut s, "r1", now);
        assert!(job.unread && job.phones.is_empty() && job.read_at_us.is_none());
        assert_eq!(phones_of_ring(&s, "r1"), n as i64, "counted before the read");
        let mut early = Vec::new();
        let (all, sent) = s.read_recipients("r1", "building", &mut |c, at| early.push((c, at))).unwrap();
        assert_eq!(sent, EARLY[1]);
        assert_eq!(
            early.iter().map(|(c, at)| (c.len(), *at)).collect::<Vec<_>>(),
            [(EARLY[0], 0), (EARLY[1] - EARLY[0], EARLY[0])]
        );
        assert_eq!(early[0].0.targets[..], all.targets[..EARLY[0]], "the first phones, early");
        assert_eq!(early[1].0.targets[..], all.targets[EARLY[0]..EARLY[1]]);
        assert_eq!(all.len(), n);
        let ids: Vec<i64> = all.targets.iter().map(|t| t.phone_id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]), "phone-id order");
        assert_eq!(phones_of_ring(&s, "r1"), n as i64);

        let again = ring(&mut s, "r2", now + 1);
        assert!(!again.unread && again.read_at_us.is_some());
        assert!(Arc::ptr_eq(&again.phones.targets, &all.targets), "kept, not read again");
    }

    /// App topics are kept per phone only once one differs, and stay aligned with the
    /// phones, in the parts too.
    #[test]
    fn a_list_keeps_topics_per_phone_only_when_they_differ() {
        let phone = |i: i64, topic: Option<&str>| JobPhone {
            phone_id: i,
            address: Address::Apns { token: Token::Inline([i as u8; 32]), environment: Environment::Production },
            topic: topic.map(str::to_string),
        };
        let mut same = List::with_capacity(2);
        same.push(phone(1, None));
        same.push(phone(2, None));
        assert_eq!(same.finish().topics, Topics::Same(None));
        let mut list = List::with_capacity(4);
        list.push(phone(1, None));
        list.push(phone(2, None));
        list.push(phone(3, Some("com.example.other")));
        list.push(phone(4, None));
        let part = list.part(2);
        assert_eq!(part.targets.iter().map(|t| t.phone_id).collect::<Vec<_>>(), [3, 4]);
        assert_eq!(part.topics, Topics::PerPhone(Arc::new(vec![Some("com.example.other".into()), None])));
        let Topics::PerPhone(all) = list.finish().topics else { panic!("per phone") };
        assert_eq!(*all, vec![None, None, Some("com.example.other".into()), None]);
    }

    /// Small lists are read with the ring; without `read_later` every list is.
    #[test]
    fn small_lists_are_read_with_the_ring() {
        let (_d, mut s) = building(READ_LATER_FROM as u64 - 1);
        let job = ring(&mut s, "r1", crate::domain::now_ms());
        assert!(!job.unread);
        assert_eq!(job.phones.len(), READ_LATER_FROM - 1);
    }

    /// A ring recorded but never read (the daemon stopped first) expires with every phone.
    #[test]
    fn an_unread_ring_expires_with_all_its_phones() {
        let (_d, mut s) = building(READ_LATER_FROM as u64);
        let job = ring(&mut s, "r1", crate::domain::now_ms());
        assert!(job.unread);
        let summary = s.expire_ring("r1").unwrap();
        assert_eq!((summary.phones, summary.expired), (READ_LATER_FROM as i64, READ_LATER_FROM as i64));
    }

    /// Two users' phones are merged in id order and a token both registered rings once, for
    /// its oldest registration.
    #[test]
    fn shared_doorbells_merge_in_id_order_each_token_once() {
        let (_d, mut s) = building(0);
        s.add_user("friend").unwrap();
        s.share("building", "friend").unwrap();
        for i in 0..6 {
            let user = if i % 2 == 0 { "owner" } else { "friend" };
            s.add_phone(user, &tok(i), Environment::Production, None, None).unwrap();
        }
        s.add_phone("friend", &tok(0), Environment::Production, None, None).unwrap();
        let (all, sent) =
            s.read_recipients("none", "building", &mut |_, _| panic!("a small list comes whole")).unwrap();
        assert_eq!(sent, 0);
        let tokens: Vec<String> = all.targets.iter().map(|t| t.token().hex()).collect();
        assert_eq!(tokens, (0..6).map(tok).collect::<Vec<_>>());
        let ids: Vec<i64> = all.targets.iter().map(|t| t.phone_id).collect();
        assert!(ids.windows(2).all(|w| w[0] < w[1]));
    }
}
