//! Queued downstream messages (SPEC §3.2, §4, §11 "Fairness"): what waits
//! to be sent, in which order, and until when.
//!
//! * Ungrouped messages are served **round-robin across sessions**: each
//!   session has its own FIFO, and [`Queue::pop_ready`] takes one message
//!   from each session with work in turn, so one session's flood cannot
//!   delay another's single messages by more than one turn per session.
//! * Messages of one session with the same `group_id` go one at a time:
//!   only the group's active message is runnable; the next becomes
//!   runnable when the active one is removed (final result).
//! * Timers hold messages waiting for a retry or for their target's
//!   backoff; [`Queue::due`] makes them runnable again.
//! * [`Paging`] keeps memory bounded: beyond `mem_messages` the backlog
//!   stays on disk and is read back by row id.
//!
//! Pure data structure: no I/O, time passed in as [`Millis`].

use super::Millis;
use crate::link::{LinkId, MsgId};
use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap, VecDeque};
use std::hash::BuildHasherDefault;
use std::sync::Arc;

/// Hasher for the engine's own row ids (sequential integers, not chosen by
/// anyone outside): one multiplication instead of SipHash.
#[derive(Default, Clone, Copy)]
pub(crate) struct IdHasher(u64);

impl std::hash::Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 =
                (self.0.rotate_left(5) ^ u64::from(*b)).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

/// A map keyed by row id.
pub(crate) type IdMap<V> = HashMap<u64, V, BuildHasherDefault<IdHasher>>;

/// Where a message is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum MsgState {
    /// Runnable (in the ready queue) or waiting behind its group.
    Queued,
    /// Handed to a link, no outcome yet.
    InFlight(LinkId),
    /// Waiting for a timer (retry backoff, target backoff).
    Waiting,
}

/// A downstream message in memory.
#[derive(Debug)]
pub(crate) struct Msg {
    pub(crate) session: Arc<str>,
    /// The session's index in the round-robin.
    pub(crate) lane: usize,
    pub(crate) message_id: Arc<str>,
    pub(crate) group: Option<Arc<str>>,
    pub(crate) body: Arc<str>,
    pub(crate) attempts: u32,
    pub(crate) accepted_at_ms: i64,
    pub(crate) expires_at_ms: i64,
    pub(crate) receipt: bool,
    pub(crate) target: Arc<str>,
    pub(crate) state: MsgState,
}

#[derive(Default, Debug)]
struct GroupQ {
    active: Option<MsgId>,
    waiting: VecDeque<MsgId>,
}

/// Runnable messages, one FIFO per session ("lane"), served round-robin.
#[derive(Default, Debug)]
struct Ready {
    lanes: Vec<VecDeque<MsgId>>,
    /// Lanes with work, in serving order; each appears at most once.
    turn: VecDeque<usize>,
    len: usize,
}

impl Ready {
    fn lane(&mut self, lane: usize) -> &mut VecDeque<MsgId> {
        if self.lanes.len() <= lane {
            self.lanes.resize_with(lane + 1, VecDeque::new);
        }
        &mut self.lanes[lane]
    }

    fn push_back(&mut self, lane: usize, id: MsgId) {
        let q = self.lane(lane);
        let was_empty = q.is_empty();
        q.push_back(id);
        if was_empty {
            self.turn.push_back(lane);
        }
        self.len += 1;
    }

    /// Puts `id` first in its lane and its lane first in turn (messages
    /// coming back from a closed link go out before newer ones).
    fn push_front(&mut self, lane: usize, id: MsgId) {
        let q = self.lane(lane);
        let was_empty = q.is_empty();
        q.push_front(id);
        if was_empty {
            self.turn.push_front(lane);
        } else if let Some(pos) = self.turn.iter().position(|l| *l == lane) {
            if pos != 0 {
                self.turn.remove(pos);
                self.turn.push_front(lane);
            }
        }
        self.len += 1;
    }

