//! Which slots a poll must look at: the stack's work per poll follows what happened, not the
//! size of the socket table (docs/tcp.md, "Work per poll").
//!
//! A slot is *touched* when something may have given its socket work: a segment reached it
//! (smoltcp names the socket, `Interface::take_tcp_ingress_socket`), the caller used it (data
//! written or read, close, abort), or its smoltcp timer came (retransmission, delayed ACK,
//! keep-alive, TIME-WAIT, a neighbour's silence ending). A touched slot joins two sets:
//!
//! - `egress`: the sockets the next egress dispatches (`Interface::poll_egress_sockets`);
//! - `service`: the slots the next `Stack::service` looks at (their role may change).
//!
//! A slot a segment reached also joins `app`: the caller's connections that may have news
//! (data, a FIN, room to send), taken by `Stack::take_ingress_ready`.
//!
//! After a socket's egress its next wake-up (`Interface::socket_poll_at`) is kept in a heap
//! of timers. Entries are never removed from the middle: a slot whose timer moved leaves a
//! stale entry behind, which costs one needless visit when it comes up; the heap is rebuilt
//! from the per-slot timers when stale entries outnumber the slots, so it stays bounded.
//!
//! The invariant (checked by `Stack::readiness_violations` in the tests): every socket whose
//! `socket_poll_at` is `Some(t)` is in `egress`, or has a timer in the heap no later than `t`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use smoltcp::time::Instant;

#[derive(Debug)]
pub(crate) struct Ready {
    egress: SlotSet,
    service: SlotSet,
    app: SlotSet,
    /// Scratch for `expire` and `take_app`.
    scratch: Vec<u32>,
    timers: Timers<Instant>,
}

/// Slots to look at, each listed once, in the order they were added: insert and membership
/// are O(1), and the whole list is taken at once.
#[derive(Debug)]
pub struct SlotSet {
    list: Vec<u32>,
    member: Vec<bool>,
}

impl SlotSet {
    pub fn new(slots: usize) -> SlotSet {
        SlotSet { list: Vec::with_capacity(slots), member: vec![false; slots] }
    }

    /// Adds `slot` unless it is in the set already.
    pub fn insert(&mut self, slot: usize) {
        if !self.member[slot] {
            self.member[slot] = true;
            self.list.push(slot as u32);
        }
    }

    pub fn contains(&self, slot: usize) -> bool {
        self.member[slot]
    }

    pub fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    /// Takes `slot` out: a walk of the list, done only when `slot` is in it.
    pub fn remove(&mut self, slot: usize) {
        if self.member[slot] {
            self.member[slot] = false;
            self.list.retain(|&s| s as usize != slot);
        }
    }

    /// Appends the members to `into`, in order, and empties the set.
    pub fn drain_into(&mut self, into: &mut Vec<u32>) {
        for &slot in &self.list {
            self.member[slot as usize] = false;
        }
        into.append(&mut self.list);
    }
}

/// One timer per slot, in a heap: setting a slot's timer is O(log n), finding the due ones
/// O(due · log n). A slot whose timer moved leaves its old entry behind (stale: it costs one
/// needless wake-up when it comes up); the heap is rebuilt from the per-slot timers when it
/// holds more than twice as many entries as slots, so memory stays bounded.
#[derive(Debug)]
pub struct Timers<T> {
    /// (when, slot), earliest first; may hold stale entries.
    heap: BinaryHeap<Reverse<(T, u32)>>,
    /// Each slot's timer: the one of its entries that is not stale.
    at: Vec<Option<T>>,
}

impl<T: Ord + Copy> Timers<T> {
    pub fn new(slots: usize) -> Timers<T> {
        Timers { heap: BinaryHeap::with_capacity(2 * slots), at: vec![None; slots] }
    }

    /// Sets (or, with None, clears) `slot`'s timer.
    pub fn set(&mut self, slot: usize, at: Option<T>) {
        if self.at[slot] == at {
            return;
        }
        self.at[slot] = at;
        if let Some(at) = at {
            self.heap.push(Reverse((at, slot as u32)));
            if self.heap.len() > 2 * self.at.len() + 64 {
                self.compact();
            }
        }
    }

