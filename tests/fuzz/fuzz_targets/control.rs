//! The master's parser of control requests (`chatd::control::parse`): what
//! any process of an admin sends to the control socket.
//!
//! Checked: no panic; a parsed request carries no control character in
//! any field, nicks are one word, texts are non-empty where required, mute
//! durations are within a year; and the parse is stable: rendering the
//! request back as a line (if that fits) parses to the same request.
#![no_main]

use chatd::control::{parse, Command, MAX_REQUEST};
use libfuzzer_sys::fuzz_target;

fn line(json: bool, c: &Command) -> String {
    let j = if json { "--json " } else { "" };
    let body = match c {
        Command::Status => "status".to_string(),
        Command::Who => "who".to_string(),
        Command::Reload => "reload".to_string(),
        Command::Metrics => "metrics".to_string(),
        Command::Kick { nick, reason } => format!("kick {nick} {reason}"),
        Command::Mute { nick, time: None } => format!("mute {nick}"),
        Command::Mute {
            nick,
            time: Some(t),
        } => format!("mute {nick} --for {}", t.as_secs()),
        Command::Unmute { nick } => format!("unmute {nick}"),
        Command::Say { text } => format!("say {text}"),
        Command::Topic { text } => format!("topic {text}"),
        Command::Bans => "bans".to_string(),
        Command::Unban { target } => format!("unban {target}"),
        Command::Ban {
            target,
            time,
            reason,
        } => match time {
            Some(t) => format!("ban {target} --for {} {reason}", t.as_secs()),
            None => format!("ban {target} {reason}"),
        },
    };
    format!("{j}{body}")
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(req) = parse(text) else {
        return;
    };
    assert!(text.len() <= MAX_REQUEST);
    let fields: Vec<&str> = match &req.command {
        Command::Kick { nick, reason } => vec![nick, reason],
        Command::Mute { nick, time } => {
            if let Some(t) = time {
                assert!(t.as_secs() > 0 && t.as_secs() <= 366 * 86400);
            }
            vec![nick]
        }
        Command::Unmute { nick } | Command::Unban { target: nick } => vec![nick],
        Command::Ban { target, reason, .. } => vec![target, reason],
        Command::Say { text } | Command::Topic { text } => {
            assert!(!text.is_empty());
            vec![text]
        }
        _ => vec![],
    };
    for f in &fields {
        assert!(!f.chars().any(|c| c.is_control() && c != '\t'), "{f:?}");
    }
    if let Command::Kick { nick, .. }
    | Command::Mute { nick, .. }
    | Command::Unmute { nick }
    | Command::Ban { target: nick, .. }
    | Command::Unban { target: nick } = &req.command
    {
        assert!(!nick.is_empty() && !nick.contains([' ', '\t']), "{nick:?}");
    }
    // (A duration renders in seconds, which may make the line longer.)
    let rendered = line(req.json, &req.command);
    if rendered.len() <= MAX_REQUEST {
        let again = parse(&rendered).expect("a rendered request parses");
        assert_eq!(again, req);
    }
});
