//! The control protocol between `chatctl` and the master: one request line,
//! one reply, then the connection closes.
//!
//! A request is words separated by spaces: a command, its arguments, and
//! for `kick`, `say` and `topic` a free text that runs to the end of the
//! line. A leading `--json` asks for the reply as one JSON object instead
//! of text for people. So `echo who | socat - UNIX-CONNECT:/run/chatd/control`
//! works as well as `chatctl who`. [`parse`] is pure and fuzzed (the master
//! runs it on whatever an admin's process sends); the master's side is
//! `crate::master::control`.

use std::time::Duration;

/// Longest request line, in bytes; a longer one is refused.
pub const MAX_REQUEST: usize = 4096;

/// What an admin asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Uptime, clients, counters.
    Status,
    /// Every connected client.
    Who,
    /// Disconnect a client, telling it and the room why.
    Kick {
        nick: String,
        reason: String,
    },
    /// Drop a client's lines to the room (and tell it), for a while or
    /// until unmuted.
    Mute {
        nick: String,
        time: Option<Duration>,
    },
    Unmute {
        nick: String,
    },
    /// A server notice to everyone.
    Say {
        text: String,
    },
    /// Set the room's topic.
    Topic {
        text: String,
    },
    /// Refuse an address, a CIDR range or nicks matching a mask, for a
    /// while or for good; kicks who matches now.
    Ban {
        target: String,
        time: Option<Duration>,
        reason: String,
    },
    Unban {
        target: String,
    },
    /// The bans in force.
    Bans,
    /// Re-read the configuration (as SIGHUP).
    Reload,
    /// Counters in the Prometheus text format.
    Metrics,
}

/// A parsed request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub json: bool,
    pub command: Command,
}

/// Every command with its arguments, for `help` and errors.
pub const USAGE: &str = "status | who | kick NICK [REASON] | ban ADDR|CIDR|NICKMASK [--for DURATION] [REASON] | unban TARGET | bans | mute NICK [--for DURATION] | unmute NICK | say TEXT | topic TEXT | reload | metrics";

/// A duration such as `90`, `90s`, `10m`, `2h` or `7d`.
pub fn parse_duration(s: &str) -> Option<Duration> {
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(split);
    let n: u64 = n.parse().ok()?;
    let mult = match unit {
        "" | "s" => 1,
        "m" => 60,
        "h" => 3600,
        "d" => 86400,
        _ => return None,
    };
    let secs = n.checked_mul(mult)?;
    (secs > 0 && secs <= 366 * 86400).then(|| Duration::from_secs(secs))
}

/// Parses one request line (without its newline). The error says what is
/// wrong, for the reply.
pub fn parse(line: &str) -> Result<Request, String> {
    if line.len() > MAX_REQUEST {
        return Err(format!("request longer than {MAX_REQUEST} bytes"));
    }
    if line.chars().any(|c| c.is_control() && c != '\t') {
        return Err("control characters in the request".into());
    }
    let mut rest = line.trim();
    let json = match rest.strip_prefix("--json") {
        Some(r) if r.is_empty() || r.starts_with([' ', '\t']) => {
            rest = r.trim_start();
            true
        }
        _ => false,
    };
    let (word, args) = split_word(rest);
    let nick = |args: &str| -> Result<(String, String), String> {
        let (n, more) = split_word(args);
        if n.is_empty() {
            return Err(format!(
                "{word}: which {}?",
                if word.ends_with("ban") {
                    "target"
                } else {
                    "nick"
                }
            ));
        }
        Ok((n.to_string(), more.to_string()))
    };
    let no_args = |c: Command| match args.is_empty() {
        true => Ok(c),
        false => Err(format!("{word} takes no arguments")),
    };
    let text = |what: &str| match args.is_empty() {
        true => Err(format!("{word}: {what}?")),
        false => Ok(args.to_string()),
    };
    let command = match word {
        "status" => no_args(Command::Status)?,
        "who" => no_args(Command::Who)?,
        "reload" => no_args(Command::Reload)?,
        "bans" => no_args(Command::Bans)?,
        "ban" => {
            let (target, more) = nick(args)?;
            let (time, reason) = match split_word(&more) {
                ("--for", rest) => {
                    let (d, reason) = split_word(rest);
                    let t = parse_duration(d)
                        .ok_or_else(|| format!("ban: bad duration {d:?} (90s, 10m, 2h, 7d)"))?;
                    (Some(t), reason.to_string())
                }
                _ => (None, more),
            };
            Command::Ban {
                target,
                time,
                reason,
            }
        }
        "unban" => match nick(args)? {
            (target, more) if more.is_empty() => Command::Unban { target },
            _ => return Err("unban takes one target".into()),
        },
        "metrics" => no_args(Command::Metrics)?,
        "kick" => {
            let (nick, reason) = nick(args)?;
            Command::Kick { nick, reason }
        }
        "mute" => {
            let (nick, more) = nick(args)?;
            let time = match split_word(&more) {
                ("", _) => None,
                ("--for", d) => Some(parse_duration(d.trim()).ok_or_else(|| {
                    format!("mute: bad duration {:?} (90s, 10m, 2h, 7d)", d.trim())
                })?),
                (other, _) => return Err(format!("mute: unexpected {other:?}")),
            };
            Command::Mute { nick, time }
        }
        "unmute" => match nick(args)? {
            (nick, more) if more.is_empty() => Command::Unmute { nick },
            _ => return Err("unmute takes one nick".into()),
        },
        "say" => Command::Say {
            text: text("what")?,
        },
        "topic" => Command::Topic {
            text: text("which topic")?,
        },
        "" => return Err(format!("empty request; commands: {USAGE}")),
        other => return Err(format!("unknown command {other:?}; commands: {USAGE}")),
    };
    Ok(Request { json, command })
}

