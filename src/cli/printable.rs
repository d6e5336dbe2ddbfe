//! Text from files (token names, metadata, keys in error messages, file names) reaches the
//! terminal only with its control characters escaped: an embedding whose token holds
//! `ESC ]0;...` or `ESC [2J` could otherwise retitle, clear or rewrite the user's terminal.
use std::borrow::Cow;

fn is_unsafe(c: char, keep_newlines: bool) -> bool {
    c.is_control() && !(keep_newlines && (c == '\n' || c == '\t')) || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

fn escape(s: &str, keep_newlines: bool) -> Cow<'_, str> {
    if !s.chars().any(|c| is_unsafe(c, keep_newlines)) {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 8);
    for c in s.chars() {
        if is_unsafe(c, keep_newlines) {
            out.extend(c.escape_unicode());
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

/// One line of text from a file: every control character (newlines too) and the Unicode
/// direction overrides escaped as `\u{..}`.
pub fn line(s: &str) -> Cow<'_, str> {
    escape(s, false)
}

/// A message of several lines (errors, logs): as [`line()`], keeping newlines and tabs.
pub fn lines(s: &str) -> Cow<'_, str> {
    escape(s, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_terminal_controls() {
        assert_eq!(line("plain <tok>"), "plain <tok>");
        assert_eq!(line("a\u{1b}]0;pwned\u{7}b"), "a\\u{1b}]0;pwned\\u{7}b");
        assert_eq!(line("x\ny\r"), "x\\u{a}y\\u{d}");
        assert_eq!(lines("x\ny\u{1b}[2J\u{9b}"), "x\ny\\u{1b}[2J\\u{9b}");
        assert_eq!(line("evil\u{202e}txt.pt"), "evil\\u{202e}txt.pt");
    }
}
