//! BAL sessions' outboxes (SPEC §3.1, §3.3): the sequenced messages waiting
//! for each session, the window of at most `max_unacked` sent and not yet
//! ACKed, takeover, and paging of long outboxes from disk.
//!
//! A sequenced line enters a session's queue only once its batch is
//! committed; it moves to `inflight` when written to the session's
//! connection and leaves when the BAL ACKs it (or goes back to the front of
//! the queue when the connection goes away: redelivered with the same
//! sequence id). Beyond `mem_outbox` lines per session the outbox stays on
//! disk and is read back in sequence order.

use super::queue::Paging;
use super::{ConnId, Millis, Output, SessionInfo};
use crate::session::out::Out;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

/// Most lines one outbox read returns. Pages smaller than the memory bound
/// keep each read's transient allocation small (reads run on another
/// thread, whose allocator arena keeps what it once held).
const OUTBOX_PAGE: usize = 2048;

/// One session's outbox.
#[derive(Debug)]
pub(crate) struct SessionState {
    /// The logged-on connection, if any.
    pub(crate) conn: Option<ConnId>,
    /// Committed lines not yet written to a connection, in sequence order.
    queue: VecDeque<(u64, Arc<str>)>,
    /// Written, not yet ACKed.
    inflight: BTreeMap<u64, Arc<str>>,
    /// Lines on disk only.
    paging: Paging<Arc<str>>,
}

impl SessionState {
    /// `on_disk`: the store holds lines for it (read on first use).
    fn new(on_disk: bool, mem_outbox: usize) -> SessionState {
        SessionState {
            conn: None,
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            paging: Paging::new(on_disk, mem_outbox.min(super::queue::HOLD_MAX)),
        }
    }

    /// Unacked lines go back to the front of the queue (redelivered with
    /// their sequence ids).
    fn take_back(&mut self) {
        let back = std::mem::take(&mut self.inflight);
        for item in back.into_iter().rev() {
            self.queue.push_front(item);
        }
    }
}

/// What an ACK named.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Acked {
    /// An outstanding sequenced line: now done.
    Known,
    /// Nothing outstanding has this sequence id.
    Unknown,
}

/// All sessions' outboxes.
#[derive(Debug)]
pub(crate) struct Sessions {
    map: HashMap<Arc<str>, SessionState>,
    max_unacked: usize,
    mem_outbox: usize,
}

impl Sessions {
    pub(crate) fn new(
        configured: &[String],
        with_outbox: &[(String, u64)],
        max_unacked: usize,
        mem_outbox: usize,
    ) -> Sessions {
        let mem_outbox = mem_outbox.max(1);
        let mut map = HashMap::new();
        for (s, n) in with_outbox {
            map.insert(Arc::from(s.as_str()), SessionState::new(*n > 0, mem_outbox));
        }
        for s in configured {
            map.entry(Arc::from(s.as_str()))
                .or_insert_with(|| SessionState::new(false, mem_outbox));
        }
        Sessions {
            map,
            max_unacked: max_unacked.max(1),
            mem_outbox,
        }
    }

    /// The interned id of a known session.
    pub(crate) fn key(&self, session: &str) -> Option<Arc<str>> {
        self.map.get_key_value(session).map(|(k, _)| k.clone())
    }

    /// The connection logged on to `session`, if any.
    pub(crate) fn conn(&self, session: &str) -> Option<ConnId> {
        self.map.get(session).and_then(|s| s.conn)
    }

    /// `conn` logged on to `session`: returns the connection it took over.
    pub(crate) fn attach(&mut self, session: &Arc<str>, conn: ConnId) -> Option<ConnId> {
        let mem_outbox = self.mem_outbox;
        let st = self
            .map
            .entry(session.clone())
            .or_insert_with(|| SessionState::new(false, mem_outbox));
        let old = st.conn.replace(conn);
        st.take_back();
        old
    }

    /// `conn` went away; false if it was not (or no longer) the session's.
    pub(crate) fn detach(&mut self, session: &str, conn: ConnId) -> bool {
        match self.map.get_mut(session) {
            Some(st) if st.conn == Some(conn) => {
                st.conn = None;
                st.take_back();
                true
            }
            _ => false,
        }
    }

    /// The BAL ACKed `seq`.
    pub(crate) fn ack(&mut self, session: &str, seq: u64) -> Acked {
        let Some(st) = self.map.get_mut(session) else {
            return Acked::Unknown;
        };
        if st.inflight.remove(&seq).is_some() {
            return Acked::Known;
        }
        match st.queue.iter().position(|(s, _)| *s == seq) {
            Some(pos) => {
                st.queue.remove(pos);
                Acked::Known
            }
            None => Acked::Unknown,
        }
    }

