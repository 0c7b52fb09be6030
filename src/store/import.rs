//! Phone registration in bulk (`phone import`): one phone a line for one user, or the
//! `user,token` CSV of an older push table (`client_id,deviceToken`). A line is an APNs token,
//! an FCM registration token or a Web Push subscription's JSON (see
//! [`Registration::guess`]). A bulk import is one transaction: it lands whole or not at all.

use super::phones::{upsert, Registration};
use super::{Result, Store, StoreError, Upsert};
use crate::domain::Environment;
use rusqlite::{params, OptionalExtension};
use serde::Serialize;
use std::collections::HashMap;
use std::io::BufRead;

/// What an import did, line by line.
#[derive(Debug, Default, Serialize)]
pub struct ImportReport {
    pub added: usize,
    pub updated: usize,
    pub users_created: usize,
    /// `(line number, why)` of every refused line.
    pub rejected: Vec<(usize, String)>,
}

/// How the lines of an import file are read.
pub enum ImportFormat<'a> {
    /// One token a line, all for this user.
    Tokens { user: &'a str },
    /// `user,token` a line; a first line whose token is not hex is taken as a header.
    Csv,
}

impl Store {
    pub fn import_phones(
        &mut self,
        format: ImportFormat,
        input: impl BufRead,
        env: Environment,
    ) -> Result<ImportReport> {
        let fixed_user = match &format {
            ImportFormat::Tokens { user } => Some(self.user_id(user)?),
            ImportFormat::Csv => None,
        };
        let now = crate::domain::now_ms();
        let mut report = ImportReport::default();
        let mut users: HashMap<String, i64> = HashMap::new();
        let tx = self.conn.transaction()?;
        for (i, line) in input.split(b'\n').enumerate() {
            let lineno = i + 1;
            let line = line.map_err(|e| StoreError::Invalid(format!("cannot read line {lineno}: {e}")))?;
            let Ok(line) = std::str::from_utf8(&line) else {
                report.rejected.push((lineno, "not UTF-8 text".into()));
                continue;
            };
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (uid, raw) = match fixed_user {
                Some(uid) => (uid, line),
                None => {
                    let Some((user, token)) = line.split_once(',') else {
                        report.rejected.push((lineno, "expected user,token".into()));
                        continue;
                    };
                    let (user, token) = (user.trim().trim_matches('"'), token.trim().trim_matches('"'));
                    if lineno == 1 && Registration::guess(token, env).is_err() {
                        continue; // a header such as client_id,deviceToken
                    }
                    if let Err(e) = crate::domain::check_id("user", user) {
                        report.rejected.push((lineno, e));
                        continue;
                    }
                    let uid = match users.get(user) {
                        Some(&id) => id,
                        None => {
                            let id = match tx
                                .query_row("SELECT id FROM users WHERE name = ?1", [user], |r| r.get(0))
                                .optional()?
                            {
                                Some(id) => id,
                                None => {
                                    tx.execute(
                                        "INSERT INTO users (name, created_at) VALUES (?1, ?2)",
                                        params![user, now],
                                    )?;
                                    report.users_created += 1;
                                    tx.last_insert_rowid()
                                }
                            };
                            users.insert(user.to_string(), id);
                            id
                        }
                    };
                    (uid, token)
                }
            };
            match Registration::guess(raw, env) {
                Ok(reg) => match upsert(&tx, uid, &reg, None, None, now)? {
                    Upsert::Added(_) => report.added += 1,
                    Upsert::Updated(_) => report.updated += 1,
                },
                Err(e) => report.rejected.push((lineno, e.to_string())),
            }
        }
        tx.commit()?;
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_and_plain_imports_report_line_by_line() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        s.add_user("alice").unwrap();
        let t1 = "ab".repeat(32);
        let t2 = "cd".repeat(32);
        let plain = format!("{t1}\n\n# comment\nnot-a-token\n{}\n", t2.to_uppercase());
        let r =
            s.import_phones(ImportFormat::Tokens { user: "alice" }, plain.as_bytes(), Environment::Production).unwrap();
        assert_eq!((r.added, r.updated), (2, 0));
        assert_eq!(r.rejected.len(), 1);
        assert_eq!(r.rejected[0].0, 4);

        let csv = format!("client_id,deviceToken\nalice,{t1}\nbob,{t2}\nbob\n");
        let r = s.import_phones(ImportFormat::Csv, csv.as_bytes(), Environment::Production).unwrap();
        assert_eq!((r.added, r.updated, r.users_created), (1, 1, 1));
        assert_eq!(r.rejected, vec![(4, "expected user,token".to_string())]);
        assert_eq!(s.list_phones().unwrap().len(), 3);
    }

    #[test]
    fn unknown_user_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = Store::open(&dir.path().join("d.db")).unwrap();
        let r = s.import_phones(
            ImportFormat::Tokens { user: "ghost" },
            "ab".repeat(32).as_bytes(),
            Environment::Production,
        );
        assert!(matches!(r, Err(StoreError::NotFound { .. })));
        assert!(s.list_phones().unwrap().is_empty());
    }
}
