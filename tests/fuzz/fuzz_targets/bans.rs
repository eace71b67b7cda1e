//! The master's readers of the files it keeps in `state_dir`: the bans
//! (`chatd::master::bans::parse_file`) and the topic
//! (`chatd::master::topic::parse`), and the ban target parser behind
//! `chatctl ban`: untrusted text.
//!
//! Checked: no panic; every ban read has a target that parses to itself
//! and a reason without control characters; no target twice; rendering
//! what was read and reading it again gives the same bans; a topic read
//! has no control character and reads back the same.
#![no_main]

use chatd::master::bans::{parse_file, parse_target, render_file, MAX_BANS};
use chatd::master::topic;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok((_, canonical)) = parse_target(text) {
        assert_eq!(parse_target(&canonical).unwrap().1, canonical);
    }
    let (bans, _) = parse_file(text);
    assert!(bans.len() <= MAX_BANS);
    for (i, b) in bans.iter().enumerate() {
        assert_eq!(
            parse_target(&b.text).unwrap(),
            (b.target.clone(), b.text.clone())
        );
        assert!(!b.reason.chars().any(char::is_control));
        assert!(!bans[..i].iter().any(|x| x.text == b.text));
    }
    let (again, errors) = parse_file(&render_file(&bans));
    assert!(errors.is_empty(), "{errors:?}");
    assert_eq!(again, bans);
    let was = text.split('\n').next().unwrap_or("");
    if let Some(t) = topic::parse(text, was) {
        assert!(!t.chars().any(char::is_control) && t.len() <= topic::MAX_TOPIC);
        assert_eq!(topic::parse(&topic::render(was, &t), was), Some(t));
    }
});