    fn pop(&mut self) -> Option<MsgId> {
        let lane = self.turn.pop_front()?;
        let q = &mut self.lanes[lane];
        let id = q.pop_front();
        if !q.is_empty() {
            self.turn.push_back(lane);
        }
        self.len -= usize::from(id.is_some());
        id
    }
}

/// Whether the disk may hold rows not in memory, and how far memory got.
/// Used for queued messages (items: [`Msg`]) and for each session's outbox
/// (items: lines).
///
/// Rows committed while a read is in flight are held here rather than
/// dropped: the read may or may not return them (it sees what was durable
/// when it ran), so when it comes back short of its limit, the held rows it
/// did not return are appended after it, in order, and memory is complete
/// again. Without that, a busy session would never get back from disk:
/// every read would race with new commits.
#[derive(Debug)]
pub(crate) struct Paging<T> {
    /// Rows beyond `max_loaded` may be on disk only.
    pub(crate) spilled: bool,
    /// Highest key taken into memory.
    pub(crate) max_loaded: u64,
    /// A read is in flight.
    pub(crate) reading: bool,
    /// Rows committed while the read is in flight.
    held: Vec<(u64, T)>,
    /// More rows were committed during the read than may be held.
    overflow: bool,
    /// At most this many rows are held.
    hold_max: usize,
    /// After a failed read, no new one before this.
    pub(crate) retry_at: Millis,
}

impl<T> Paging<T> {
    /// Paging state at start (`spilled`: the disk holds rows, read on
    /// first use); at most `hold_max` rows are held during a read.
    pub(crate) fn new(spilled: bool, hold_max: usize) -> Paging<T> {
        Paging {
            spilled,
            max_loaded: 0,
            reading: false,
            held: Vec::new(),
            overflow: false,
            hold_max,
            retry_at: 0,
        }
    }

    /// A row with `key` was committed: `Some(item)` when it goes into
    /// memory now (nothing on disk before it, and `room`); `None` when it
    /// stays on disk for a later read (or is held for the read in flight).
    pub(crate) fn admit(&mut self, key: u64, item: T, room: bool) -> Option<T> {
        if key <= self.max_loaded {
            return None;
        }
        if self.reading {
            if self.held.len() < self.hold_max {
                self.held.push((key, item));
            } else {
                self.overflow = true;
            }
            return None;
        }
        if self.spilled {
            return None;
        }
        if !room {
            self.spilled = true;
            return None;
        }
        self.max_loaded = key;
        Some(item)
    }

    /// Starts a read if one is due: returns the key to read after.
    pub(crate) fn start_read(&mut self, now: Millis) -> Option<u64> {
        if !self.spilled || self.reading || now < self.retry_at {
            return None;
        }
        self.reading = true;
        Some(self.max_loaded)
    }

    /// A read of at most `limit` rows returned `n`, the last with key
    /// `last`. Returns the held rows that follow it (to append, in order);
    /// after a full read they stay on disk for the next one.
    pub(crate) fn finish_read(
        &mut self,
        n: usize,
        limit: usize,
        last: Option<u64>,
    ) -> Vec<(u64, T)> {
        self.reading = false;
        if let Some(k) = last {
            self.max_loaded = self.max_loaded.max(k);
        }
        let held = std::mem::take(&mut self.held);
        if n >= limit || self.overflow {
            self.overflow = false;
            self.spilled = true;
            return Vec::new();
        }
        self.spilled = false;
        let mut out = Vec::with_capacity(held.len());
        for (k, item) in held {
            if k > self.max_loaded {
                self.max_loaded = k;
                out.push((k, item));
            }
        }
        out
    }

    /// Memory is full before `key`: it and what follows stay on disk.
    pub(crate) fn spill_before(&mut self, key: u64) {
        self.spilled = true;
        self.max_loaded = self.max_loaded.min(key.saturating_sub(1));
    }

