//! The IRC command table and its dispatcher.
//!
//! One table declares every command chatd understands: its handler, the
//! parameters it needs at least, and whether it is allowed before
//! registration. The dispatcher alone answers 421 (unknown), 451 (not
//! registered) and 461 (not enough parameters); handlers never check.

use super::message::{self, Message};
use super::{Irc, MAX_TARGETS};
use crate::protocol::event::{List, PRIV_ACTION, PRIV_NOTICE};
use crate::protocol::{nick, sanitize, Ask, Leave};

type Handler = fn(&mut Irc, &Message, &mut Vec<u8>, &mut Vec<Ask>) -> Option<Leave>;

/// One command: name, minimum parameters, allowed before registration.
pub struct Command {
    pub name: &'static str,
    pub min_params: usize,
    pub before_registration: bool,
    handler: Handler,
}

const fn cmd(
    name: &'static str,
    min_params: usize,
    before_registration: bool,
    handler: Handler,
) -> Command {
    Command {
        name,
        min_params,
        before_registration,
        handler,
    }
}

/// Every command chatd answers.
pub const COMMANDS: &[Command] = &[
    cmd("CAP", 1, true, cap),
    cmd("NICK", 1, true, nick_cmd),
    cmd("USER", 4, true, user),
    cmd("PASS", 1, true, |_, _, _, _| None),
    cmd("PING", 1, true, ping),
    cmd("PONG", 0, true, |_, _, _, _| None),
    cmd("QUIT", 0, true, quit),
    cmd("JOIN", 1, false, join),
    cmd("PART", 1, false, part),
    cmd("PRIVMSG", 0, false, privmsg),
    cmd("NOTICE", 0, false, privmsg),
    cmd("NAMES", 0, false, names),
    cmd("WHO", 0, false, who),
    cmd("WHOIS", 1, false, whois),
    cmd("ISON", 1, false, ison),
    cmd("MODE", 1, false, mode),
    cmd("TOPIC", 1, false, topic),
    cmd("LUSERS", 0, false, lusers),
    cmd("MOTD", 0, false, |s, _, out, _| {
        s.motd(out);
        None
    }),
    cmd("AWAY", 0, false, away),
];

/// Parses one line and runs its command, after the table's checks.
pub fn dispatch(s: &mut Irc, line: &str, out: &mut Vec<u8>, asks: &mut Vec<Ask>) -> Option<Leave> {
    let m = message::parse(line)?;
    let Some(c) = COMMANDS
        .iter()
        .find(|c| c.name.eq_ignore_ascii_case(m.command))
    else {
        if s.registered {
            s.reply(out, "421", &[m.command, "Unknown command"]);
        } else {
            s.reply(out, "451", &["You have not registered"]);
        }
        return None;
    };
    if !s.registered && !c.before_registration {
        s.reply(out, "451", &["You have not registered"]);
        return None;
    }
    if m.params().len() < c.min_params || (c.min_params > 0 && m.arg(0).is_empty()) {
        s.reply(out, "461", &[c.name, "Not enough parameters"]);
        return None;
    }
    (c.handler)(s, &m, out, asks)
}

/// IRCv3 `server-time`: history lines carry the time they were said.
pub const SERVER_TIME: &str = "server-time";
/// The capabilities chatd offers (CAP LS).
pub const CAPS: [&str; 1] = [SERVER_TIME];

fn cap(s: &mut Irc, m: &Message, out: &mut Vec<u8>, asks: &mut Vec<Ask>) -> Option<Leave> {
    let sub = m.arg(0).to_ascii_uppercase();
    let server = s.server.clone();
    let me = s.target().to_string();
    match sub.as_str() {
        "LS" => {
            if !s.registered {
                s.cap_open = true;
            }
            message::write(out, &server, "CAP", &[&me, "LS", CAPS.join(" ").as_str()]);
        }
        "LIST" => {
            let on = if s.server_time { SERVER_TIME } else { "" };
            message::write(out, &server, "CAP", &[&me, "LIST", on]);
        }
        "REQ" => {
            // All or nothing: every capability asked for must be known.
            let asked: Vec<(bool, &str)> = m
                .arg(1)
                .split(' ')
                .filter(|c| !c.is_empty())
                .map(|c| match c.strip_prefix('-') {
                    Some(name) => (false, name),
                    None => (true, c),
                })
                .collect();
            if asked.is_empty() || asked.iter().any(|(_, c)| !CAPS.contains(c)) {
                message::write(out, &server, "CAP", &[&me, "NAK", m.arg(1)]);
            } else {
                for (on, _) in asked {
                    s.server_time = on;
                }
                message::write(out, &server, "CAP", &[&me, "ACK", m.arg(1)]);
            }
        }
        "END" => {
            s.cap_open = false;
            s.try_register(out, asks);
        }
        _ => s.reply(out, "410", &[m.arg(0), "Invalid CAP command"]),
    }
    None
}

