//! The input sanitiser: what may be forwarded to other clients.
//!
//! A line must be valid UTF-8 and contain no control character other than
//! tab: C0 (ESC above all), DEL and C1 are refused, so no client can send
//! terminal escape sequences to another. Used by the child on client input
//! and again by the master on what it reads from shared memory.

/// Why a line was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Reject {
    InvalidUtf8,
    ControlChar,
}

impl Reject {
    /// The error line sent to the client.
    pub fn message(self) -> &'static str {
        match self {
            Reject::InvalidUtf8 => "line refused: not valid UTF-8",
            Reject::ControlChar => "line refused: control characters are not allowed",
        }
    }
}

/// Validates a line and returns it as text.
pub fn check(line: &[u8]) -> Result<&str, Reject> {
    check_allowing(line, |_| false)
}

/// Validates a line in which the control characters `allowed` says yes to
/// may appear (besides tab).
pub fn check_allowing(line: &[u8], allowed: impl Fn(char) -> bool) -> Result<&str, Reject> {
    let text = std::str::from_utf8(line).map_err(|_| Reject::InvalidUtf8)?;
    if text
        .chars()
        .any(|c| c.is_control() && c != '\t' && !allowed(c))
    {
        return Err(Reject::ControlChar);
    }
    Ok(text)
}

/// IRC formatting codes: bold, colour, monospace, reverse, italic,
/// strikethrough, underline, reset. IRC users may send them; IRC clients
/// show them; the line protocol removes them (`protocol::line`).
pub fn is_formatting(c: char) -> bool {
    matches!(
        c,
        '\x02' | '\x03' | '\x0f' | '\x11' | '\x16' | '\x1d' | '\x1e' | '\x1f'
    )
}

/// Like [`check`], but IRC formatting codes pass: what the relay log may
/// carry (every reader renders or removes them).
pub fn check_formatted(line: &[u8]) -> Result<&str, Reject> {
    check_allowing(line, is_formatting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_text_and_tab() {
        assert_eq!(check("héllo\twörld ✓".as_bytes()), Ok("héllo\twörld ✓"));
    }

    #[test]
    fn refuses_escapes_and_controls() {
        assert_eq!(check(b"\x1b[2J"), Err(Reject::ControlChar));
        assert_eq!(check(b"a\x00b"), Err(Reject::ControlChar));
        assert_eq!(check(b"a\x7fb"), Err(Reject::ControlChar));
        assert_eq!(check("a\u{9b}b".as_bytes()), Err(Reject::ControlChar));
        assert_eq!(check(b"a\rb"), Err(Reject::ControlChar));
    }

    #[test]
    fn formatting_passes_only_where_asked() {
        assert_eq!(check(b"\x02b\x0f"), Err(Reject::ControlChar));
        assert_eq!(
            check_formatted(b"\x02b\x034,5c\x0f"),
            Ok("\x02b\x034,5c\x0f")
        );
        assert_eq!(check_formatted(b"\x1b[2J"), Err(Reject::ControlChar));
        assert_eq!(
            check_formatted(b"\x01ACTION x\x01"),
            Err(Reject::ControlChar)
        );
    }

    #[test]
    fn refuses_invalid_utf8() {
        assert_eq!(check(b"\xff\xfe"), Err(Reject::InvalidUtf8));
        assert_eq!(check(b"\xc3"), Err(Reject::InvalidUtf8));
    }
}
