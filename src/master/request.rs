//! Validation of ring entries: the master's only door for child input.
//!
//! A child writes entries into its own slot's ring (`shm::ring`); the master
//! treats every one as untrusted, since a compromised child can write any
//! bytes there. [`validate`] turns an entry into a [`Request`] or refuses it
//! (the relay then kills the child): text must be sanitised (IRC formatting
//! codes allowed: every reader renders or removes them) and within the line
//! limit, nicks valid. Pure, so `tests/fuzz` drives it directly.

use crate::config::{MAX_LINE_LIMIT, MAX_NICK};
use crate::protocol::event::List;
use crate::protocol::{nick, sanitize, Ask};
use crate::shm::ring::{Corrupt, Kind};

/// What one ring entry asked for, once validated: what the child's
/// session asked ([`Ask`]), or the child's last word.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    Ask(Ask),
    /// The client is gone; the reason.
    Quit(String),
    /// Nothing for the master: what a child handing its client over left
    /// for the next child (`Carry`, `Handover`).
    Skip,
}

/// The payload of a [`Kind::Private`] entry.
pub fn private_payload(flags: u8, target: &str, text: &str) -> Vec<u8> {
    let target = &target.as_bytes()[..target.len().min(255)];
    let mut p = Vec::with_capacity(2 + target.len() + text.len());
    p.extend_from_slice(&[flags, target.len() as u8]);
    p.extend_from_slice(target);
    p.extend_from_slice(text.as_bytes());
    p
}

/// Validates a ring entry as untrusted input.
pub fn validate(kind: Kind, payload: &[u8]) -> Result<Request, Corrupt> {
    let text = |p: &[u8]| -> Result<String, Corrupt> {
        if p.len() > MAX_LINE_LIMIT {
            return Err(Corrupt("line too long"));
        }
        sanitize::check_formatted(p)
            .map(str::to_string)
            .map_err(|_| Corrupt("unsanitised text"))
    };
    Ok(Request::Ask(match kind {
        Kind::Chat => Ask::Chat(text(payload)?),
        Kind::Me => Ask::Action(text(payload)?),
        Kind::Nick => {
            let n = text(payload)?;
            nick::validate(&n).map_err(|_| Corrupt("invalid nick"))?;
            Ask::Nick(n)
        }
        Kind::Who => match payload {
            [] => Ask::List(List::Who),
            [b] => Ask::List(List::from_u8(*b).ok_or(Corrupt("unknown list"))?),
            _ => return Err(Corrupt("bad list request")),
        },
        Kind::Quit => return Ok(Request::Quit(text(payload)?)),
        Kind::Carry | Kind::Handover => return Ok(Request::Skip),
        Kind::Join if payload.is_empty() => Ask::Join,
        Kind::Join => return Err(Corrupt("join with a payload")),
        Kind::Part => Ask::Part(text(payload)?),
        Kind::Private => {
            let (&[flags, n], rest) = payload
                .split_first_chunk::<2>()
                .ok_or(Corrupt("short private message"))?;
            let n = n as usize;
            if n == 0 || n > MAX_NICK || rest.len() < n {
                return Err(Corrupt("bad private message target"));
            }
            let target = text(&rest[..n])?;
            if target.contains(char::is_whitespace) {
                return Err(Corrupt("bad private message target"));
            }
            Ask::Private {
                flags: flags & 3,
                target,
                text: text(&rest[n..])?,
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_messages_round_trip() {
        let p = private_payload(1, "bob", "\x02hi");
        assert_eq!(
            validate(Kind::Private, &p),
            Ok(Request::Ask(Ask::Private {
                flags: 1,
                target: "bob".into(),
                text: "\x02hi".into()
            }))
        );
        assert!(validate(Kind::Private, &private_payload(0, "", "x")).is_err());
        assert!(validate(Kind::Private, &private_payload(0, "a b", "x")).is_err());
        assert!(validate(Kind::Private, &[0, 9, b'a']).is_err());
        assert!(validate(Kind::Private, &private_payload(0, "bob", "\x1b[2J")).is_err());
    }

    #[test]
    fn lists_and_joins() {
        let ask = |a| Ok(Request::Ask(a));
        assert_eq!(validate(Kind::Who, &[]), ask(Ask::List(List::Who)));
        assert_eq!(validate(Kind::Who, &[1]), ask(Ask::List(List::Names)));
        assert!(validate(Kind::Who, &[99]).is_err());
        assert_eq!(validate(Kind::Join, &[]), ask(Ask::Join));
        assert!(validate(Kind::Join, b"x").is_err());
    }
}
