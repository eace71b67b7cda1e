//! Giving memory back once a crowd has left.
//!
//! Ten thousand clients make the master's tables grow and fill its heap
//! with their records, touch a page of slot control words for every 64
//! slots, and keep the whole relay log resident. None of that shrinks by
//! itself when they leave: freed heap blocks stay resident in the arena
//! (`crate::arena`), hash tables keep their capacity, and shared pages
//! stay in the memfd. So once the room has shrunk to half of its largest
//! size since the last time (and by at least 64 clients,
//! `clients::Clients::emptied`), and the relay has been quiet for a moment
//! (`Master::trim_if_quiet`, on the timer), the master
//!
//! 1. shrinks its client tables and the relay's queues;
//! 2. gives back the control words of slot pages nobody holds
//!    (`Region::release_control_page`);
//! 3. gives back the relay log outside what readers have still to read
//!    and the recent lines a newcomer may be shown (`Region::release_log`);
//! 4. drops its page tables for the slots nobody holds
//!    (`Region::drop_slot_page_tables`);
//! 5. gives back the free pages inside its heap arena
//!    (`arena::give_back_free`).
//!
//! The freed slots' own pages went back as each slot was freed
//! (`Region::release_slot`). A room that only ever changes by a few
//! clients never gets here: what it would give back is a few pages, and
//! the log would have to be faulted in again by every child.

use super::Master;
use tracing::debug;

impl Master {
    /// Gives memory back if the room has emptied (see the module docs).
    pub(super) fn give_back_memory(&mut self) {
        if !self.clients.emptied() {
            return;
        }
        let pages = self.clients.shrink();
        for &first in &pages {
            let _ = self.region.release_control_page(first);
        }
        self.relay.shrink();
        self.refresh_tail();
        let (from, to) = self.relay.unused_log();
        let log = self.region.release_log(from, to).map_or(0, |()| to - from);
        let _ = self.region.drop_slot_page_tables();
        let heap = crate::arena::give_back_free();
        debug!(
            event = "gave_back",
            clients = self.clients.len(),
            control_pages = pages.len(),
            log_bytes = log,
            heap_bytes = heap,
            "the room emptied: gave back memory"
        );
    }
}
