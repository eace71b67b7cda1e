//! Parsing of one sanitised input line into a [`Command`].
//!
//! Lines not starting with `/` are chat; `//text` sends `/text` as chat.

/// What a client line asks for.
#[derive(Debug, PartialEq, Eq)]
pub enum Command<'a> {
    /// Nothing to do (empty or blank line).
    Empty,
    Chat(&'a str),
    Me(&'a str),
    Nick(&'a str),
    Who,
    /// `/msg NICK TEXT`: a private message.
    Msg(&'a str, &'a str),
    Help,
    Quit(Option<&'a str>),
    /// A known command used wrongly: the usage to show.
    Usage(&'static str),
    /// An unknown `/command` (its name).
    Unknown(&'a str),
}

/// The lines of `/help`.
pub const HELP: &[&str] = &[
    "Commands:",
    "  /nick NAME     change your nickname",
    "  /who           list the users online",
    "  /me ACTION     send an action (* you waves)",
    "  /msg NICK TEXT send NICK a private message",
    "  /quit [REASON] leave the chat",
    "  /help          this help",
    "  //text         send a line starting with /",
];

/// Parses one sanitised line.
pub fn parse(line: &str) -> Command<'_> {
    if line.trim().is_empty() {
        return Command::Empty;
    }
    let Some(rest) = line.strip_prefix('/') else {
        return Command::Chat(line);
    };
    if rest.starts_with('/') {
        return Command::Chat(rest);
    }
    let (name, arg) = match rest.split_once(char::is_whitespace) {
        Some((n, a)) => (n, a.trim()),
        None => (rest, ""),
    };
    let arg = (!arg.is_empty()).then_some(arg);
    match name.to_ascii_lowercase().as_str() {
        "nick" => match arg {
            Some(a) if !a.contains(char::is_whitespace) => Command::Nick(a),
            _ => Command::Usage("usage: /nick NAME"),
        },
        "who" | "names" => Command::Who,
        "msg" | "query" => match arg.and_then(|a| a.split_once(char::is_whitespace)) {
            Some((nick, text)) if !text.trim().is_empty() => Command::Msg(nick, text.trim()),
            _ => Command::Usage("usage: /msg NICK TEXT"),
        },
        "me" => match arg {
            Some(a) => Command::Me(a),
            None => Command::Usage("usage: /me ACTION"),
        },
        "quit" | "exit" => Command::Quit(arg),
        "help" | "?" => Command::Help,
        _ => Command::Unknown(name),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses() {
        assert_eq!(parse("hello"), Command::Chat("hello"));
        assert_eq!(parse("  "), Command::Empty);
        assert_eq!(parse("//etc/passwd"), Command::Chat("/etc/passwd"));
        assert_eq!(parse("/nick alice"), Command::Nick("alice"));
        assert_eq!(parse("/NICK  alice "), Command::Nick("alice"));
        assert_eq!(parse("/nick"), Command::Usage("usage: /nick NAME"));
        assert_eq!(parse("/nick a b"), Command::Usage("usage: /nick NAME"));
        assert_eq!(parse("/me waves hi"), Command::Me("waves hi"));
        assert_eq!(parse("/quit"), Command::Quit(None));
        assert_eq!(parse("/quit bye all"), Command::Quit(Some("bye all")));
        assert_eq!(parse("/who"), Command::Who);
        assert_eq!(parse("/msg bob hi there"), Command::Msg("bob", "hi there"));
        assert_eq!(parse("/msg bob"), Command::Usage("usage: /msg NICK TEXT"));
        assert_eq!(parse("/frob x"), Command::Unknown("frob"));
        assert_eq!(parse("/"), Command::Unknown(""));
    }
}
