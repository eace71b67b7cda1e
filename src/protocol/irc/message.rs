//! IRC messages: parsing one line, rendering replies (RFC 1459/2812 and the
//! Modern IRC documents' grammar).
//!
//! `[@tags ][:prefix ]COMMAND[ param]*[ :trailing]`. Tags and a client's
//! prefix are ignored (chatd negotiates no capability; the prefix of a
//! client's message is meaningless). At most [`MAX_PARAMS`] parameters are
//! kept: the 15th takes the rest of the line, as the grammar says, so ten
//! thousand parameters cost nothing.

/// Most parameters of one message.
pub const MAX_PARAMS: usize = 15;
/// Longest line, without CR LF (512 bytes with them).
pub const MAX_LINE: usize = 510;

/// One parsed message, borrowing the line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Message<'a> {
    pub command: &'a str,
    params: [&'a str; MAX_PARAMS],
    count: usize,
}

impl<'a> Message<'a> {
    pub fn params(&self) -> &[&'a str] {
        &self.params[..self.count]
    }

    /// Parameter `i`, or "" when absent.
    pub fn arg(&self, i: usize) -> &'a str {
        self.params().get(i).copied().unwrap_or("")
    }
}

/// Parses one line (without CR LF). `None` for a line with no command.
pub fn parse(line: &str) -> Option<Message<'_>> {
    let mut rest = line.trim_start_matches(' ');
    if rest.starts_with('@') {
        rest = rest
            .split_once(' ')
            .map_or("", |(_, r)| r)
            .trim_start_matches(' ');
    }
    if rest.starts_with(':') {
        rest = rest
            .split_once(' ')
            .map_or("", |(_, r)| r)
            .trim_start_matches(' ');
    }
    let (command, mut rest) = match rest.split_once(' ') {
        Some((c, r)) => (c, r),
        None => (rest, ""),
    };
    if command.is_empty() {
        return None;
    }
    let mut m = Message {
        command,
        params: [""; MAX_PARAMS],
        count: 0,
    };
    loop {
        rest = rest.trim_start_matches(' ');
        if rest.is_empty() {
            break;
        }
        if let Some(trailing) = rest.strip_prefix(':') {
            m.params[m.count] = trailing;
            m.count += 1;
            break;
        }
        if m.count == MAX_PARAMS - 1 {
            m.params[m.count] = rest;
            m.count += 1;
            break;
        }
        let (p, r) = rest.split_once(' ').unwrap_or((rest, ""));
        m.params[m.count] = p;
        m.count += 1;
        rest = r;
    }
    Some(m)
}

/// Appends one message: `:prefix COMMAND params... :last\r\n`. The last
/// parameter always goes as a trailing one (it may hold spaces). A message
/// longer than [`MAX_LINE`] is cut at a character boundary (callers split
/// what must not be cut: chat text, name lists).
pub fn write(out: &mut Vec<u8>, prefix: &str, command: &str, params: &[&str]) {
    write_parts(out, &[prefix], command, params);
}

/// [`write`] with the prefix in pieces (`nick`, `!`, `nick`, `@`, `host`):
/// no allocation on the way from the relay log to a client.
pub fn write_parts(out: &mut Vec<u8>, prefix: &[&str], command: &str, params: &[&str]) {
    let start = out.len();
    out.push(b':');
    for p in prefix {
        out.extend_from_slice(p.as_bytes());
    }
    out.push(b' ');
    out.extend_from_slice(command.as_bytes());
    if let Some((last, middle)) = params.split_last() {
        for p in middle {
            out.push(b' ');
            out.extend_from_slice(p.as_bytes());
        }
        out.extend_from_slice(b" :");
        out.extend_from_slice(last.as_bytes());
    }
    if out.len() - start > MAX_LINE {
        let mut cut = start + MAX_LINE;
        while cut > start && (out[cut] & 0xc0) == 0x80 {
            cut -= 1;
        }
        out.truncate(cut);
    }
    out.extend_from_slice(b"\r\n");
}

/// Splits `text` into pieces of at most `max` bytes at character
/// boundaries (a long line-protocol message becomes several IRC lines;
/// nothing is cut off).
pub fn split(text: &str, max: usize) -> impl Iterator<Item = &str> {
    let max = max.max(4);
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let mut cut = rest.len().min(max);
        while !rest.is_char_boundary(cut) {
            cut -= 1;
        }
        let (piece, r) = rest.split_at(cut);
        rest = r;
        Some(piece)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_grammar() {
        let m = parse("PRIVMSG #chatd :hello there").unwrap();
        assert_eq!(
            (m.command, m.params()),
            ("PRIVMSG", &["#chatd", "hello there"][..])
        );
        let m = parse("@time=x :nick!u@h NICK  alice").unwrap();
        assert_eq!((m.command, m.params()), ("NICK", &["alice"][..]));
        let m = parse("USER u 0 * :Real Name").unwrap();
        assert_eq!(m.params(), ["u", "0", "*", "Real Name"]);
        let m = parse("JOIN :").unwrap();
        assert_eq!(m.params(), [""]);
        assert_eq!(parse(""), None);
        assert_eq!(parse("   "), None);
        assert_eq!(parse(":prefix-only"), None);
        assert_eq!(parse("CAP LS 302").unwrap().arg(5), "");
    }

    #[test]
    fn ten_thousand_parameters_are_fifteen() {
        let line = format!("PRIVMSG {}", "x ".repeat(10_000));
        let m = parse(&line).unwrap();
        assert_eq!(m.params().len(), MAX_PARAMS);
        assert!(m.params()[MAX_PARAMS - 1].len() > 19_000);
    }

    #[test]
    fn writes_and_splits() {
        let mut out = Vec::new();
        write(&mut out, "srv", "001", &["alice", "Welcome"]);
        write(&mut out, "a!a@h", "JOIN", &["#chatd"]);
        assert_eq!(out, b":srv 001 alice :Welcome\r\n:a!a@h JOIN :#chatd\r\n");
        let pieces: Vec<&str> = split("aé€b", 3).collect::<Vec<_>>();
        assert_eq!(pieces.concat(), "aé€b");
        assert!(split(&"é".repeat(1000), 100).all(|p| p.len() <= 100));
        let mut out = Vec::new();
        write(&mut out, "srv", "303", &["me", &"é".repeat(400)]);
        assert!(out.len() <= 512 && out.ends_with(b"\r\n"));
        assert!(std::str::from_utf8(&out).is_ok());
    }
}