fn nick_cmd(s: &mut Irc, m: &Message, out: &mut Vec<u8>, asks: &mut Vec<Ask>) -> Option<Leave> {
    let n = m.arg(0);
    if n == s.nick && s.got_nick {
        return None;
    }
    match nick::validate(n) {
        Ok(()) => asks.push(Ask::Nick(n.to_string())),
        Err(_) => s.reply(out, "432", &[n, "Erroneous nickname"]),
    }
    None
}

fn user(s: &mut Irc, _m: &Message, out: &mut Vec<u8>, asks: &mut Vec<Ask>) -> Option<Leave> {
    if s.registered {
        s.reply(out, "462", &["You may not reregister"]);
        return None;
    }
    s.got_user = true;
    s.try_register(out, asks);
    None
}

fn ping(s: &mut Irc, m: &Message, out: &mut Vec<u8>, _: &mut Vec<Ask>) -> Option<Leave> {
    let server = s.server.clone();
    message::write(out, &server, "PONG", &[&server, m.arg(0)]);
    None
}

fn quit(_: &mut Irc, m: &Message, _: &mut Vec<u8>, _: &mut Vec<Ask>) -> Option<Leave> {
    let reason = clean(m.arg(0)).unwrap_or_default();
    let reason = if reason.is_empty() {
        "Client Quit".to_string()
    } else {
        reason.chars().take(120).collect()
    };
    Some(Leave::Quit(reason))
}

fn join(s: &mut Irc, m: &Message, out: &mut Vec<u8>, asks: &mut Vec<Ask>) -> Option<Leave> {
    if m.arg(0) == "0" {
        if s.joined {
            asks.push(Ask::Part(String::new()));
        }
        return None;
    }
    for chan in m
        .arg(0)
        .split(',')
        .filter(|c| !c.is_empty())
        .take(MAX_TARGETS)
    {
        if s.is_channel(chan) {
            if !asks.contains(&Ask::Join) {
                asks.push(Ask::Join);
            }
        } else {
            s.reply(out, "403", &[chan, "No such channel"]);
        }
    }
    None
}

fn part(s: &mut Irc, m: &Message, out: &mut Vec<u8>, asks: &mut Vec<Ask>) -> Option<Leave> {
    for chan in m
        .arg(0)
        .split(',')
        .filter(|c| !c.is_empty())
        .take(MAX_TARGETS)
    {
        if !s.is_channel(chan) {
            s.reply(out, "403", &[chan, "No such channel"]);
        } else if !s.joined {
            s.reply(out, "442", &[chan, "You're not on that channel"]);
        } else {
            asks.push(Ask::Part(clean(m.arg(1)).unwrap_or_default()));
        }
    }
    None
}

/// Text that may be relayed (formatting codes allowed), or None.
fn clean(t: &str) -> Option<String> {
    sanitize::check_formatted(t.as_bytes())
        .ok()
        .map(str::to_string)
}

fn privmsg(s: &mut Irc, m: &Message, out: &mut Vec<u8>, asks: &mut Vec<Ask>) -> Option<Leave> {
    let notice = m.command.eq_ignore_ascii_case("NOTICE");
    // Errors are never sent in answer to a NOTICE (RFC 2812, 3.3.2).
    let err = |s: &Irc, out: &mut Vec<u8>, code: &str, params: &[&str]| {
        if !notice {
            s.reply(out, code, params);
        }
    };
    let (targets, text) = (m.arg(0), m.arg(1));
    if targets.is_empty() {
        err(s, out, "411", &["No recipient given (PRIVMSG)"]);
        return None;
    }
    if text.is_empty() {
        err(s, out, "412", &["No text to send"]);
        return None;
    }
    // CTCP: only ACTION reaches anyone; other requests (DCC above all,
    // which exposes addresses; VERSION, PING...) are dropped.
    let (action, body) = match text.strip_prefix('\x01') {
        Some(ctcp) => {
            let ctcp = ctcp.strip_suffix('\x01').unwrap_or(ctcp);
            match ctcp.split_once(' ') {
                Some((verb, rest)) if verb.eq_ignore_ascii_case("ACTION") => (true, rest),
                _ => return None,
            }
        }
        None => (false, text),
    };
    let Some(body) = clean(body).filter(|b| !b.trim().is_empty()) else {
        err(s, out, "412", &["No text to send"]);
        return None;
    };
    let targets: Vec<&str> = targets.split(',').filter(|t| !t.is_empty()).collect();
    if targets.len() > MAX_TARGETS {
        err(s, out, "407", &[m.arg(0), "Too many targets"]);
        return None;
    }
    for t in targets {
        if t.starts_with('#') {
            if !s.is_channel(t) {
                err(s, out, "403", &[t, "No such channel"]);
            } else if !s.joined {
                err(s, out, "404", &[t, "Cannot send to channel"]);
            } else if action {
                asks.push(Ask::Action(body.clone()));
            } else {
                asks.push(Ask::Chat(body.clone()));
            }
        } else if !nick::addressable(t) {
            err(s, out, "401", &[t, "No such nick/channel"]);
        } else {
            let flags = if action { PRIV_ACTION } else { 0 } | if notice { PRIV_NOTICE } else { 0 };
            asks.push(Ask::Private {
                flags,
                target: t.to_string(),
                text: body.clone(),
            });
        }
    }
    None
}

