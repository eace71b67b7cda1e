//! TLS with the private key in the master only (OpenSSH's monitor model).
//!
//! A TLS client's child does the handshake and the record layer itself
//! (rustls, in the confined child), but it never holds the certificate's
//! private key: its rustls signing key is a stand-in ([`remote`]) that asks
//! the master to sign the one handshake signature over the child's control
//! socket, and the master ([`keys`]) signs at most once per child, and only
//! a message shaped like a TLS 1.3 CertificateVerify or a TLS 1.2
//! ServerKeyExchange input. The key's path through the processes
//! (ARCHITECTURE.md, "TLS", numbers it):
//!
//! 1. The master opens the directories of the certificate and key files
//!    before it confines itself (it may chroot), and keeps them open.
//! 2. Once its heap is the arena children do not inherit (`crate::arena`,
//!    `MADV_DONTFORK`), it reads both files through those directories,
//!    parses them (rustls-pki-types, ring), checks that key and certificate
//!    match and the certificate's dates, zeroes the file buffers, and
//!    scrubs the stack the parsing used.
//! 3. Before each TLS child's fork it queues the public half on the child's
//!    control socket: the certificate chain and the signature schemes the
//!    key can make ([`Offer`]). The child builds its rustls config from
//!    that, after the fork, in its own memory.
//! 4. During the handshake the child sends `SIGN` (scheme, message) and
//!    waits for `SIGNED` (the signature). A second request, or one that is
//!    not a handshake signature, kills the child.
//! 5. SIGHUP repeats step 2; a bad pair keeps the old one. New children get
//!    the new certificate; connected clients keep their sessions.
//!
//! This module holds what both sides share: the [`Offer`] encoding and the
//! check of what a child asks to have signed ([`is_handshake_message`]).

pub mod keys;
pub mod remote;

use rustls::SignatureScheme;

/// Every scheme chatd can offer, in its order of preference.
pub const SCHEMES: &[SignatureScheme] = &[
    SignatureScheme::ED25519,
    SignatureScheme::ECDSA_NISTP256_SHA256,
    SignatureScheme::ECDSA_NISTP384_SHA384,
    SignatureScheme::ECDSA_NISTP521_SHA512,
    SignatureScheme::RSA_PSS_SHA256,
    SignatureScheme::RSA_PSS_SHA384,
    SignatureScheme::RSA_PSS_SHA512,
    SignatureScheme::RSA_PKCS1_SHA256,
    SignatureScheme::RSA_PKCS1_SHA384,
    SignatureScheme::RSA_PKCS1_SHA512,
];

/// The public half of the server's identity, as a child receives it: the
/// certificate chain (leaf first, DER) and the schemes its key can sign.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Offer {
    pub schemes: Vec<SignatureScheme>,
    pub chain: Vec<Vec<u8>>,
}

/// Most certificates in a chain chatd sends.
const MAX_CHAIN: usize = 16;

impl Offer {
    /// `[n][scheme u16 BE]*n [m]([len u32 BE][der])*m`
    pub fn encode(&self) -> Vec<u8> {
        let mut out = vec![self.schemes.len() as u8];
        for s in &self.schemes {
            out.extend_from_slice(&u16::from(*s).to_be_bytes());
        }
        out.push(self.chain.len() as u8);
        for c in &self.chain {
            out.extend_from_slice(&(c.len() as u32).to_be_bytes());
            out.extend_from_slice(c);
        }
        out
    }

    /// The inverse of [`Offer::encode`]; `None` for anything malformed.
    pub fn decode(b: &[u8]) -> Option<Offer> {
        let (&n, mut rest) = b.split_first()?;
        let mut schemes = Vec::with_capacity(n as usize);
        for _ in 0..n {
            let (s, r) = rest.split_first_chunk::<2>()?;
            schemes.push(SignatureScheme::from(u16::from_be_bytes(*s)));
            rest = r;
        }
        let (&m, mut rest) = rest.split_first()?;
        if schemes.is_empty() || m == 0 || m as usize > MAX_CHAIN {
            return None;
        }
        let mut chain = Vec::with_capacity(m as usize);
        for _ in 0..m {
            let (len, r) = rest.split_first_chunk::<4>()?;
            let len = u32::from_be_bytes(*len) as usize;
            if r.len() < len || len == 0 {
                return None;
            }
            chain.push(r[..len].to_vec());
            rest = &r[len..];
        }
        rest.is_empty().then_some(Offer { schemes, chain })
    }
}

