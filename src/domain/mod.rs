//! The vocabulary every layer speaks: device tokens and environments, the message of a ring
//! and each phone's outcome, button presses, ids and names, platforms, the clock. Imports nothing of ours.

pub mod files;
pub mod household;
pub mod ids;
pub mod mem;
pub mod outcome;
pub mod press;
pub mod state;
pub mod time;
pub mod timing;
pub mod token;

pub use ids::{check_id, check_name, check_name_within, check_text, printable, valid_id, NameError, NAME_MAX};
pub use outcome::{
    short_endpoint, short_key, Address, Message, Notice, Outcome, Platform, Reason, Target, WebPushKeys,
};
pub use press::{ButtonPress, Source};
pub use state::{PhoneState, RingState};
pub use time::{now_ms, now_us};
pub use timing::RingTiming;
pub use token::{normalize_token, short_token, Environment, Token, TokenError, TOKEN_MAX_BYTES, TOKEN_MIN_BYTES};
