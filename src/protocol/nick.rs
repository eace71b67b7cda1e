//! Nickname rules.
//!
//! A nick is 1 to [`MAX_NICK`](crate::config::MAX_NICK) ASCII letters,
//! digits, `-` or `_`, starting with a letter. Names starting with `guest-`
//! are reserved for the default nicks the server hands out. Uniqueness is
//! case-insensitive and is enforced by the master, which owns the nick table.

use crate::config::MAX_NICK;

/// Checks a requested nick; the error is the reason shown to the user.
pub fn validate(nick: &str) -> Result<(), &'static str> {
    if nick.is_empty() || nick.len() > MAX_NICK {
        return Err("nick must be 1 to 24 characters");
    }
    if !nick.as_bytes()[0].is_ascii_alphabetic() {
        return Err("nick must start with a letter");
    }
    if !nick
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err("nick may contain only letters, digits, '-' and '_'");
    }
    if nick.len() >= 6 && nick[..6].eq_ignore_ascii_case("guest-") {
        return Err("nicks starting with guest- are reserved");
    }
    Ok(())
}

/// Whether `name` is a nick the server hands out (`guest-` and digits).
pub fn is_guest(name: &str) -> bool {
    name.len() > 6
        && name.len() <= MAX_NICK
        && name[..6].eq_ignore_ascii_case("guest-")
        && name[6..].bytes().all(|b| b.is_ascii_digit())
}

/// Whether `name` can be someone's nick: one a client may choose, or a
/// guest nick (a private message may go to either).
pub fn addressable(name: &str) -> bool {
    validate(name).is_ok() || is_guest(name)
}

/// The key under which a nick is unique.
pub fn fold(nick: &str) -> String {
    nick.to_ascii_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rules() {
        assert!(validate("alice").is_ok());
        assert!(validate("Bob_2-x").is_ok());
        assert!(validate("").is_err());
        assert!(validate("2bob").is_err());
        assert!(validate("bob smith").is_err());
        assert!(validate("bøb").is_err());
        assert!(validate(&"a".repeat(25)).is_err());
        assert!(validate("Guest-7").is_err());
        assert!(addressable("Guest-7") && addressable("alice"));
        assert!(!addressable("guest-") && !addressable("guest-7x") && !addressable("a b"));
    }
}