    /// A read failed: try again after `retry_at`; what was held is on disk.
    pub(crate) fn read_failed(&mut self, retry_at: Millis) {
        self.reading = false;
        self.held.clear();
        self.overflow = false;
        self.retry_at = retry_at;
    }
}

/// Most rows held while a read is in flight (beyond that they stay on disk
/// and the next read gets them): enough for the commits of one read's
/// duration at full load, small next to the memory bound.
pub(crate) const HOLD_MAX: usize = 1024;

/// The queued downstream messages.
#[derive(Debug)]
pub(crate) struct Queue {
    msgs: IdMap<Msg>,
    ready: Ready,
    groups: HashMap<(Arc<str>, Arc<str>), GroupQ>,
    timers: BinaryHeap<Reverse<(Millis, MsgId)>>,
    target_backoff: HashMap<Arc<str>, Millis>,
    lanes: HashMap<Arc<str>, usize>,
    /// Queued rows on disk.
    pub(crate) paging: Paging<Msg>,
}

impl Queue {
    pub(crate) fn new(spilled: bool, mem_messages: usize) -> Queue {
        Queue {
            msgs: IdMap::default(),
            ready: Ready::default(),
            groups: HashMap::new(),
            timers: BinaryHeap::new(),
            target_backoff: HashMap::new(),
            lanes: HashMap::new(),
            paging: Paging::new(spilled, mem_messages.min(HOLD_MAX)),
        }
    }

    /// The round-robin lane of a session.
    pub(crate) fn lane_of(&mut self, session: &Arc<str>) -> usize {
        let n = self.lanes.len();
        *self.lanes.entry(session.clone()).or_insert(n)
    }

    /// Messages in memory.
    pub(crate) fn len(&self) -> usize {
        self.msgs.len()
    }

    pub(crate) fn get(&self, id: MsgId) -> Option<&Msg> {
        self.msgs.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: MsgId) -> Option<&mut Msg> {
        self.msgs.get_mut(&id)
    }

    /// Takes a message into memory: runnable now, after `not_before`, or
    /// behind its group's active message.
    pub(crate) fn insert(
        &mut self,
        id: MsgId,
        mut m: Msg,
        not_before: Option<Millis>,
        now: Millis,
    ) {
        let mut runnable = true;
        if let Some(g) = &m.group {
            let q = self
                .groups
                .entry((m.session.clone(), g.clone()))
                .or_default();
            if q.active.is_none() {
                q.active = Some(id);
            } else {
                q.waiting.push_back(id);
                runnable = false;
            }
        }
        m.state = MsgState::Queued;
        if runnable {
            match not_before {
                Some(t) if t > now => {
                    m.state = MsgState::Waiting;
                    self.timers.push(Reverse((t, id)));
                }
                _ => self.ready.push_back(m.lane, id),
            }
        }
        self.msgs.insert(id, m);
    }

    /// The next runnable message, or `None`. Entries of messages that
    /// left meanwhile are skipped.
    pub(crate) fn pop_ready(&mut self) -> Option<MsgId> {
        while let Some(id) = self.ready.pop() {
            if self
                .msgs
                .get(&id)
                .is_some_and(|m| m.state == MsgState::Queued)
            {
                return Some(id);
            }
        }
        None
    }

    /// Runnable messages (an upper bound: some may have left).
    pub(crate) fn ready_len(&self) -> usize {
        self.ready.len
    }

    /// Makes a message runnable again at the front (it came back from a
    /// link that closed, or was held back this turn).
    pub(crate) fn requeue_front(&mut self, id: MsgId) {
        if let Some(m) = self.msgs.get_mut(&id) {
            m.state = MsgState::Queued;
            self.ready.push_front(m.lane, id);
        }
    }

    /// Holds a message until `at`.
    pub(crate) fn wait_until(&mut self, id: MsgId, at: Millis) {
        if let Some(m) = self.msgs.get_mut(&id) {
            m.state = MsgState::Waiting;
            self.timers.push(Reverse((at, id)));
        }
    }

