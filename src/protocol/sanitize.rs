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
    let text = std::str::from_utf8(line).map_err(|_| Reject::InvalidUtf8)?;
    if text.chars().any(|c| c.is_control() && c != '\t') {
        return Err(Reject::ControlChar);
    }
    Ok(text)
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
    fn refuses_invalid_utf8() {
        assert_eq!(check(b"\xff\xfe"), Err(Reject::InvalidUtf8));
        assert_eq!(check(b"\xc3"), Err(Reject::InvalidUtf8));
    }
}
