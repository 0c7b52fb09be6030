//! The guessing budget: how many judged guesses of a code the gateway allows, and the worst
//! chance that they let a stranger pair. A *judged guess* is one proof checked against one
//! open window (SPAKE2 gives an active attacker exactly one candidate code per exchange, and
//! each proof tests it against one window). Two limits apply, whatever opened the windows
//! (`pair open`, share codes, the pair button):
//!
//! - each window closes for good after [`WINDOW_ATTEMPTS`] wrong judged guesses;
//! - all windows together allow [`WRONG_GUESSES_PER_DAY`] wrong judged guesses in any
//!   [`DAY_MS`]; an exchange that would judge more is refused unjudged (`rate_limited`).
//!
//! The store counts both (attempts per window, one budget event per wrong judged guess); the
//! rules are here, pure.

use super::CODE_SPACE;

/// Windows open at once, at most: a phone is offered every open window, and an offer holds at
/// most `wire::MAX_OFFERS`.
pub const MAX_OPEN_WINDOWS: usize = super::wire::MAX_OFFERS;
/// Wrong judged guesses after which a window is closed for good.
pub const WINDOW_ATTEMPTS: u32 = 5;
/// Wrong judged guesses allowed in any rolling [`DAY_MS`], all windows together.
pub const WRONG_GUESSES_PER_DAY: u32 = 100;
/// The budget's rolling period.
pub const DAY_MS: i64 = 24 * 3600 * 1000;
/// The ceiling the worst case must stay under: 0.1% a year.
pub const YEARLY_CHANCE_CEILING: f64 = 0.001;

/// How many more guesses may be judged, given the wrong ones of the last [`DAY_MS`].
pub fn room(wrong_in_last_day: u32) -> u32 {
    WRONG_GUESSES_PER_DAY.saturating_sub(wrong_in_last_day)
}

/// Whether one more wrong guess closes a window that has `attempts` already.
pub fn locks(attempts: u32) -> bool {
    attempts + 1 >= WINDOW_ATTEMPTS
}

/// The worst chance that continuous guessing pairs a phone within `days` days, with
/// `code_space` equally likely codes per window, `per_day` wrong judged guesses allowed in
/// any day and at most `window_attempts` guesses judged against one window.
///
/// Reasoning: `days` consecutive periods of one day each hold at most `days * per_day` wrong
/// guesses, so the attacker succeeds only if one of its first `n = days * per_day + 1` judged
/// guesses is right. A guess against a window that has already refused `k` codes is right
/// with probability `1 / (code_space - k)`, and `k < window_attempts`; so, given all earlier
/// guesses wrong, each is right with at most `p = 1 / (code_space - window_attempts + 1)`,
/// and the chance is at most `1 - (1 - p)^n`. Every window has its own code, drawn
/// independently, so how the guesses are spread over windows cannot do better.
pub fn worst_case_chance(code_space: u32, per_day: u32, window_attempts: u32, days: u32) -> f64 {
    let n = f64::from(days) * f64::from(per_day) + 1.0;
    let p = 1.0 / (f64::from(code_space) - f64::from(window_attempts) + 1.0);
    -(n * (-p).ln_1p()).exp_m1()
}

/// [`worst_case_chance`] of the implemented limits over a year (366 days, so a leap year and
/// a year's worth of partial days are covered).
pub fn worst_case_yearly_chance() -> f64 {
    worst_case_chance(CODE_SPACE, WRONG_GUESSES_PER_DAY, WINDOW_ATTEMPTS, 366)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The figure `docs/pairing.md` states; printed with `--nocapture`.
    #[test]
    fn a_year_of_guessing_pairs_with_less_than_a_tenth_of_a_percent() {
        let p = worst_case_yearly_chance();
        println!(
            "worst case: {:.4}% a year ({} digits, {} wrong guesses a day, {} per window)",
            p * 100.0,
            super::super::CODE_DIGITS,
            WRONG_GUESSES_PER_DAY,
            WINDOW_ATTEMPTS
        );
        assert!(p < YEARLY_CHANCE_CEILING, "{p}");
        assert!((p - 3.6594e-4).abs() < 1e-7, "the documented 0.0366%: {p}");
        // The union bound agrees: n / (space - attempts + 1).
        let union = (366.0 * f64::from(WRONG_GUESSES_PER_DAY) + 1.0) / f64::from(CODE_SPACE - WINDOW_ATTEMPTS + 1);
        assert!(p <= union && union - p < 1e-7);
    }

    #[test]
    fn the_old_limits_were_far_over_the_ceiling() {
        // Six digits, 6 button windows an hour with 5 guesses each: about 23% a year (issue 13).
        let old = worst_case_chance(1_000_000, 6 * 5 * 24, 5, 365);
        assert!((0.22..0.24).contains(&old), "{old}");
        // Eight digits without the daily budget would still be about 0.26%.
        assert!(worst_case_chance(CODE_SPACE, 6 * 5 * 24, 5, 365) > YEARLY_CHANCE_CEILING);
    }

    #[test]
    fn room_and_locks() {
        assert_eq!(room(0), WRONG_GUESSES_PER_DAY);
        assert_eq!(room(WRONG_GUESSES_PER_DAY - 1), 1);
        assert_eq!(room(WRONG_GUESSES_PER_DAY), 0);
        assert_eq!(room(u32::MAX), 0);
        assert!(!locks(0) && !locks(WINDOW_ATTEMPTS - 2));
        assert!(locks(WINDOW_ATTEMPTS - 1) && locks(WINDOW_ATTEMPTS));
    }
}
