//! The domain's ring and phone states and phone platforms in SQL: stored as the same words
//! serde publishes (`pending`, `done`, `delivered`, ..., `apns`, `fcm`, `webpush`), which the
//! tables' CHECK constraints also list.

use crate::domain::{PhoneState, Platform, RingState};
use rusqlite::types::{FromSql, FromSqlError, FromSqlResult, ToSql, ToSqlOutput, ValueRef};

impl ToSql for RingState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for RingState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        RingState::parse(s).ok_or_else(|| FromSqlError::Other(format!("'{s}' is not a ring state").into()))
    }
}

impl ToSql for PhoneState {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for PhoneState {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        PhoneState::parse(s).ok_or_else(|| FromSqlError::Other(format!("'{s}' is not a phone state").into()))
    }
}

impl ToSql for Platform {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(ToSqlOutput::from(self.as_str()))
    }
}

impl FromSql for Platform {
    fn column_result(value: ValueRef<'_>) -> FromSqlResult<Self> {
        let s = value.as_str()?;
        Platform::parse(s).ok_or_else(|| FromSqlError::Other(format!("'{s}' is not a platform").into()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_are_stored_as_their_words() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for s in PhoneState::ALL {
            let back: (String, PhoneState) =
                conn.query_row("SELECT ?1, ?1", [s], |r| Ok((r.get(0)?, r.get(1)?))).unwrap();
            assert_eq!(back, (s.as_str().to_string(), s));
        }
        for s in RingState::ALL {
            assert_eq!(conn.query_row("SELECT ?1", [s], |r| r.get::<_, RingState>(0)).unwrap(), s);
        }
        for p in Platform::ALL {
            assert_eq!(conn.query_row("SELECT ?1", [p], |r| r.get::<_, Platform>(0)).unwrap(), p);
        }
        let bad = conn.query_row("SELECT 'lost'", [], |r| r.get::<_, RingState>(0));
        assert!(bad.unwrap_err().to_string().contains("'lost' is not a ring state"));
    }
}