    /// A sequenced line's batch is committed: it joins the session's queue
    /// unless the outbox is (or now goes) on disk.
    pub(crate) fn committed(&mut self, session: &Arc<str>, seq: u64, line: Arc<str>) {
        let limit = self.mem_outbox;
        let st = self
            .map
            .entry(session.clone())
            .or_insert_with(|| SessionState::new(false, limit));
        let room = st.queue.len() < limit;
        if let Some(line) = st.paging.admit(seq, line, room) {
            st.queue.push_back((seq, line));
        }
    }

    /// Writes what the session's window allows to its connection; asks for
    /// the next page while more is on disk and the queue runs low (before it
    /// runs dry, so the BAL is not kept waiting for the read).
    /// Returns how many lines it wrote.
    pub(crate) fn pump(&mut self, session: &Arc<str>, now: Millis, out: &mut Vec<Output>) -> u64 {
        let max = self.max_unacked;
        let mem = self.mem_outbox;
        let Some(st) = self.map.get_mut(session) else {
            return 0;
        };
        let Some(conn) = st.conn else { return 0 };
        let mut written = 0;
        while st.inflight.len() < max {
            let Some((seq, line)) = st.queue.pop_front() else {
                break;
            };
            out.push(Output::Write {
                conn,
                out: Out::Line(line.clone()),
            });
            st.inflight.insert(seq, line);
            written += 1;
        }
        let page = mem.min(OUTBOX_PAGE);
        if st.queue.len() <= page / 2 {
            if let Some(after) = st.paging.start_read(now) {
                out.push(Output::LoadOutbox {
                    session: session.clone(),
                    after,
                    limit: page.min(mem - st.queue.len()),
                });
            }
        }
        written
    }

    /// A page of the outbox was read (`limit` asked).
    pub(crate) fn page_loaded(
        &mut self,
        session: &Arc<str>,
        rows: Vec<store::OutboxRow>,
        limit: usize,
    ) {
        let Some(st) = self.map.get_mut(session) else {
            return;
        };
        let n = rows.len();
        let mut last = None;
        for r in rows {
            last = Some(r.seq);
            // Rows already in memory (an earlier page) are not taken twice.
            if r.seq > st.paging.max_loaded {
                st.queue.push_back((r.seq, Arc::from(r.body)));
            }
        }
        // Lines committed during the read that it did not return follow
        // it, while memory has room; the rest stays on disk.
        for (seq, line) in st.paging.finish_read(n, limit, last) {
            if st.queue.len() >= limit {
                st.paging.spill_before(seq);
                break;
            }
            st.queue.push_back((seq, line));
        }
    }

    /// A page read failed: retried after `retry_at`.
    pub(crate) fn page_failed(&mut self, session: &str, retry_at: Millis) {
        if let Some(st) = self.map.get_mut(session) {
            st.paging.read_failed(retry_at);
        }
    }

    /// Sequenced lines committed for logged-on sessions and not yet written
    /// to them (waiting for the window, or on disk).
    pub(crate) fn unwritten(&self) -> usize {
        self.map
            .values()
            .filter(|s| s.conn.is_some())
            .map(|s| s.queue.len() + usize::from(s.paging.spilled))
            .sum()
    }

    /// Sessions with a logged-on connection.
    pub(crate) fn connected(&self) -> usize {
        self.map.values().filter(|s| s.conn.is_some()).count()
    }

    /// Every connection logged on (for shutdown).
    pub(crate) fn conns(&self) -> Vec<ConnId> {
        self.map.values().filter_map(|s| s.conn).collect()
    }

    /// Session ids, for pumping all.
    pub(crate) fn ids(&self) -> Vec<Arc<str>> {
        self.map.keys().cloned().collect()
    }

    /// For the admin API, sorted by session id; `downstream` counts each
    /// session's messages in memory.
    pub(crate) fn info(&self, downstream: &HashMap<Arc<str>, usize>) -> Vec<SessionInfo> {
        let mut v: Vec<SessionInfo> = self
            .map
            .iter()
            .map(|(k, s)| SessionInfo {
                session_id: k.to_string(),
                connected: s.conn.is_some(),
                queued: s.queue.len(),
                unacked: s.inflight.len(),
                spilled: s.paging.spilled,
                downstream_in_memory: downstream.get(k).copied().unwrap_or(0),
            })
            .collect();
        v.sort_by(|a, b| a.session_id.cmp(&b.session_id));
        v
    }
}