    /// Calls `f` with each slot whose timer is `now` or earlier, and clears those timers.
    /// A stale entry's slot is passed too (once): a needless wake-up, never a missed one.
    pub fn expire(&mut self, now: T, mut f: impl FnMut(usize)) {
        while let Some(&Reverse((at, slot))) = self.heap.peek() {
            if at > now {
                break;
            }
            self.heap.pop();
            let slot = slot as usize;
            if self.at[slot] == Some(at) {
                self.at[slot] = None;
            }
            f(slot);
        }
    }

    /// The earliest timer, None if there is none. Possibly a stale one, which is only early.
    pub fn next(&self) -> Option<T> {
        self.heap.peek().map(|Reverse((at, _))| *at)
    }

    /// `slot`'s timer.
    pub fn get(&self, slot: usize) -> Option<T> {
        self.at[slot]
    }

    /// Entries in the heap, stale ones included.
    pub fn entries(&self) -> usize {
        self.heap.len()
    }

    /// Rebuilds the heap from the per-slot timers: drops every stale entry.
    fn compact(&mut self) {
        self.heap.clear();
        for (slot, at) in self.at.iter().enumerate() {
            if let Some(at) = at {
                self.heap.push(Reverse((*at, slot as u32)));
            }
        }
    }
}

impl Ready {
    pub(crate) fn new(slots: usize) -> Ready {
        Ready {
            egress: SlotSet::new(slots),
            service: SlotSet::new(slots),
            app: SlotSet::new(slots),
            scratch: Vec::new(),
            timers: Timers::new(slots),
        }
    }

    /// Something may have given `slot` work: egress and service look at it next.
    pub(crate) fn touch(&mut self, slot: usize) {
        self.egress.insert(slot);
        self.service.insert(slot);
    }

    /// A segment reached `slot`'s socket: touched, and news for the caller.
    pub(crate) fn ingress(&mut self, slot: usize) {
        self.touch(slot);
        self.app.insert(slot);
    }

    /// Calls `f` with each slot a segment reached since the last call, and empties the set.
    pub(crate) fn take_app(&mut self, mut f: impl FnMut(usize)) {
        self.app.drain_into(&mut self.scratch);
        for &slot in &self.scratch {
            f(slot as usize);
        }
        self.scratch.clear();
    }

    pub(crate) fn wants_egress(&mut self, slot: usize) {
        self.egress.insert(slot);
    }

    pub(crate) fn wants_service(&mut self, slot: usize) {
        self.service.insert(slot);
    }

    /// Touches every slot whose timer has come by `now`.
    pub(crate) fn expire(&mut self, now: Instant) {
        let (timers, scratch) = (&mut self.timers, &mut self.scratch);
        timers.expire(now, |slot| scratch.push(slot as u32));
        for i in 0..self.scratch.len() {
            self.touch(self.scratch[i] as usize);
        }
        self.scratch.clear();
    }

    /// Moves the slots waiting for egress into `into` (cleared first) and empties the set.
    pub(crate) fn take_egress(&mut self, into: &mut Vec<u32>) {
        into.clear();
        self.egress.drain_into(into);
    }

    /// Moves the slots waiting for service into `into` (cleared first) and empties the set.
    pub(crate) fn take_service(&mut self, into: &mut Vec<u32>) {
        into.clear();
        self.service.drain_into(into);
    }

    pub(crate) fn egress_pending(&self) -> bool {
        !self.egress.is_empty()
    }

    #[cfg(test)]
    pub(crate) fn service_pending(&self) -> bool {
        !self.service.is_empty()
    }

    /// Records when `slot`'s socket wants polling next (`Interface::socket_poll_at` after its
    /// egress): now or earlier puts it back in `egress`; a later time sets its timer.
    pub(crate) fn schedule(&mut self, slot: usize, at: Option<Instant>, now: Instant) {
        match at {
            Some(at) if at <= now => {
                self.timers.set(slot, None);
                self.wants_egress(slot);
            }
            at => self.timers.set(slot, at),
        }
    }

