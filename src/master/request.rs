//! Validation of ring entries: the master's only door for child input.
//!
//! A child writes entries into its own slot's ring (`shm::ring`); the master
//! treats every one as untrusted, since a compromised child can write any
//! bytes there. [`validate`] turns an entry into a [`Request`] or refuses it
//! (the relay then kills the child): text must be sanitised and within the
//! line limit, nicks valid. Pure, so `tests/fuzz` drives it directly.

use crate::config::MAX_LINE_LIMIT;
use crate::protocol::{nick, sanitize};
use crate::shm::ring::{Corrupt, Kind};

/// What one ring entry asked for, once validated.
#[derive(Debug, PartialEq, Eq)]
pub enum Request {
    /// A chat line, or with `action` a `/me` line.
    Line {
        action: bool,
        text: Vec<u8>,
    },
    Nick(String),
    Who,
    Quit(String),
}

/// Validates a ring entry as untrusted input.
pub fn validate(kind: Kind, payload: &[u8]) -> Result<Request, Corrupt> {
    let text = || -> Result<&str, Corrupt> {
        if payload.len() > MAX_LINE_LIMIT {
            return Err(Corrupt("line too long"));
        }
        sanitize::check(payload).map_err(|_| Corrupt("unsanitised text"))
    };
    Ok(match kind {
        Kind::Chat => Request::Line {
            action: false,
            text: text()?.as_bytes().to_vec(),
        },
        Kind::Me => Request::Line {
            action: true,
            text: text()?.as_bytes().to_vec(),
        },
        Kind::Nick => {
            let n = text()?;
            nick::validate(n).map_err(|_| Corrupt("invalid nick"))?;
            Request::Nick(n.to_string())
        }
        Kind::Who => Request::Who,
        Kind::Quit => Request::Quit(text()?.to_string()),
    })
}
