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
///
/// A byte scan, not a walk over chars: this runs on every relayed line in
/// every child. The control characters (`char::is_control`: U+0000-U+001F
/// and U+007F-U+009F) are, in valid UTF-8, the bytes below 0x20, 0x7F, and
/// 0xC2 followed by 0x80-0x9F.
pub fn check_allowing(line: &[u8], allowed: impl Fn(char) -> bool) -> Result<&str, Reject> {
    let text = std::str::from_utf8(line).map_err(|_| Reject::InvalidUtf8)?;
    if !may_hold_control(line) {
        return Ok(text);
    }
    let mut i = 0;
    while i < line.len() {
        let b = line[i];
        let control = match b {
            0x00..=0x1f | 0x7f => Some(b as char),
            0xc2 => match line.get(i + 1) {
                Some(&n @ 0x80..=0x9f) => Some(char::from_u32(n as u32).unwrap_or('\u{80}')),
                _ => None,
            },
            _ => None,
        };
        if let Some(c) = control {
            if c != '\t' && !allowed(c) {
                return Err(Reject::ControlChar);
            }
        }
        i += 1;
    }
    Ok(text)
}

/// Whether `b` holds a byte that a control character may be made of (below
/// 0x20, 0x7F, or 0xC2, the lead byte of U+0080-U+00BF): most text has none,
/// and one pass the compiler vectorises says so.
pub fn may_hold_control(b: &[u8]) -> bool {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    // Eight bytes at a time: a byte below 0x20 (x - 0x20 borrows into its
    // high bit, which it did not have), or equal to 0x7F or 0xC2 (a zero
    // byte after the xor).
    let zero = |x: u64| x.wrapping_sub(ONES) & !x & HIGH;
    let word = |x: u64| {
        (x.wrapping_sub(ONES * 0x20) & !x & HIGH)
            | zero(x ^ (ONES * 0x7f))
            | zero(x ^ (ONES * 0xc2))
    };
    let mut chunks = b.chunks_exact(8);
    let mut hit = 0;
    for c in &mut chunks {
        hit |= word(u64::from_le_bytes(c.try_into().unwrap()));
    }
    hit != 0
        || chunks
            .remainder()
            .iter()
            .any(|&c| c < 0x20 || c == 0x7f || c == 0xc2)
}

/// Whether `b` holds a byte below 0x20 (a C0 control, tab and the IRC
/// formatting codes among them): one pass the compiler vectorises.
pub fn has_c0(b: &[u8]) -> bool {
    b.iter().fold(false, |acc, &c| acc | (c < 0x20))
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
    fn the_byte_scan_agrees_with_char_is_control() {
        for c in (0..0x300u32).filter_map(char::from_u32) {
            let s = format!("a{c}b");
            let want = c.is_control() && c != '\t';
            assert_eq!(check(s.as_bytes()).is_err(), want, "U+{:04X}", c as u32);
        }
    }

    #[test]
    fn the_word_scan_finds_every_suspect_byte_anywhere() {
        for len in 0..24 {
            for at in 0..len {
                for bad in 0u8..=255 {
                    let mut v = vec![b'a'; len];
                    v[at] = bad;
                    let want = bad < 0x20 || bad == 0x7f || bad == 0xc2;
                    assert_eq!(
                        may_hold_control(&v),
                        want,
                        "len {len} at {at} byte {bad:#x}"
                    );
                }
            }
        }
    }

    #[test]
    fn refuses_invalid_utf8() {
        assert_eq!(check(b"\xff\xfe"), Err(Reject::InvalidUtf8));
        assert_eq!(check(b"\xc3"), Err(Reject::InvalidUtf8));
    }
}
