use super::*;

fn berlin() -> TimeZone {
    TimeZone::get("Europe/Berlin").unwrap()
}

/// UNIX ms of a Berlin wall-clock time.
fn at(s: &str) -> i64 {
    let dt: jiff::civil::DateTime = s.parse().unwrap();
    dt.to_zoned_datetime(berlin()).unwrap().timestamp().as_millisecond()
}

fn quiet(from: &str, to: &str, days: &str, mode: Mode) -> Quiet {
    Quiet { from: parse_hhmm(from).unwrap(), to: parse_hhmm(to).unwrap(), days: Days::parse(days).unwrap(), mode }
}

fn rules(q: Vec<Quiet>) -> Rules {
    Rules { quiet: q, ..Default::default() }
}

#[test]
fn days_and_times_parse_and_print() {
    assert_eq!(Days::parse("mon-fri").unwrap().to_string(), "mon,tue,wed,thu,fri");
    assert_eq!(Days::parse("fri-mon").unwrap().to_string(), "mon,fri,sat,sun");
    assert_eq!(Days::parse("sat, sun").unwrap(), Days::parse("weekends").unwrap());
    assert_eq!(Days::parse("all").unwrap().to_string(), "all");
    assert!(Days::parse("funday").unwrap_err().contains("funday"));
    assert_eq!(parse_hhmm("07:30"), Ok(450));
    assert_eq!(hhmm(450), "07:30");
    for bad in ["24:00", "7", "07:60", "-1:00", "07:30:00", ""] {
        assert!(parse_hhmm(bad).is_err(), "{bad}");
    }
    assert_eq!(Level::parse("time-sensitive"), Some(Level::TimeSensitive));
    assert_eq!(Level::parse("loud"), None);
}

/// The edges of quiet hours: the first minute is quiet, the last minute is not.
#[test]
fn a_quiet_hours_edge() {
    let r = rules(vec![quiet("12:00", "14:00", "all", Mode::Skip)]);
    let tz = berlin();
    assert_eq!(decide(&r, None, at("2026-06-10T11:59:59"), &tz), Delivery::Send(Profile::default()));
    assert_eq!(decide(&r, None, at("2026-06-10T12:00:00"), &tz), Delivery::Skip);
    assert_eq!(decide(&r, None, at("2026-06-10T13:59:59"), &tz), Delivery::Skip);
    assert_eq!(decide(&r, None, at("2026-06-10T14:00:00"), &tz), Delivery::Send(Profile::default()));
}

/// 22:00-07:00 on weekdays: Friday night into Saturday morning is quiet, Saturday night is not,
/// Sunday night into Monday is not (the window starts on Sunday, not a weekday).
#[test]
fn a_window_across_midnight() {
    let r = rules(vec![quiet("22:00", "07:00", "mon-fri", Mode::Silent)]);
    let tz = berlin();
    // 2026-06-12 is a Friday.
    assert_eq!(decide(&r, None, at("2026-06-12T23:30:00"), &tz), Delivery::Silent);
    assert_eq!(decide(&r, None, at("2026-06-13T06:59:00"), &tz), Delivery::Silent);
    assert_eq!(decide(&r, None, at("2026-06-13T07:00:00"), &tz), Delivery::Send(Profile::default()));
    assert_eq!(decide(&r, None, at("2026-06-13T23:30:00"), &tz), Delivery::Send(Profile::default()));
    assert_eq!(decide(&r, None, at("2026-06-15T03:00:00"), &tz), Delivery::Send(Profile::default()));
    assert_eq!(decide(&r, None, at("2026-06-16T03:00:00"), &tz), Delivery::Silent);
}

