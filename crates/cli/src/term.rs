//! What a person's terminal is shown of text imgtx did not write itself (names and paths
//! come from users and from disk): control characters escaped so that no name can forge a
//! line or an escape sequence; and whether stderr may be coloured at all.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::io::{self, IsTerminal};

/// `text` for a human line: control characters as C escapes (`\n`, `\t`, `\x1b`, `\u{85}`)
/// and a backslash doubled, so that what is shown names one text only, as `ls -b` and
/// systemd show names.
pub fn escape(text: &str) -> Cow<'_, str> {
    if !text.chars().any(|c| c == '\\' || c.is_control()) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            '\x07' => out.push_str("\\a"),
            '\x08' => out.push_str("\\b"),
            '\x0b' => out.push_str("\\v"),
            '\x0c' => out.push_str("\\f"),
            c if u32::from(c) < 0x80 && c.is_control() => {
                let _ = write!(out, "\\x{:02x}", u32::from(c));
            }
            c if c.is_control() => {
                let _ = write!(out, "\\u{{{:x}}}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

/// Whether to colour what goes to stderr: only on a terminal, and not when `NO_COLOR` is set
/// to anything but the empty string (<https://no-color.org>).
pub fn colour() -> bool {
    io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_shows_control_characters_as_c_escapes_and_leaves_the_rest() {
        assert!(matches!(escape("/vm/disk.img"), Cow::Borrowed(_)));
        assert_eq!(escape("a\nb\tc\x1b[31m\\"), "a\\nb\\tc\\x1b[31m\\\\");
        assert_eq!(escape("\u{85}\x7f é"), "\\u{85}\\x7f é");
    }
}
