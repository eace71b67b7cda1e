//! Joins and leaves in a large room.
//!
//! In a small room every join and leave is a line everyone reads: `* bob
//! joined`, an IRC JOIN. In a room of thousands that is quadratic: each
//! join wakes every child, and a crowd arriving at once makes every client
//! read every other's arrival. Above `join_notices_up_to` people, joins and
//! leaves (IRC PART and QUIT too) are counted instead and summed up in one
//! server notice every [`SUMMARY_EVERY`]: `* 37 joined and 12 left in the
//! last 30 s; 4211 in the room`. (Twitch's IRC gateway does the same above
//! 1000 chatters.) Kicks, nick changes and everything said are announced
//! whatever the size. When the room shrinks back, what was counted is
//! summed up at once, before the next join is announced.

use super::Master;
use crate::protocol::event::{Event, Kind};
use std::time::{Duration, Instant};

/// How often the joins and leaves of a large room are summed up.
pub const SUMMARY_EVERY: Duration = Duration::from_secs(30);

/// Joins and leaves not announced yet.
#[derive(Debug, Default)]
pub struct Folded {
    joined: u64,
    left: u64,
    /// When the first of them happened.
    since: Option<Instant>,
}

impl Folded {
    /// The summary line, if there is anything to say.
    pub fn text(&self, in_room: usize) -> Option<String> {
        let mut parts = Vec::new();
        if self.joined > 0 {
            parts.push(format!("{} joined", self.joined));
        }
        if self.left > 0 {
            parts.push(format!("{} left", self.left));
        }
        if parts.is_empty() {
            return None;
        }
        let secs = SUMMARY_EVERY.as_secs();
        Some(format!(
            "{} in the last {secs} s; {in_room} in the room",
            parts.join(" and ")
        ))
    }
}

impl Master {
    /// Announces a join (`joined`) or a leave: `ev` is its encoded Join,
    /// Part or Quit event from `origin`. In a room larger than
    /// `join_notices_up_to` (counted after the change), it is only counted.
    pub(super) fn announce(&mut self, origin: u64, ev: Vec<u8>, joined: bool) {
        if self.clients.in_room() <= self.cfg.join_notices_up_to as usize {
            self.sum_up();
            self.relay.emit(origin, ev);
            return;
        }
        let f = &mut self.folded;
        if joined {
            f.joined += 1;
        } else {
            f.left += 1;
        }
        f.since.get_or_insert_with(Instant::now);
    }

    /// Called every tick: sums up what was counted once [`SUMMARY_EVERY`]
    /// has passed since the first of it.
    pub(super) fn sum_up_if_due(&mut self, now: Instant) {
        if self
            .folded
            .since
            .is_some_and(|t| now.duration_since(t) >= SUMMARY_EVERY)
        {
            self.sum_up();
        }
    }

    /// Posts the summary of what was counted, if anything.
    pub(super) fn sum_up(&mut self) {
        let f = std::mem::take(&mut self.folded);
        if let Some(text) = f.text(self.clients.in_room()) {
            self.relay
                .emit(0, Event::new(Kind::Notice, "", &text).encode());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries() {
        let mut f = Folded::default();
        assert_eq!(f.text(5), None);
        f.joined = 37;
        assert_eq!(
            f.text(4211).unwrap(),
            "37 joined in the last 30 s; 4211 in the room"
        );
        f.left = 12;
        assert_eq!(
            f.text(4211).unwrap(),
            "37 joined and 12 left in the last 30 s; 4211 in the room"
        );
        f.joined = 0;
        assert_eq!(
            f.text(1).unwrap(),
            "12 left in the last 30 s; 1 in the room"
        );
    }
}
