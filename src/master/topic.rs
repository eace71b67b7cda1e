//! The topic an operator set with `chatctl topic`, kept across restarts.
//!
//! `state_dir/topic` holds two lines: the topic the configuration file
//! gave when the operator set theirs, then the operator's. At start the
//! operator's topic is used only while the file's is still the same: an
//! edited configuration wins, as it does on SIGHUP (see `Master::reload`).
//! The file is written like the bans file, through the state directory's
//! fd (`bans::Bans::write_file`: a new file, fsync, rename), and read at
//! start as untrusted text ([`parse`], fuzzed with the bans target).

use crate::protocol::sanitize;

/// The file's name in `state_dir`.
pub const FILE: &str = "topic";
/// Longest topic kept (what one `chatctl` request can carry).
pub const MAX_TOPIC: usize = 4096;

/// The file's text for `topic`, set while the configuration gave
/// `file_topic`.
pub fn render(file_topic: &str, topic: &str) -> String {
    format!("{file_topic}\n{topic}\n")
}

/// The operator's topic in `text`, if it is well-formed and was set while
/// the configuration gave `file_topic` (what it gives now).
pub fn parse(text: &str, file_topic: &str) -> Option<String> {
    let mut lines = text.strip_suffix('\n')?.split('\n');
    let (was, topic) = (lines.next()?, lines.next()?);
    let fine = |t: &str| {
        t.len() <= MAX_TOPIC
            && sanitize::check(t.as_bytes()).is_ok()
            && !t.chars().any(char::is_control)
    };
    (lines.next().is_none() && was == file_topic && fine(was) && fine(topic))
        .then(|| topic.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kept_while_the_file_topic_is_the_same() {
        let text = render("from the file", "set by an operator");
        assert_eq!(
            parse(&text, "from the file").as_deref(),
            Some("set by an operator")
        );
        assert_eq!(parse(&text, "edited since"), None);
        assert_eq!(parse(&render("", "x"), "").as_deref(), Some("x"));
        assert_eq!(parse(&render("", ""), "").as_deref(), Some(""));
    }

    #[test]
    fn anything_else_is_ignored() {
        for bad in [
            "",
            "\n",
            "a\nb",
            "a\nb\nc\n",
            "a\n\x1b[2Jb\n",
            "a\nb\tc\n",
            &render("", &"x".repeat(MAX_TOPIC + 1)),
        ] {
            assert_eq!(parse(bad, "a"), None, "{bad:?}");
        }
    }
}
