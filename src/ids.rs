//! Identifiers and timestamps.
//!
//! Ids are a type prefix and 26 Crockford base-32 characters (48 bits of milliseconds, 80
//! random bits, as ULIDs): unique, unguessable, and sortable by creation time. Timestamps are
//! RFC 3339 UTC with a fixed six-digit fraction, so their text order is their time order.

use chrono::{DateTime, SecondsFormat, Utc};
use rand::Rng;

const CROCKFORD: &[u8; 32] = b"0123456789abcdefghjkmnpqrstvwxyz";

/// A new id such as `agent_01jh8k2m3n4p5q6r7s8t9v0w1x`.
pub fn new_id(prefix: &str) -> String {
    let millis = u128::try_from(Utc::now().timestamp_millis()).unwrap_or(0);
    let random: u128 = rand::rng().random::<u128>() & ((1u128 << 80) - 1);
    let mut value = (millis << 80) | random;
    let mut chars = [0u8; 26];
    for c in chars.iter_mut().rev() {
        *c = CROCKFORD[(value & 31) as usize];
        value >>= 5;
    }
    format!("{prefix}_{}", String::from_utf8_lossy(&chars))
}

/// Formats an instant the way every table stores it.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Now, formatted for storage.
pub fn now() -> String {
    format_time(Utc::now())
}

/// Parses RFC 3339 (any offset) and normalizes it to the storage format.
pub fn normalize_time(input: &str) -> Option<String> {
    DateTime::parse_from_rfc3339(input)
        .ok()
        .map(|t| format_time(t.with_timezone(&Utc)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_prefixed_unique_and_time_ordered() {
        let a = new_id("agent");
        std::thread::sleep(std::time::Duration::from_millis(2));
        let b = new_id("agent");
        assert!(a.starts_with("agent_") && a.len() == "agent_".len() + 26);
        assert!(a < b, "{a} < {b}");
    }

    #[test]
    fn times_normalize_to_fixed_width_utc() {
        assert_eq!(
            normalize_time("2024-01-01T02:00:00+02:00").as_deref(),
            Some("2024-01-01T00:00:00.000000Z")
        );
        assert_eq!(normalize_time("yesterday"), None);
        assert!(now().ends_with('Z') && now().len() == 27);
    }
}
