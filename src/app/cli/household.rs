//! Household controls from the command line: `alert`, `quiet set|list|rm`, `mute`, `unmute`.
//! Each is one [`Change`] to a person's rules, written in one transaction; the daemon sees it
//! at the next ring (the store's change counter), and Home Assistant's switch and select follow.

use super::{load, open, open_store, print_json, CliError};
use crate::domain::household::{self, parse_hhmm, Change, Days, Level, Mode, Profile, Quiet, Rules, Snooze};
use crate::store::Store;
use clap::{Args, Subcommand};
use std::path::Path;

#[derive(Args, Debug)]
pub struct AlertArgs {
    pub user: String,
    /// Only for this doorbell (else for every doorbell).
    #[arg(long, value_name = "ID")]
    pub doorbell: Option<String>,
    /// passive, active, time-sensitive (the default) or critical.
    #[arg(long, value_parser = parse_level)]
    pub level: Level,
    /// A sound the app ships (default: `ring.sound`).
    #[arg(long, value_name = "NAME")]
    pub sound: Option<String>,
    /// A critical alert's volume, 0 to 1.
    #[arg(long, value_name = "V")]
    pub volume: Option<f64>,
}

#[derive(Subcommand, Debug)]
pub enum QuietCmd {
    /// Adds quiet hours (replacing those on the same days).
    Set {
        user: String,
        /// Local time HH:MM; a window whose end is not after its start spans midnight.
        #[arg(long, value_name = "HH:MM", value_parser = parse_hhmm)]
        from: u16,
        #[arg(long, value_name = "HH:MM", value_parser = parse_hhmm)]
        to: u16,
        /// The days a window starts on: mon-fri, sat,sun, weekdays, weekends, all.
        #[arg(long, default_value = "all", value_parser = Days::parse)]
        days: Days,
        #[arg(long, value_name = "ID")]
        doorbell: Option<String>,
        /// skip: not sent (muted); silent: sent quietly (silenced).
        #[arg(long, default_value = "skip", value_parser = parse_mode)]
        mode: Mode,
    },
    /// Every person's quiet hours and mutes.
    List {
        #[arg(long)]
        json: bool,
    },
    /// Removes a person's quiet hours (for every doorbell, or one).
    Rm {
        user: String,
        #[arg(long, value_name = "ID")]
        doorbell: Option<String>,
    },
}

#[derive(Args, Debug)]
pub struct MuteArgs {
    pub user: String,
    #[arg(long, value_name = "ID")]
    pub doorbell: Option<String>,
    /// How long: 30m, 2h, 1d (at most a year).
    #[arg(long = "for", value_name = "DURATION", value_parser = humantime::parse_duration,
          required_unless_present = "until", conflicts_with = "until")]
    pub for_: Option<std::time::Duration>,
    /// Until HH:MM (its next occurrence, local time) or an RFC 3339 time.
    #[arg(long, value_name = "TIME")]
    pub until: Option<String>,
    #[arg(long, default_value = "skip", value_parser = parse_mode)]
    pub mode: Mode,
}

fn parse_level(s: &str) -> Result<Level, String> {
    Level::parse(s).ok_or_else(|| format!("'{s}' is not a level: passive, active, time-sensitive or critical"))
}

fn parse_mode(s: &str) -> Result<Mode, String> {
    Mode::parse(s).ok_or_else(|| format!("'{s}' is not a mode: skip or silent"))
}

/// Applies `change` to `user`'s rules (for `doorbell` or every doorbell).
fn change(store: &mut Store, user: &str, doorbell: Option<&str>, change: Change) -> Result<Rules, CliError> {
    let mut refused = None;
    let rules = store.update_rules(user, doorbell, |r| {
        if let Err(e) = change.apply(r) {
            refused = Some(e);
        }
    })?;
    if let Some(e) = refused {
        return Err(CliError::input(e));
    }
    Ok(rules)
}

fn scope(doorbell: Option<&str>) -> String {
    doorbell.map_or_else(|| "every doorbell".to_string(), |d| format!("doorbell {d}"))
}

/// `dingdong alert`.
pub fn alert(path: &Path, a: &AlertArgs) -> Result<(), CliError> {
    let profile = Profile::new(a.level, a.sound.as_deref(), a.volume).map_err(CliError::input)?;
    // The usual profile is stored as no profile (a later change of `ring.sound` applies).
    let p = (profile != Profile::default()).then_some(profile);
    change(&mut open(path)?, &a.user, a.doorbell.as_deref(), Change::Alert(p))?;
    println!("{}: alerted {} for {}", a.user, a.level, scope(a.doorbell.as_deref()));
    Ok(())
}