/// A signing request's body: `[scheme u16 BE][message]`.
pub fn sign_request(scheme: SignatureScheme, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(2 + message.len());
    out.extend_from_slice(&u16::from(scheme).to_be_bytes());
    out.extend_from_slice(message);
    out
}

/// Splits a signing request; `None` if it is too short.
pub fn parse_sign_request(b: &[u8]) -> Option<(SignatureScheme, &[u8])> {
    let (s, msg) = b.split_first_chunk::<2>()?;
    Some((SignatureScheme::from(u16::from_be_bytes(*s)), msg))
}

/// TLS 1.3's CertificateVerify input (RFC 8446, 4.4.3): 64 spaces, this
/// context string, a zero byte, then the transcript hash.
const TLS13_CONTEXT: &[u8] = b"TLS 1.3, server CertificateVerify\0";

/// Whether `msg` has the shape of what a TLS server signs in a handshake:
/// TLS 1.3's CertificateVerify input (with a SHA-256, -384 or -512
/// transcript hash), or TLS 1.2's ServerKeyExchange input (client random,
/// server random, then ECDHE parameters: named curve, one public point).
/// A compromised child cannot make the master sign anything else.
pub fn is_handshake_message(msg: &[u8]) -> bool {
    if let Some(rest) = msg.strip_prefix(&[b' '; 64][..]) {
        if let Some(hash) = rest.strip_prefix(TLS13_CONTEXT) {
            return matches!(hash.len(), 32 | 48 | 64);
        }
    }
    // TLS 1.2: 32 + 32 random bytes, curve_type named_curve (3), a named
    // group (2 bytes), the point's length (1 byte) and the point.
    let Some(params) = msg.get(64..) else {
        return false;
    };
    match params {
        [3, _, _, len, point @ ..] => *len as usize == point.len() && !point.is_empty(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_round_trip_and_reject_garbage() {
        let o = Offer {
            schemes: vec![SignatureScheme::ECDSA_NISTP256_SHA256],
            chain: vec![vec![1, 2, 3], vec![4]],
        };
        assert_eq!(Offer::decode(&o.encode()), Some(o.clone()));
        let e = o.encode();
        for cut in 0..e.len() {
            assert_eq!(Offer::decode(&e[..cut]), None, "cut at {cut}");
        }
        let mut long = e.clone();
        long.push(0);
        assert_eq!(Offer::decode(&long), None);
    }

    #[test]
    fn only_handshake_shaped_messages_are_signed() {
        let mut t13 = vec![b' '; 64];
        t13.extend_from_slice(TLS13_CONTEXT);
        t13.extend_from_slice(&[7; 32]);
        assert!(is_handshake_message(&t13));
        t13.push(0);
        assert!(!is_handshake_message(&t13));
        let mut t12 = vec![9u8; 64];
        t12.extend_from_slice(&[3, 0, 29, 32]);
        t12.extend_from_slice(&[5; 32]);
        assert!(is_handshake_message(&t12));
        t12.pop();
        assert!(!is_handshake_message(&t12));
        assert!(!is_handshake_message(b"sign this for me, please"));
        assert!(!is_handshake_message(&[]));
    }

    #[test]
    fn sign_requests_round_trip() {
        let r = sign_request(SignatureScheme::ED25519, b"m");
        assert_eq!(
            parse_sign_request(&r),
            Some((SignatureScheme::ED25519, &b"m"[..]))
        );
        assert_eq!(parse_sign_request(&[1]), None);
    }
}
