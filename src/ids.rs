//! Identifiers and timestamps.
//!
//! Ids are a type prefix and a ULID in lower-case Crockford base 32 (48 bits of milliseconds,
//! 80 random bits): unique, unguessable, and sortable by creation time. Timestamps are
//! RFC 3339 UTC with a fixed six-digit fraction, so their text order is their time order.

use chrono::{DateTime, SecondsFormat, Utc};

/// A new id such as `agent_01jh8k2m3n4p5q6r7s8t9v0w1x`.
pub fn new_id(prefix: &str) -> String {
    let mut id = format!("{prefix}_{}", ulid::Ulid::new());
    id.make_ascii_lowercase();
    id
}

/// Formats an instant the way every table stores it.
pub fn format_time(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

/// Now, formatted for storage.
pub fn now() -> String {
    format_time(Utc::now())
}

/// Whole seconds from an RFC 3339 time to `now` (0 when absent, unparsable or ahead).
pub fn seconds_since(at: Option<&str>, now: DateTime<Utc>) -> i64 {
    at.and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map_or(0, |t| (now - t.with_timezone(&Utc)).num_seconds().max(0))
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
