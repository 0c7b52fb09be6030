//! Household controls, as rules and one pure decision: how a person's phones are alerted
//! (alert level, sound), when they are quiet (quiet hours in local time, per day), and snoozes
//! that end by themselves. [`decide`] turns a person's rules, the doorbell and the moment into
//! what to do with their phones; the outbox applies it at send time.
//!
//! Local time comes from a maintained time-zone database (jiff): quiet hours are wall-clock
//! times, so an instant is turned into the local date and time of `[gateway] timezone` and
//! compared there, which keeps daylight-saving changes right without hand-written offsets.

use jiff::civil::{Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use serde::{Deserialize, Serialize};
use std::fmt;

/// How a notification interrupts (Apple's `interruption-level`; other platforms map it).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum Level {
    /// Delivered quietly: no sound, no lighting up.
    Passive,
    /// The usual alert.
    Active,
    /// Breaks through Focus modes (the default for a doorbell).
    #[default]
    TimeSensitive,
    /// Breaks through mute and Focus with its own volume (Apple's entitlement needed).
    Critical,
}

impl Level {
    pub fn parse(s: &str) -> Option<Level> {
        Some(match s {
            "passive" => Level::Passive,
            "active" => Level::Active,
            "time-sensitive" => Level::TimeSensitive,
            "critical" => Level::Critical,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Level::Passive => "passive",
            Level::Active => "active",
            Level::TimeSensitive => "time-sensitive",
            Level::Critical => "critical",
        }
    }
}

impl fmt::Display for Level {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How one phone is alerted: one payload is built per distinct profile of a ring.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
pub struct Profile {
    pub level: Level,
    /// A sound name; `None`: the configured `ring.sound` (no sound at all when passive).
    pub sound: Option<String>,
    /// Critical alerts' volume in thousandths (0..=1000), so profiles can be compared exactly.
    pub volume_milli: Option<u16>,
}

impl Profile {
    /// Quiet: passive, without a sound (what `silent` quiet hours and snoozes send).
    pub fn silent() -> Profile {
        Profile { level: Level::Passive, sound: None, volume_milli: None }
    }

    pub fn volume(&self) -> Option<f64> {
        self.volume_milli.map(|v| f64::from(v) / 1000.0)
    }
}

/// What quiet hours and snoozes do to a ring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// Not sent; the phone's outcome is `muted`.
    #[default]
    Skip,
    /// Sent passive and silent; the phone's outcome is `silenced`.
    Silent,
}

impl Mode {
    pub fn parse(s: &str) -> Option<Mode> {
        match s {
            "skip" => Some(Mode::Skip),
            "silent" => Some(Mode::Silent),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Skip => "skip",
            Mode::Silent => "silent",
        }
    }
}

/// A set of weekdays, Monday = bit 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Days(pub u8);

impl Days {
    pub const ALL: Days = Days(0x7f);

    pub fn contains(self, d: Weekday) -> bool {
        self.0 & (1 << (d.to_monday_zero_offset() as u8)) != 0
    }

    /// `mon-fri`, `sat,sun`, `mon,wed-fri`, `all`, `weekdays`, `weekends`.
    pub fn parse(s: &str) -> Result<Days, String> {
        let day = |w: &str| -> Result<u8, String> {
            const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
            NAMES
                .iter()
                .position(|n| w.eq_ignore_ascii_case(n))
                .map(|p| p as u8)
                .ok_or_else(|| format!("'{w}' is not a day (mon, tue, wed, thu, fri, sat, sun)"))
        };
        match s.trim().to_ascii_lowercase().as_str() {
            "all" | "daily" => return Ok(Days::ALL),
            "weekdays" => return Ok(Days(0x1f)),
            "weekends" => return Ok(Days(0x60)),
            _ => {}
        }
        let mut bits = 0u8;
        for part in s.split(',').map(str::trim) {
            match part.split_once('-') {
                Some((a, b)) => {
                    let (a, b) = (day(a)?, day(b)?);
                    let mut d = a;
                    loop {
                        bits |= 1 << d;
                        if d == b {
                            break;
                        }
                        d = (d + 1) % 7;
                    }
                }
                None => bits |= 1 << day(part)?,
            }
        }
        if bits == 0 {
            return Err("no day given".into());
        }
        Ok(Days(bits))
    }
}

impl fmt::Display for Days {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const NAMES: [&str; 7] = ["mon", "tue", "wed", "thu", "fri", "sat", "sun"];
        if *self == Days::ALL {
            return f.write_str("all");
        }
        let names: Vec<&str> = (0..7).filter(|i| self.0 & (1 << i) != 0).map(|i| NAMES[i]).collect();
        f.write_str(&names.join(","))
    }
}

