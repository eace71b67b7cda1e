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
use crate::protocol::{nick, sanitize};
use crate::shm::ring::{Corrupt, Kind};

/// What one ring entry asked for, once validated.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A chat line, or with `action` a `/me` line.
    Line {
        action: bool,
        text: String,
    },
    Nick(String),
    List(List),
    Quit(String),
    Join,
    Part(String),
    Private {
        flags: u8,
        target: String,
        text: String,
    },
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
    Ok(match kind {
        Kind::Chat => Request::Line {
            action: false,
            text: text(payload)?,
        },
        Kind::Me => Request::Line {
            action: true,
            text: text(payload)?,
        },
        Kind::Nick => {
            let n = text(payload)?;
            nick::validate(&n).map_err(|_| Corrupt("invalid nick"))?;
            Request::Nick(n)
        }
        Kind::Who => match payload {
            [] => Request::List(List::Who),
            [b] => Request::List(List::from_u8(*b).ok_or(Corrupt("unknown list"))?),
            _ => return Err(Corrupt("bad list request")),
        },
        Kind::Quit => Request::Quit(text(payload)?),
        Kind::Join if payload.is_empty() => Request::Join,
        Kind::Join => return Err(Corrupt("join with a payload")),
        Kind::Part => Request::Part(text(payload)?),
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
            Request::Private {
                flags: flags & 3,
                target,
                text: text(&rest[n..])?,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn private_messages_round_trip() {
        let p = private_payload(1, "bob", "\x02hi");
        assert_eq!(
            validate(Kind::Private, &p),
            Ok(Request::Private {
                flags: 1,
                target: "bob".into(),
                text: "\x02hi".into()
            })
        );
        assert!(validate(Kind::Private, &private_payload(0, "", "x")).is_err());
        assert!(validate(Kind::Private, &private_payload(0, "a b", "x")).is_err());
        assert!(validate(Kind::Private, &[0, 9, b'a']).is_err());
        assert!(validate(Kind::Private, &private_payload(0, "bob", "\x1b[2J")).is_err());
    }

    #[test]
    fn lists_and_joins() {
        assert_eq!(validate(Kind::Who, &[]), Ok(Request::List(List::Who)));
        assert_eq!(validate(Kind::Who, &[1]), Ok(Request::List(List::Names)));
        assert!(validate(Kind::Who, &[99]).is_err());
        assert_eq!(validate(Kind::Join, &[]), Ok(Request::Join));
        assert!(validate(Kind::Join, b"x").is_err());
    }
}