/// Quiet hours are wall-clock: across the spring and autumn changes they begin at 22:00 local
/// time on both sides, whatever the UTC offset did in between.
#[test]
fn daylight_saving_changes_keep_wall_clock_hours() {
    let r = rules(vec![quiet("01:30", "03:30", "all", Mode::Skip)]);
    let tz = berlin();
    // 2026-03-29: 02:00 CET jumps to 03:00 CEST. 01:45 is quiet, 03:15 CEST is quiet, 03:30 not.
    assert_eq!(decide(&r, None, at("2026-03-29T01:45:00"), &tz), Delivery::Skip);
    assert_eq!(decide(&r, None, at("2026-03-29T03:15:00"), &tz), Delivery::Skip);
    assert_eq!(decide(&r, None, at("2026-03-29T03:30:00"), &tz), Delivery::Send(Profile::default()));
    // 2026-10-25: 03:00 CEST falls back to 02:00 CET; both passes through 02:30 are quiet, and
    // the window ends at 03:30 CET, one hour of UTC later than on a plain night.
    let first = at("2026-10-25T01:30:00");
    assert_eq!(decide(&r, None, first + 3_600_000, &tz), Delivery::Skip, "02:30 CEST");
    assert_eq!(decide(&r, None, first + 2 * 3_600_000, &tz), Delivery::Skip, "02:30 CET");
    assert_eq!(decide(&r, None, first + 3 * 3_600_000 - 60_000, &tz), Delivery::Skip, "03:29 CET");
    assert_eq!(decide(&r, None, first + 3 * 3_600_000, &tz), Delivery::Send(Profile::default()), "03:30 CET");
    // `--until 07:00` on the night of the change is 7 o'clock local, not 7 hours of UTC later.
    let until = parse_until("07:00", first, &tz).unwrap();
    assert_eq!(until, at("2026-10-25T07:00:00"));
    assert_eq!((until - first) / 3_600_000, 6, "01:30 CEST to 07:00 CET is 6.5 h");
}

#[test]
fn snoozes_end_by_themselves_and_the_stricter_mode_wins() {
    let tz = berlin();
    let now = at("2026-06-10T12:00:00");
    let all = Rules { snooze: Some(Snooze { until: now + 60_000, mode: Mode::Silent }), ..Default::default() };
    assert_eq!(decide(&all, None, now, &tz), Delivery::Silent);
    assert_eq!(decide(&all, None, now + 60_000, &tz), Delivery::Send(Profile::default()));
    let bell = rules(vec![quiet("11:00", "13:00", "all", Mode::Skip)]);
    assert_eq!(decide(&all, Some(&bell), now, &tz), Delivery::Skip);
}

#[test]
fn a_doorbells_profile_overrides_the_persons() {
    let tz = berlin();
    let crit = Profile { level: Level::Critical, sound: Some("bell.caf".into()), volume_milli: Some(800) };
    let all = Rules { profile: Some(Profile { level: Level::Active, ..Default::default() }), ..Default::default() };
    let bell = Rules { profile: Some(crit.clone()), ..Default::default() };
    assert_eq!(decide(&all, Some(&bell), 0, &tz), Delivery::Send(crit.clone()));
    assert_eq!(decide(&all, None, 0, &tz), Delivery::Send(Profile { level: Level::Active, ..Default::default() }));
    assert_eq!(crit.volume(), Some(0.8));
}

#[test]
fn until_accepts_a_time_or_an_instant_in_the_future() {
    let tz = berlin();
    let now = at("2026-06-10T12:00:00");
    assert_eq!(parse_until("13:00", now, &tz), Ok(at("2026-06-10T13:00:00")));
    assert_eq!(parse_until("11:00", now, &tz), Ok(at("2026-06-11T11:00:00")));
    assert_eq!(parse_until("2026-06-10T12:30:00Z", now, &tz), Ok(now + 2 * 3_600_000 + 30 * 60_000));
    assert!(parse_until("2020-01-01T00:00:00Z", now, &tz).unwrap_err().contains("past"));
    assert!(parse_until("soon", now, &tz).is_err());
    assert!(time_zone(Some("Mars/Olympus")).unwrap_err().contains("Mars/Olympus"));
    assert!(time_zone(None).is_ok());
}