/// The first word and the rest, trimmed.
fn split_word(s: &str) -> (&str, &str) {
    let s = s.trim_start();
    match s.find([' ', '\t']) {
        Some(i) => (&s[..i], s[i..].trim()),
        None => (s, ""),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cmd(line: &str) -> Command {
        parse(line).unwrap().command
    }

    #[test]
    fn requests() {
        assert_eq!(cmd("status"), Command::Status);
        assert_eq!(cmd("  who  "), Command::Who);
        assert!(parse("--json who").unwrap().json);
        assert!(!parse("who").unwrap().json);
        assert_eq!(
            cmd("kick alice spamming the room"),
            Command::Kick {
                nick: "alice".into(),
                reason: "spamming the room".into()
            }
        );
        assert_eq!(
            cmd("kick alice"),
            Command::Kick {
                nick: "alice".into(),
                reason: String::new()
            }
        );
        assert_eq!(
            cmd("mute bob --for 10m"),
            Command::Mute {
                nick: "bob".into(),
                time: Some(Duration::from_secs(600))
            }
        );
        assert_eq!(
            cmd("mute bob"),
            Command::Mute {
                nick: "bob".into(),
                time: None
            }
        );
        assert_eq!(
            cmd("say maintenance at 18:00, back by 18:05"),
            Command::Say {
                text: "maintenance at 18:00, back by 18:05".into()
            }
        );
    }

    #[test]
    fn bad_requests_say_why() {
        for (line, why) in [
            ("", "empty request"),
            ("frobnicate", "unknown command"),
            ("--jsonwho", "unknown command"),
            ("who alice", "takes no arguments"),
            ("kick", "which nick"),
            ("say", "what?"),
            ("mute bob --for soon", "bad duration"),
            ("mute bob later", "unexpected"),
            ("unmute a b", "one nick"),
            ("say \x1b[2Jhi", "control characters"),
        ] {
            let e = parse(line).unwrap_err();
            assert!(e.contains(why), "{line:?}: {e}");
        }
        assert!(parse(&"say x".repeat(2000)).unwrap_err().contains("longer"));
    }

    #[test]
    fn bans() {
        assert_eq!(
            cmd("ban 10.0.0.0/8 --for 2h spam wave"),
            Command::Ban {
                target: "10.0.0.0/8".into(),
                time: Some(Duration::from_secs(7200)),
                reason: "spam wave".into()
            }
        );
        assert_eq!(
            cmd("ban spam*"),
            Command::Ban {
                target: "spam*".into(),
                time: None,
                reason: String::new()
            }
        );
        assert_eq!(
            cmd("unban spam*"),
            Command::Unban {
                target: "spam*".into()
            }
        );
        assert_eq!(cmd("bans"), Command::Bans);
        assert!(parse("ban").unwrap_err().contains("which target"));
        assert!(parse("ban x --for ever")
            .unwrap_err()
            .contains("bad duration"));
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("90"), Some(Duration::from_secs(90)));
        assert_eq!(parse_duration("2h"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(604800)));
        for bad in ["", "0", "m", "5w", "-5", "99999999999999999999", "400d"] {
            assert_eq!(parse_duration(bad), None, "{bad}");
        }
    }
}
