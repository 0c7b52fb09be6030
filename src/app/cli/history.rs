//! The operator's view of what happened and the copy to keep: `dingdong rings` (the ring
//! history), `rings show RING_ID` (one ring with every phone) and `dingdong backup FILE`.

use super::{load, open, print_json, CliError, RingsArgs, RingsCmd};
use crate::store::backup::Existing;
use crate::store::history::{RingDetail, RingFilter, RingLine};
use crate::store::Store;
use std::path::Path;
use std::time::Duration;

/// `--since` as the user writes it: `90m`, `2h`, `7d`.
pub fn parse_since(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("'{s}' is not a duration ({e}); write it like 90m, 2h or 7d"))
}

/// `dingdong rings ...`.
pub fn rings(path: &Path, args: &RingsArgs) -> Result<(), CliError> {
    let store = open(path)?;
    if let Some(RingsCmd::Show { ring_id, json, full }) = &args.show {
        return show(&store, ring_id, *json, *full);
    }
    if let Some(d) = &args.doorbell {
        crate::domain::check_id("doorbell", d).map_err(CliError::input)?;
    }
    let filter = RingFilter {
        doorbell: args.doorbell.clone(),
        since_ms: args.since.map(|d| crate::domain::now_ms() - d.as_millis() as i64),
        limit: args.limit as usize,
    };
    let rings = store.list_rings(&filter)?;
    if args.json {
        print_json(&rings);
        return Ok(());
    }
    if rings.is_empty() {
        println!("no rings{}", if args.since.is_some() || args.doorbell.is_some() { " match" } else { " yet" });
        return Ok(());
    }
    println!(
        "{:<16}  {:<16}  {:<20}  {:<7}  {:>7}  {:>6}  {:>9}  {:>6}  {:>6}  {:>7}  {:>7}  {:>8}  {:>8}",
        "RING",
        "DOORBELL",
        "PRESSED (UTC)",
        "STATE",
        "PRESSES",
        "PHONES",
        "DELIVERED",
        "FAILED",
        "PRUNED",
        "EXPIRED",
        "PENDING",
        "FIRST",
        "ALL"
    );
    for r in &rings {
        let s = &r.summary;
        println!(
            "{:<16}  {:<16}  {:<20}  {:<7}  {:>7}  {:>6}  {:>9}  {:>6}  {:>6}  {:>7}  {:>7}  {:>8}  {:>8}",
            s.ring_id,
            s.doorbell,
            time(s.pressed_at),
            s.state,
            s.presses,
            s.phones,
            s.delivered,
            s.failed,
            s.pruned,
            s.expired,
            s.pending,
            ms(r.latency_ms.first),
            ms(r.latency_ms.all)
        );
    }
    Ok(())
}

/// `dingdong rings show RING_ID`.
fn show(store: &Store, ring_id: &str, json: bool, full: bool) -> Result<(), CliError> {
    let mut d: RingDetail = store.ring_detail(ring_id)?;
    if !full {
        for p in &mut d.results {
            p.token = crate::domain::short_key(p.platform, &p.token);
        }
    }
    if json {
        print_json(&d);
        return Ok(());
    }
    let RingLine { summary: s, doorbell_name, received_at, finished_at, latency_ms } = &d.ring;
    println!("ring {}: doorbell {} ({doorbell_name}), {}", s.ring_id, s.doorbell, s.state);
    println!(
        "pressed {}, received {}, finished {}; {} press(es); latency: first answer {}, last answer {}",
        time(s.pressed_at),
        time(*received_at),
        finished_at.map(time).unwrap_or_else(|| "-".into()),
        s.presses,
        ms(latency_ms.first),
        ms(latency_ms.all)
    );
    println!(
        "{} phones: {} delivered, {} failed, {} pruned, {} expired, {} pending",
        s.phones, s.delivered, s.failed, s.pruned, s.expired, s.pending
    );
    if d.unlisted_delivered > 0 {
        println!("({} delivered phones have been removed since and are not listed)", d.unlisted_delivered);
    }
    println!("{:>8}  {:<8}  {:<16}  {:<10}  {:<9}  REASON", "PHONE", "PLATFORM", "TOKEN", "ENV", "STATE");
    for p in &d.results {
        let env = if p.platform == crate::domain::Platform::Apns { p.environment.as_str() } else { "-" };
        println!(
            "{:>8}  {:<8}  {:<16}  {:<10}  {:<9}  {}",
            p.phone_id,
            p.platform,
            p.token,
            env,
            p.state,
            p.reason.as_deref().unwrap_or("")
        );
    }
    Ok(())
}

/// `dingdong backup FILE [--force]`: SQLite's online backup of the database, safe while the
/// daemon runs.
pub fn backup(path: &Path, file: &Path, force: bool) -> Result<(), CliError> {
    let cfg = load(path)?;
    let store = open_existing(&cfg.gateway.database)?;
    let t0 = std::time::Instant::now();
    let existing = if force { Existing::Replace } else { Existing::Refuse };
    let w = store.backup_to(file, existing)?;
    println!(
        "backed up {} to {} ({:.1} MB, schema {}) in {:.2}s",
        cfg.gateway.database.display(),
        w.path.display(),
        w.bytes as f64 / 1e6,
        w.schema,
        t0.elapsed().as_secs_f64()
    );
    Ok(())
}

/// The database, read-only and as it is (no migration): a backup copies what is there,
/// beside a running daemon of any version.
fn open_existing(db: &Path) -> Result<Store, CliError> {
    Store::open_readonly(db)
        .map_err(|e| CliError::input(format!("{e}; fix: check gateway.database, or start dingdong once to create it")))
}

/// UNIX ms as `2026-11-23 11:14:14`.
fn time(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(ms.max(0) as u64);
    humantime::format_rfc3339_seconds(t).to_string().replace('T', " ").trim_end_matches('Z').to_string()
}

fn ms(v: Option<i64>) -> String {
    v.map(|v| format!("{v} ms")).unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    #[test]
    fn since_and_times() {
        assert_eq!(super::parse_since("2h").unwrap(), std::time::Duration::from_secs(7200));
        assert!(super::parse_since("soon").unwrap_err().contains("90m"));
        assert_eq!(super::time(1_795_000_000_000), "2026-11-18 11:06:40");
        assert_eq!(super::ms(Some(5)), "5 ms");
    }
}