    /// The earliest timer, None if there is none. Possibly a stale one, which is only early.
    pub(crate) fn next_timer(&self) -> Option<Instant> {
        self.timers.next()
    }

    /// True if `slot` is in `egress` or has a timer no later than `at`.
    pub(crate) fn covers(&self, slot: usize, at: Instant) -> bool {
        self.egress.contains(slot) || self.timers.get(slot).is_some_and(|t| t <= at)
    }

    #[cfg(test)]
    fn timers_len(&self) -> usize {
        self.timers.entries()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: i64) -> Instant {
        Instant::from_millis(ms)
    }

    #[test]
    fn a_slot_set_lists_each_slot_once_in_order_and_forgets_removed_ones() {
        let mut set = SlotSet::new(8);
        for slot in [5, 2, 5, 7, 2] {
            set.insert(slot);
        }
        set.remove(7);
        set.remove(3);
        assert!(set.contains(5) && !set.contains(7));
        let mut out = vec![1];
        set.drain_into(&mut out);
        assert_eq!(out, [1, 5, 2]);
        assert!(set.is_empty() && !set.contains(5));
        set.insert(7);
        assert!(set.contains(7));
    }

    #[test]
    fn a_touched_slot_is_listed_once_in_each_set() {
        let mut ready = Ready::new(8);
        ready.touch(3);
        ready.touch(3);
        ready.wants_service(5);
        let mut out = Vec::new();
        ready.take_egress(&mut out);
        assert_eq!(out, [3]);
        ready.take_service(&mut out);
        assert_eq!(out, [3, 5]);
        assert!(!ready.egress_pending() && !ready.service_pending());
        // Taken sets can be filled again.
        ready.touch(3);
        ready.take_egress(&mut out);
        assert_eq!(out, [3]);
    }

    #[test]
    fn a_timer_touches_its_slot_when_it_comes_and_not_before() {
        let mut ready = Ready::new(8);
        ready.schedule(2, Some(at(10)), at(0));
        ready.schedule(6, Some(at(20)), at(0));
        assert_eq!(ready.next_timer(), Some(at(10)));
        ready.expire(at(9));
        assert!(!ready.egress_pending());
        ready.expire(at(10));
        let mut out = Vec::new();
        ready.take_egress(&mut out);
        assert_eq!(out, [2]);
        assert_eq!(ready.next_timer(), Some(at(20)));
        assert!(ready.covers(6, at(20)) && !ready.covers(6, at(19)) && !ready.covers(2, at(100)));
    }

    #[test]
    fn due_now_goes_back_to_egress_and_none_clears_the_timer() {
        let mut ready = Ready::new(4);
        ready.schedule(1, Some(at(5)), at(5));
        assert!(ready.egress_pending());
        ready.schedule(0, Some(at(50)), at(5));
        ready.schedule(0, None, at(5));
        assert!(!ready.covers(0, at(1000)));
        // Its stale entry touches it once, harmlessly.
        ready.expire(at(50));
        let mut out = Vec::new();
        ready.take_egress(&mut out);
        assert_eq!(out, [1, 0]);
    }

    #[test]
    fn a_timer_moved_often_keeps_the_heap_bounded() {
        let mut ready = Ready::new(4);
        for ms in 1..10_000 {
            ready.schedule(ms as usize % 4, Some(at(ms)), at(0));
        }
        assert!(ready.timers_len() <= 2 * 4 + 64 + 1, "{}", ready.timers_len());
        // The latest timer of each slot survives the compactions.
        for slot in 0..4 {
            assert!(ready.covers(slot, at(10_000)));
        }
        ready.expire(at(9_995));
        assert_eq!(ready.next_timer(), Some(at(9_996)));
        assert!(ready.covers(0, at(9_996)));
    }
}