    /// Backs off every message to `target` until `until`.
    pub(crate) fn backoff_target(&mut self, target: &Arc<str>, until: Millis) {
        let e = self.target_backoff.entry(target.clone()).or_insert(until);
        *e = (*e).max(until);
    }

    /// Until when `target` is backed off, if it is.
    pub(crate) fn target_blocked(&self, target: &str, now: Millis) -> Option<Millis> {
        if self.target_backoff.is_empty() {
            return None;
        }
        self.target_backoff
            .get(target)
            .copied()
            .filter(|t| *t > now)
    }

    /// Removes a message (it has its final result); the next message of its
    /// group becomes runnable.
    pub(crate) fn remove(&mut self, id: MsgId) -> Option<Msg> {
        let m = self.msgs.remove(&id)?;
        if let Some(g) = &m.group {
            let key = (m.session.clone(), g.clone());
            if let Some(q) = self.groups.get_mut(&key) {
                if q.active == Some(id) {
                    q.active = None;
                    while let Some(next) = q.waiting.pop_front() {
                        if let Some(n) = self.msgs.get(&next) {
                            q.active = Some(next);
                            self.ready.push_back(n.lane, next);
                            break;
                        }
                    }
                } else {
                    q.waiting.retain(|x| *x != id);
                }
                if q.active.is_none() && q.waiting.is_empty() {
                    self.groups.remove(&key);
                }
            }
        }
        Some(m)
    }

    /// Makes the messages whose timers are due runnable; forgets target
    /// backoffs that ended.
    pub(crate) fn due(&mut self, now: Millis) {
        while let Some(Reverse((t, id))) = self.timers.peek().copied() {
            if t > now {
                break;
            }
            self.timers.pop();
            if let Some(m) = self.msgs.get_mut(&id) {
                if m.state == MsgState::Waiting {
                    m.state = MsgState::Queued;
                    self.ready.push_back(m.lane, id);
                }
            }
        }
        if !self.target_backoff.is_empty() {
            self.target_backoff.retain(|_, until| *until > now);
        }
    }

    /// The earliest timer.
    pub(crate) fn next_timer(&self) -> Option<Millis> {
        self.timers.peek().map(|Reverse((t, _))| *t)
    }

    /// Messages not in flight whose time to live ran out.
    pub(crate) fn expired(&self, now: Millis) -> Vec<MsgId> {
        let mut v: Vec<MsgId> = self
            .msgs
            .iter()
            .filter(|(_, m)| !matches!(m.state, MsgState::InFlight(_)) && m.expires_at_ms < now)
            .map(|(id, _)| *id)
            .collect();
        v.sort_unstable();
        v
    }