/// A wall-clock time of day, minutes after midnight.
pub fn parse_hhmm(s: &str) -> Result<u16, String> {
    let bad = || format!("'{s}' is not a time of day; write it as HH:MM, 00:00 to 23:59");
    let (h, m) = s.trim().split_once(':').ok_or_else(bad)?;
    let (h, m): (u16, u16) = (h.parse().map_err(|_| bad())?, m.parse().map_err(|_| bad())?);
    if h > 23 || m > 59 || s.trim().len() > 5 {
        return Err(bad());
    }
    Ok(h * 60 + m)
}

/// `HH:MM` of minutes after midnight.
pub fn hhmm(minutes: u16) -> String {
    format!("{:02}:{:02}", minutes / 60, minutes % 60)
}

/// Quiet hours: from `from` to `to` (local wall-clock minutes) on windows that start on `days`;
/// `to <= from` spans midnight into the next day.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quiet {
    pub from: u16,
    pub to: u16,
    pub days: Days,
    pub mode: Mode,
}

impl Quiet {
    /// Whether local `weekday` and `minute` fall in these quiet hours.
    pub fn covers(&self, weekday: Weekday, minute: u16) -> bool {
        if self.from < self.to {
            self.days.contains(weekday) && (self.from..self.to).contains(&minute)
        } else {
            // A window that spans midnight: its evening part today, or its morning part
            // belonging to a window that started yesterday.
            (self.days.contains(weekday) && minute >= self.from)
                || (self.days.contains(weekday.previous()) && minute < self.to)
        }
    }
}

impl Quiet {
    /// As replies and `quiet list` show it: times `HH:MM`, days as written.
    pub fn describe(&self) -> serde_json::Value {
        serde_json::json!({"from": hhmm(self.from), "to": hhmm(self.to), "days": self.days.to_string(), "mode": self.mode.as_str()})
    }
}

/// A snooze until `until` (UNIX ms).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snooze {
    pub until: i64,
    pub mode: Mode,
}

/// One person's rules: those for every doorbell, and those for one doorbell.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Rules {
    pub profile: Option<Profile>,
    pub quiet: Vec<Quiet>,
    pub snooze: Option<Snooze>,
}

/// What to do with a person's phones for one ring.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Delivery {
    /// Send with this profile.
    Send(Profile),
    /// Send passive and silent (`silenced`).
    Silent,
    /// Do not send (`muted`).
    Skip,
}

/// The decision for a person: `all` are their rules for every doorbell, `bell` those for the
/// ringing doorbell (which override the alert profile, and add quiet hours and snoozes).
/// Quiet hours and snoozes in force combine to the stricter mode: skip wins over silent.
pub fn decide(all: &Rules, bell: Option<&Rules>, now_ms: i64, tz: &TimeZone) -> Delivery {
    let local = Timestamp::from_millisecond(now_ms).unwrap_or(Timestamp::UNIX_EPOCH).to_zoned_datetime(tz.clone());
    let (weekday, t): (Weekday, Time) = (local.weekday(), local.time());
    let minute = t.hour() as u16 * 60 + t.minute() as u16;
    let mut mode: Option<Mode> = None;
    let mut strictest = |m: Mode| {
        mode = Some(match (mode, m) {
            (Some(Mode::Skip), _) | (_, Mode::Skip) => Mode::Skip,
            _ => Mode::Silent,
        })
    };
    for rules in std::iter::once(all).chain(bell) {
        if let Some(s) = rules.snooze.filter(|s| s.until > now_ms) {
            strictest(s.mode);
        }
        for q in rules.quiet.iter().filter(|q| q.covers(weekday, minute)) {
            strictest(q.mode);
        }
    }
    match mode {
        Some(Mode::Skip) => Delivery::Skip,
        Some(Mode::Silent) => Delivery::Silent,
        None => {
            Delivery::Send(bell.and_then(|b| b.profile.clone()).or_else(|| all.profile.clone()).unwrap_or_default())
        }
    }
}

/// At most this many quiet-hour windows per person and doorbell (or every doorbell).
pub const MAX_QUIET: usize = 8;
/// A snooze or mute lasts at most this long (a "do not disturb" switch has no end).
pub const MAX_MUTE_MS: i64 = 366 * 24 * 3600 * 1000;
/// Until when "do not disturb" (Home Assistant's switch) mutes: no end of its own.
pub const FOREVER: i64 = i64::MAX;

