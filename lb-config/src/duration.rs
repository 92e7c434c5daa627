//! Durations as the config writes them: humantime's units ("500ms",
//! "30s", "1m30s", "2 days"); a bare number is refused, since nobody can
//! tell seconds from milliseconds. xtask reads durations by the same rule.

use std::time::Duration;

use serde::{Deserialize, Deserializer, Serializer};

/// Parses a duration with a unit.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. \"30s\"".into());
    }
    if text.bytes().all(|b| b.is_ascii_digit()) {
        return Err(format!("{text:?} has no unit; write e.g. \"{text}s\""));
    }
    humantime::parse_duration(text).map_err(|error| {
        format!(
            "{text:?} is not a duration ({error}); write e.g. \"500ms\", \"30s\", \"15m\", \"1h\""
        )
    })
}

/// The form the config is written in, read back by [`parse_duration`].
pub fn format_duration(duration: Duration) -> String {
    if duration.is_zero() {
        return "0s".into();
    }
    humantime::format_duration(duration)
        .to_string()
        .replace(' ', "")
}

/// For `#[serde(with = "crate::duration")]`.
pub(crate) fn serialize<S: Serializer>(
    duration: &Duration,
    serializer: S,
) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&format_duration(*duration))
}

pub(crate) fn deserialize<'de, D: Deserializer<'de>>(
    deserializer: D,
) -> Result<Duration, D::Error> {
    let text = String::deserialize(deserializer)?;
    parse_duration(&text).map_err(serde::de::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_need_a_unit() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("30").unwrap_err().contains("no unit"));
        assert_eq!(
            parse_duration("2 days"),
            Ok(Duration::from_secs(2 * 86_400))
        );
        assert!(parse_duration("").is_err());
        assert!(parse_duration("5q").unwrap_err().contains("not a duration"));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn written_durations_read_back() {
        for duration in [
            Duration::ZERO,
            Duration::from_millis(200),
            Duration::from_millis(1500),
            Duration::from_secs(90),
            Duration::from_secs(15 * 60),
            Duration::from_secs(86_400 * 3 + 7),
            Duration::from_nanos(1_000_000_007),
        ] {
            let text = format_duration(duration);
            assert_eq!(parse_duration(&text), Ok(duration), "{text}");
        }
        assert_eq!(format_duration(Duration::from_secs(900)), "15m");
        assert_eq!(format_duration(Duration::from_millis(1500)), "1s500ms");
    }
}