    /// Messages per session (for the admin API).
    pub(crate) fn per_session(&self) -> HashMap<Arc<str>, usize> {
        let mut m: HashMap<Arc<str>, usize> = HashMap::new();
        for msg in self.msgs.values() {
            *m.entry(msg.session.clone()).or_default() += 1;
        }
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn msg(q: &mut Queue, session: &str, group: Option<&str>) -> Msg {
        let session: Arc<str> = Arc::from(session);
        Msg {
            lane: q.lane_of(&session),
            session,
            message_id: Arc::from("m"),
            group: group.map(Arc::from),
            body: Arc::from("{}"),
            attempts: 0,
            accepted_at_ms: 0,
            expires_at_ms: 1_000,
            receipt: false,
            target: Arc::from("t"),
            state: MsgState::Queued,
        }
    }

    #[test]
    fn sessions_take_turns() {
        let mut q = Queue::new(false, 100);
        for id in 1..=5 {
            let m = msg(&mut q, "flood", None);
            q.insert(id, m, None, 0);
        }
        let m = msg(&mut q, "quiet", None);
        q.insert(10, m, None, 0);
        let m = msg(&mut q, "quiet", None);
        q.insert(11, m, None, 0);
        let order: Vec<MsgId> = std::iter::from_fn(|| q.pop_ready()).collect();
        assert_eq!(order, vec![1, 10, 2, 11, 3, 4, 5]);
    }

    #[test]
    fn groups_go_one_at_a_time() {
        let mut q = Queue::new(false, 100);
        for id in 1..=3 {
            let m = msg(&mut q, "s", Some("g"));
            q.insert(id, m, None, 0);
        }
        let m = msg(&mut q, "other", Some("g"));
        q.insert(4, m, None, 0);
        let first: Vec<MsgId> = std::iter::from_fn(|| q.pop_ready()).collect();
        assert_eq!(
            first,
            vec![1, 4],
            "same group name in another session is another group"
        );
        q.remove(1);
        assert_eq!(q.pop_ready(), Some(2));
        assert_eq!(q.pop_ready(), None);
        // Removing a waiting member keeps the order of the rest.
        q.remove(2);
        assert_eq!(q.pop_ready(), Some(3));
    }

    #[test]
    fn timers_and_target_backoff() {
        let mut q = Queue::new(false, 100);
        let m = msg(&mut q, "s", None);
        q.insert(1, m, Some(500), 0);
        assert_eq!(q.pop_ready(), None);
        assert_eq!(q.next_timer(), Some(500));
        q.due(499);
        assert_eq!(q.pop_ready(), None);
        q.due(500);
        assert_eq!(q.pop_ready(), Some(1));
        let t: Arc<str> = Arc::from("dev");
        q.backoff_target(&t, 300);
        q.backoff_target(&t, 200);
        assert_eq!(
            q.target_blocked("dev", 100),
            Some(300),
            "the later backoff wins"
        );
        assert_eq!(q.target_blocked("dev", 300), None);
        assert_eq!(q.target_blocked("other", 100), None);
    }

    #[test]
    fn paging_admits_in_order_and_holds_rows_during_reads() {
        let mut p: Paging<&str> = Paging::new(false, 10);
        assert_eq!(p.admit(1, "a", true), Some("a"));
        assert_eq!(p.admit(2, "b", false), None, "no room: stays on disk");
        assert!(p.spilled);
        assert_eq!(
            p.admit(3, "c", true),
            None,
            "after a spill, later rows stay on disk too"
        );
        assert_eq!(p.start_read(0), Some(1));
        assert_eq!(p.start_read(0), None, "one read at a time");
        // Committed while the read is in flight: held.
        assert_eq!(p.admit(4, "d", true), None);
        assert_eq!(p.admit(5, "e", true), None);
        // The read saw 2..=4 (4 was durable when it ran); 5 it did not see.
        assert_eq!(p.finish_read(3, 10, Some(4)), vec![(5, "e")]);
        assert!(!p.spilled, "memory is complete again");
        assert_eq!(p.admit(5, "e", true), None, "already loaded");
        assert_eq!(p.admit(6, "f", true), Some("f"));
        // A full read leaves the held rows on disk for the next one.
        p.spill_before(7);
        assert_eq!(p.max_loaded, 6);
        assert_eq!(p.start_read(0), Some(6));
        assert_eq!(p.admit(9, "i", true), None);
        assert!(p.finish_read(2, 2, Some(8)).is_empty());
        assert!(p.spilled);
        // Holding is bounded.
        let mut p: Paging<u64> = Paging::new(true, 2);
        p.start_read(0);
        for k in 1..=3 {
            p.admit(k, k, true);
        }
        assert!(
            p.finish_read(0, 10, None).is_empty(),
            "overflowed: read again"
        );
        assert!(p.spilled);
        let mut p: Paging<u64> = Paging::new(true, 2);
        assert_eq!(p.start_read(0), Some(0));
        p.admit(1, 1, true);
        p.read_failed(1_000);
        assert_eq!(p.start_read(999), None);
        assert_eq!(p.start_read(1_000), Some(0));
        assert!(
            p.finish_read(0, 10, None).is_empty(),
            "held rows of a failed read are on disk"
        );
    }
}
