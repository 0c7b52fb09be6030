//! Which push service reaches a phone. (The transports for FCM and Web Push come with their
//! own branch; pairing already registers phones of every platform.)

use serde::Serialize;
use std::fmt;

/// Which push service reaches a phone.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum Platform {
    /// Apple's push service (iPhones, iPads).
    Apns,
    /// Firebase Cloud Messaging HTTP v1 (Android).
    Fcm,
    /// RFC 8030 Web Push (a browser, a home-screen web app).
    Webpush,
}

impl Platform {
    pub const ALL: [Platform; 3] = [Platform::Apns, Platform::Fcm, Platform::Webpush];

    pub fn as_str(self) -> &'static str {
        match self {
            Platform::Apns => "apns",
            Platform::Fcm => "fcm",
            Platform::Webpush => "webpush",
        }
    }

    pub fn parse(s: &str) -> Option<Platform> {
        match s {
            "apns" => Some(Platform::Apns),
            "fcm" => Some(Platform::Fcm),
            "webpush" => Some(Platform::Webpush),
            _ => None,
        }
    }
}

impl fmt::Display for Platform {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip() {
        for p in Platform::ALL {
            assert_eq!(Platform::parse(p.as_str()), Some(p));
        }
        assert_eq!(Platform::parse("sms"), None);
    }
}
