//! Times for people. imgtx records times as RFC 3339 UTC (`2026-12-05T04:45:20Z`), and JSON
//! output keeps them so; human output shows them in the local time zone, named
//! (`2026-12-05 05:45:20 CET`), or in UTC with `--utc`. That includes the times inside the
//! engine's messages (whom a base is held by, since when), which the engine writes as
//! recorded because it never knows how its words will be shown.

use std::borrow::Cow;
use std::sync::atomic::{AtomicBool, Ordering};

/// `--utc`: set once by `main`, before anything is shown.
static UTC: AtomicBool = AtomicBool::new(false);

/// Shows times in UTC (`--utc`) instead of the local time zone from now on.
pub fn use_utc(utc: bool) {
    UTC.store(utc, Ordering::Relaxed);
}

/// A recorded time for people; as recorded when it does not parse.
pub fn local(rfc3339: &str) -> String {
    let Ok(t) = rfc3339.parse::<jiff::Timestamp>() else {
        return rfc3339.to_owned();
    };
    let zone = if UTC.load(Ordering::Relaxed) {
        jiff::tz::TimeZone::UTC
    } else {
        jiff::tz::TimeZone::system()
    };
    t.to_zoned(zone)
        .strftime("%Y-%m-%d %H:%M:%S %Z")
        .to_string()
}

/// `text` with every recorded time in it (`YYYY-MM-DDTHH:MM:SS[.fraction]Z`) shown as
/// [`local`] shows it.
pub fn in_text(text: &str) -> Cow<'_, str> {
    let mut out = String::new();
    let mut copied = 0;
    let mut at = 0;
    while let Some(len) = next_stamp(text, &mut at) {
        out.push_str(&text[copied..at]);
        out.push_str(&local(&text[at..at + len]));
        at += len;
        copied = at;
    }
    if copied == 0 {
        return Cow::Borrowed(text);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out)
}

/// Moves `at` to the next recorded time in `text` at or after it, and returns its length.
fn next_stamp(text: &str, at: &mut usize) -> Option<usize> {
    const SHAPE: &[u8] = b"dddd-dd-ddTdd:dd:dd";
    let bytes = text.as_bytes();
    while *at + SHAPE.len() < bytes.len() {
        let fits = SHAPE.iter().zip(&bytes[*at..]).all(|(s, b)| match s {
            b'd' => b.is_ascii_digit(),
            s => s == b,
        });
        if fits {
            let mut end = *at + SHAPE.len();
            if bytes[end] == b'.' {
                end += 1;
                while end < bytes.len() && bytes[end].is_ascii_digit() {
                    end += 1;
                }
            }
            if bytes.get(end) == Some(&b'Z') {
                return Some(end + 1 - *at);
            }
        }
        *at += 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recorded_times_in_a_text_are_shown_for_people() {
        use_utc(true);
        assert_eq!(
            in_text("held by tx-1 (root@vm, for 3 min, since 2026-12-05T09:20:19Z)"),
            "held by tx-1 (root@vm, for 3 min, since 2026-12-05 09:20:19 UTC)"
        );
        assert_eq!(
            in_text("2026-12-05T09:20:19.123Z and 2026-01-01T00:00:00Z."),
            "2026-12-05 09:20:19 UTC and 2026-01-01 00:00:00 UTC."
        );
        // Not a recorded time: left alone.
        assert_eq!(
            in_text("2026-12-05T09:20:19+01:00"),
            "2026-12-05T09:20:19+01:00"
        );
        assert_eq!(in_text("tx-3f9a 2026"), "tx-3f9a 2026");
        assert!(matches!(in_text("no time here"), Cow::Borrowed(_)));
    }
}