impl Profile {
    /// A profile as a person asks for it: a sound is 1 to 64 of letters, digits, '-', '_',
    /// '.' (a file name in the app), a volume 0 to 1 and only with `critical`.
    pub fn new(level: Level, sound: Option<&str>, volume: Option<f64>) -> Result<Profile, String> {
        if let Some(s) = sound {
            let ok = !s.is_empty()
                && s.len() <= 64
                && s.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
            if !ok {
                return Err(format!(
                    "sound: '{}' must be 1 to 64 of letters, digits, '-', '_', '.'",
                    crate::domain::printable(s)
                ));
            }
        }
        let volume_milli = match volume {
            None => None,
            Some(_) if level != Level::Critical => return Err("volume: only a critical alert has a volume".into()),
            Some(v) if v.is_finite() && (0.0..=1.0).contains(&v) => Some((v * 1000.0).round() as u16),
            Some(v) => return Err(format!("volume: {v} is not from 0 to 1")),
        };
        Ok(Profile { level, sound: sound.map(str::to_string), volume_milli })
    }
}

/// One change a person (or the household's admin) makes to their rules: the CLI, a phone's
/// signed request and Home Assistant all say it this way.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Change {
    /// Alert this way (`None`: as usual, time-sensitive with `ring.sound`).
    Alert(Option<Profile>),
    /// Adds quiet hours, replacing those on the same days.
    QuietSet(Quiet),
    /// Removes every quiet-hour window.
    QuietClear,
    /// Mutes (or silences) until a time.
    Mute(Snooze),
    Unmute,
}

impl Change {
    /// Applies the change; refuses one that would make the rules too big.
    pub fn apply(&self, r: &mut Rules) -> Result<(), String> {
        match self {
            Change::Alert(p) => r.profile = p.clone(),
            Change::QuietSet(q) => {
                r.quiet.retain(|old| old.days != q.days);
                if r.quiet.len() >= MAX_QUIET {
                    return Err(format!("at most {MAX_QUIET} quiet-hour windows; remove some first"));
                }
                r.quiet.push(q.clone());
            }
            Change::QuietClear => r.quiet.clear(),
            Change::Mute(s) => r.snooze = Some(*s),
            Change::Unmute => r.snooze = None,
        }
        Ok(())
    }
}

impl Rules {
    /// Whether a mute is in force at `now_ms`.
    pub fn muted_at(&self, now_ms: i64) -> bool {
        self.snooze.is_some_and(|s| s.until > now_ms)
    }
}

/// The gateway's time zone: an IANA name, or the system's when none is configured.
pub fn time_zone(name: Option<&str>) -> Result<TimeZone, String> {
    match name {
        Some(n) => TimeZone::get(n).map_err(|_| format!("'{n}' is not an IANA time zone (like \"Europe/Berlin\")")),
        None => Ok(TimeZone::try_system().unwrap_or(TimeZone::UTC)),
    }
}

/// The end of a snooze given as `--until`: `HH:MM` (its next occurrence in local time) or an
/// RFC 3339 instant; UNIX ms.
pub fn parse_until(s: &str, now_ms: i64, tz: &TimeZone) -> Result<i64, String> {
    if let Ok(minutes) = parse_hhmm(s) {
        let now = Timestamp::from_millisecond(now_ms).map_err(|e| e.to_string())?.to_zoned_datetime(tz.clone());
        let at = Time::new((minutes / 60) as i8, (minutes % 60) as i8, 0, 0).map_err(|e| e.to_string())?;
        let mut day = now.date();
        loop {
            // The first local date-time at or after `at` (a time skipped by a DST change moves on).
            let candidate = day.to_datetime(at).to_zoned_datetime(tz.clone()).map_err(|e| e.to_string())?;
            if candidate.timestamp().as_millisecond() > now_ms {
                return Ok(candidate.timestamp().as_millisecond());
            }
            day = day.tomorrow().map_err(|e| e.to_string())?;
        }
    }
    let t: Timestamp = s.parse().map_err(|_| format!("'{s}' is not HH:MM or an RFC 3339 time"))?;
    let ms = t.as_millisecond();
    if ms <= now_ms {
        return Err(format!("'{s}' is in the past"));
    }
    Ok(ms)
}

#[cfg(test)]
mod tests;
