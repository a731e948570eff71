//! Quantities as people write and read them: sizes ("1.5 GiB"), ages
//! ("3d 4h") and durations ("24h", "90m"). The bottom floor: it uses nothing
//! of the crate.

use std::time::Duration;

/// Human-readable size (binary units).
pub fn size(bytes: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

/// Whole seconds as "3d 4h", "25m", "40s".
pub fn age(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        s if s >= 86_400 => format!("{}d {}h", s / 86_400, s % 86_400 / 3600),
        s if s >= 3600 => format!("{}h {}m", s / 3600, s % 3600 / 60),
        s if s >= 60 => format!("{}m", s / 60),
        s => format!("{s}s"),
    }
}

/// Parse "24h", "90m", "2s", "7d", "1h30m" (jiff's friendly format; a day is
/// 24 hours) into a positive duration. Used by `--every`, `--rpo`, `--grace`.
pub fn parse_duration(text: &str) -> std::result::Result<Duration, String> {
    let span: jiff::Span = text
        .trim()
        .parse()
        .map_err(|e| format!("'{text}' is not a duration like 24h, 90m, 2s or 7d: {e}"))?;
    let duration = span
        .to_duration(jiff::SpanRelativeTo::days_are_24_hours())
        .map_err(|e| format!("'{text}': {e} (use days, hours, minutes or seconds)"))?;
    if duration.is_negative() || duration.is_zero() {
        return Err(format!("'{text}' must be longer than zero"));
    }
    Ok(duration.unsigned_abs())
}

/// A duration setting: the first of `sources` (value, where it comes from:
/// a flag, a variable, a config key; highest precedence first) that is
/// set, else `default`. An unreadable value is refused, its origin named.
pub fn duration_setting(
    sources: impl IntoIterator<Item = (Option<String>, String)>,
    default: Duration,
) -> std::result::Result<Duration, String> {
    match sources
        .into_iter()
        .find_map(|(value, origin)| Some((value?, origin)))
    {
        Some((text, origin)) => parse_duration(&text).map_err(|e| format!("{origin}: {e}")),
        None => Ok(default),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_duration_setting_takes_the_first_source_set_and_names_a_bad_one() {
        let from = |flag: Option<&str>, file: Option<&str>| {
            duration_setting(
                [
                    (flag.map(String::from), "--wait".to_string()),
                    (file.map(String::from), "wait under [x]".to_string()),
                ],
                Duration::from_secs(30),
            )
        };
        assert_eq!(from(None, None), Ok(Duration::from_secs(30)));
        assert_eq!(from(None, Some("2m")), Ok(Duration::from_secs(120)));
        assert_eq!(from(Some("5s"), Some("2m")), Ok(Duration::from_secs(5)));
        let bad = from(None, Some("soon")).unwrap_err();
        assert!(bad.starts_with("wait under [x]: 'soon'"), "{bad}");
    }
}