fn names(s: &mut Irc, m: &Message, out: &mut Vec<u8>, asks: &mut Vec<Ask>) -> Option<Leave> {
    let chan = m.arg(0);
    if chan.is_empty() || s.is_channel(chan) {
        asks.push(Ask::List(List::Names));
    } else {
        s.reply(out, "366", &[chan, "End of /NAMES list."]);
    }
    None
}

fn who(s: &mut Irc, m: &Message, _: &mut Vec<u8>, asks: &mut Vec<Ask>) -> Option<Leave> {
    s.queries.push_back(m.arg(0).to_string());
    asks.push(Ask::List(List::IrcWho));
    None
}

fn whois(s: &mut Irc, m: &Message, _: &mut Vec<u8>, asks: &mut Vec<Ask>) -> Option<Leave> {
    // WHOIS [server] nick
    let nick = if m.params().len() > 1 {
        m.arg(1)
    } else {
        m.arg(0)
    };
    s.queries
        .push_back(nick.split(',').next().unwrap_or("").to_string());
    asks.push(Ask::List(List::Whois));
    None
}

fn ison(s: &mut Irc, m: &Message, _: &mut Vec<u8>, asks: &mut Vec<Ask>) -> Option<Leave> {
    s.queries.push_back(m.params().join(" "));
    asks.push(Ask::List(List::Ison));
    None
}

fn mode(s: &mut Irc, m: &Message, out: &mut Vec<u8>, _: &mut Vec<Ask>) -> Option<Leave> {
    let target = m.arg(0);
    if target.starts_with('#') {
        if !s.is_channel(target) {
            s.reply(out, "403", &[target, "No such channel"]);
        } else if m.params().len() == 1 {
            let chan = s.channel.clone();
            s.reply(out, "324", &[&chan, "+nt"]);
            s.reply(out, "329", &[&chan, "0"]);
        } else if m.arg(1).trim_start_matches('+') == "b" {
            let chan = s.channel.clone();
            s.reply(out, "368", &[&chan, "End of channel ban list"]);
        } else {
            let chan = s.channel.clone();
            s.reply(out, "482", &[&chan, "You're not channel operator"]);
        }
    } else if target.eq_ignore_ascii_case(&s.nick) {
        s.reply(out, "221", &["+"]);
    } else {
        s.reply(out, "502", &["Can't change mode for other users"]);
    }
    None
}

fn topic(s: &mut Irc, m: &Message, out: &mut Vec<u8>, _: &mut Vec<Ask>) -> Option<Leave> {
    let chan = m.arg(0);
    if !s.is_channel(chan) {
        s.reply(out, "403", &[chan, "No such channel"]);
    } else if m.params().len() > 1 {
        let chan = s.channel.clone();
        s.reply(out, "482", &[&chan, "You're not channel operator"]);
    } else if s.topic.is_empty() {
        let chan = s.channel.clone();
        s.reply(out, "331", &[&chan, "No topic is set"]);
    } else {
        let (chan, topic) = (s.channel.clone(), s.topic.clone());
        s.reply(out, "332", &[&chan, &topic]);
    }
    None
}

fn lusers(_: &mut Irc, _: &Message, _: &mut Vec<u8>, asks: &mut Vec<Ask>) -> Option<Leave> {
    asks.push(Ask::List(List::Lusers));
    None
}

fn away(s: &mut Irc, m: &Message, out: &mut Vec<u8>, _: &mut Vec<Ask>) -> Option<Leave> {
    if m.arg(0).is_empty() {
        s.reply(out, "305", &["You are no longer marked as being away"]);
    } else {
        s.reply(out, "306", &["You have been marked as being away"]);
    }
    None
}
