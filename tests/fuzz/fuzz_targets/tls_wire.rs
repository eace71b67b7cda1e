//! What crosses a TLS child's control socket: the master's `OFFER` (read
//! by the child) and the child's `SIGN` request (read by the master, which
//! must treat it as hostile: a compromised child writes it).
//!
//! Checked: no panic; whatever decodes re-encodes to the same bytes (the
//! decoders accept one encoding only); the handshake-shape check answers
//! for every message.
#![no_main]

use chatd::tls::{is_handshake_message, parse_sign_request, sign_request, Offer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Some(o) = Offer::decode(data) {
        assert_eq!(o.encode(), data);
        assert!(!o.schemes.is_empty() && !o.chain.is_empty());
    }
    if let Some((scheme, msg)) = parse_sign_request(data) {
        assert_eq!(sign_request(scheme, msg), data);
        let _ = is_handshake_message(msg);
    }
});