/// `dingdong quiet ...`.
pub fn quiet(path: &Path, cmd: &QuietCmd) -> Result<(), CliError> {
    match cmd {
        QuietCmd::Set { user, from, to, days, doorbell, mode } => {
            if from == to {
                return Err(CliError::input("--from and --to are the same time; quiet hours need a length"));
            }
            let q = Quiet { from: *from, to: *to, days: *days, mode: *mode };
            change(&mut open(path)?, user, doorbell.as_deref(), Change::QuietSet(q))?;
            println!(
                "{user}: quiet {}-{} on {days} ({}) for {}",
                household::hhmm(*from),
                household::hhmm(*to),
                mode.as_str(),
                scope(doorbell.as_deref())
            );
        }
        QuietCmd::Rm { user, doorbell } => {
            change(&mut open(path)?, user, doorbell.as_deref(), Change::QuietClear)?;
            println!("{user}: no quiet hours for {}", scope(doorbell.as_deref()));
        }
        QuietCmd::List { json } => {
            let cfg = load(path)?;
            let store = open_store(&cfg)?;
            let rows = store.list_rules()?;
            let now = crate::domain::now_ms();
            let tz = cfg.timezone();
            let lines: Vec<serde_json::Value> = rows.iter().map(|r| describe(r, now, &tz)).collect();
            if *json {
                print_json(&lines);
            } else if lines.is_empty() {
                println!("no quiet hours, mutes or alert levels set");
            } else {
                println!("{:<16} {:<16} {:<34} {:<28} ALERT", "USER", "DOORBELL", "QUIET", "MUTED UNTIL");
                for (r, l) in rows.iter().zip(&lines) {
                    let quiet: Vec<String> = l["quiet"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .map(|q| {
                            format!(
                                "{}-{} {} {}",
                                q["from"].as_str().unwrap_or(""),
                                q["to"].as_str().unwrap_or(""),
                                q["days"].as_str().unwrap_or(""),
                                q["mode"].as_str().unwrap_or("")
                            )
                        })
                        .collect();
                    let muted = match &l["muted_until"] {
                        serde_json::Value::String(s) => format!("{s} ({})", l["mute_mode"].as_str().unwrap_or("")),
                        _ => "-".into(),
                    };
                    println!(
                        "{:<16} {:<16} {:<34} {:<28} {}",
                        r.user,
                        r.doorbell.as_deref().unwrap_or("*"),
                        if quiet.is_empty() { "-".into() } else { quiet.join("; ") },
                        muted,
                        l["alert"]["level"].as_str().unwrap_or("-")
                    );
                }
            }
        }
    }
    Ok(())
}

/// One person's rules for a scope, as `quiet list` shows them (times local, `HH:MM`).
fn describe(r: &crate::store::household::RulesRow, now: i64, tz: &jiff::tz::TimeZone) -> serde_json::Value {
    let quiet: Vec<serde_json::Value> = r.rules.quiet.iter().map(Quiet::describe).collect();
    let mut v = serde_json::json!({"user": r.user, "doorbell": r.doorbell, "quiet": quiet});
    if let Some(s) = r.rules.snooze.filter(|s| s.until > now) {
        v["muted_until"] = if s.until == household::FOREVER {
            "do not disturb".into()
        } else {
            jiff::Timestamp::from_millisecond(s.until)
                .map(|t| t.to_zoned_datetime(tz.clone()).strftime("%Y-%m-%d %H:%M %Z").to_string())
                .unwrap_or_default()
                .into()
        };
        v["mute_mode"] = s.mode.as_str().into();
    }
    if let Some(p) = &r.rules.profile {
        v["alert"] = serde_json::json!({"level": p.level.as_str(), "sound": p.sound, "volume": p.volume()});
    }
    v
}

/// `dingdong mute`.
pub fn mute(path: &Path, a: &MuteArgs) -> Result<(), CliError> {
    let cfg = load(path)?;
    let now = crate::domain::now_ms();
    let until = match (&a.for_, &a.until) {
        (Some(d), _) => {
            let ms = i64::try_from(d.as_millis()).unwrap_or(i64::MAX);
            if ms <= 0 || ms > household::MAX_MUTE_MS {
                return Err(CliError::input("--for: must be more than nothing and at most a year"));
            }
            now + ms
        }
        (None, Some(t)) => {
            let until = household::parse_until(t, now, &cfg.timezone())
                .map_err(|e| CliError::input(format!("--until: {e}")))?;
            if until - now > household::MAX_MUTE_MS {
                return Err(CliError::input("--until: at most a year from now"));
            }
            until
        }
        (None, None) => unreachable!("clap requires --for or --until"),
    };
    // The config is read once: its time zone and its database.
    change(&mut open_store(&cfg)?, &a.user, a.doorbell.as_deref(), Change::Mute(Snooze { until, mode: a.mode }))?;
    let local = jiff::Timestamp::from_millisecond(until)
        .map(|t| t.to_zoned_datetime(cfg.timezone()).strftime("%Y-%m-%d %H:%M %Z").to_string())
        .unwrap_or_default();
    println!("{}: muted ({}) for {} until {local}", a.user, a.mode.as_str(), scope(a.doorbell.as_deref()));
    Ok(())
}

/// `dingdong unmute`.
pub fn unmute(path: &Path, user: &str, doorbell: Option<&str>) -> Result<(), CliError> {
    change(&mut open(path)?, user, doorbell, Change::Unmute)?;
    println!("{user}: not muted for {}", scope(doorbell));
    Ok(())
}
