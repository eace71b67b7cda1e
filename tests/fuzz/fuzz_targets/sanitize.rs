//! The input sanitiser (`protocol::sanitize::check`) against an independent
//! model: a line passes iff it is UTF-8 with no C0 control but tab, no DEL
//! and no C1 control. Whatever passes can carry no terminal escape: no ESC
//! byte and no UTF-8 encoded CSI (U+009B) or other C1 code.
#![no_main]

use chatd::protocol::sanitize::{check, Reject};
use libfuzzer_sys::fuzz_target;

fn allowed(c: char) -> bool {
    !matches!(c, '\0'..='\x08' | '\x0a'..='\x1f' | '\x7f'..='\u{9f}')
}

fuzz_target!(|data: &[u8]| {
    let expected = match std::str::from_utf8(data) {
        Err(_) => Err(Reject::InvalidUtf8),
        Ok(s) if s.chars().all(allowed) => Ok(s),
        Ok(_) => Err(Reject::ControlChar),
    };
    let got = check(data);
    assert_eq!(got, expected);
    if let Ok(text) = got {
        assert_eq!(text.as_bytes(), data);
        assert!(!data.iter().any(|&b| b < 0x20 && b != b'\t' || b == 0x7f));
        assert!(!data
            .windows(2)
            .any(|w| w[0] == 0xc2 && (0x80..=0x9f).contains(&w[1])));
    }
});
