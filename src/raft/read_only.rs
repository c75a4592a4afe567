//! Pending linearizable reads on the leader, waiting for a quorum of heartbeat
//! acknowledgements that confirm it is still the leader.
//!
//! Reads are numbered in arrival order within the leader's term (1, 2, ...). A heartbeat
//! carries the number of the newest read queued when it was sent, as 8 little-endian bytes,
//! and the follower echoes it. An acknowledgement of number `n` therefore proves the follower
//! still followed this leader after reads 1..=n arrived, and a read is released once a quorum
//! acknowledged its number or a higher one. The caller's context plays no part: two reads
//! with the same context (two clients, or a duplicated request) are two reads, and an
//! acknowledgement of an earlier round never confirms a read queued after that round was sent.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use super::message::Message;
use super::quorum::JointConfig;

/// Limit on reads waiting for confirmation; more are refused so a stalled quorum cannot make
/// the leader buffer requests without bound.
pub const MAX_PENDING_READS: usize = 4096;

/// Bytes of a heartbeat context that carries a read number.
const ROUND_CONTEXT_BYTES: usize = std::mem::size_of::<u64>();

/// A read waiting for confirmation.
#[derive(Clone, Debug)]
pub struct ReadIndexStatus {
    /// The request (its first entry's data is the caller's context).
    pub req: Message,
    /// The commit index when the request arrived: the read may be served once applied.
    pub index: u64,
}

/// Reads in arrival order, and the highest read number each peer acknowledged.
#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    // Reads not yet confirmed, oldest first; `unconfirmed[k]` has number `confirmed + k + 1`.
    // Invariant: len <= MAX_PENDING_READS.
    unconfirmed: VecDeque<ReadIndexStatus>,
    // Reads of this term already confirmed (numbers 1..=confirmed).
    confirmed: u64,
    // The highest read number each peer acknowledged; one entry per peer that was a member
    // during this term (the leader passes only members' acknowledgements), cleared with the
    // term. Invariant: every value <= confirmed + unconfirmed.len() (the newest number sent).
    acks: BTreeMap<u64, u64>,
}

impl ReadOnly {
    /// Records a read at commit index `index`; returns false if it was refused (the queue is
    /// full).
    pub fn add_request(&mut self, index: u64, req: Message) -> bool {
        if self.unconfirmed.len() >= MAX_PENDING_READS {
            return false;
        }
        self.unconfirmed.push_back(ReadIndexStatus { req, index });
        true
    }

    /// The number of the newest read, or 0 when none has arrived this term.
    fn newest(&self) -> u64 {
        self.confirmed + self.unconfirmed.len() as u64
    }

    /// The context a heartbeat sent now carries: the number of the newest waiting read, or
    /// nothing when no read waits.
    pub fn heartbeat_ctx(&self) -> Bytes {
        if self.unconfirmed.is_empty() {
            return Bytes::new();
        }
        Bytes::copy_from_slice(&self.newest().to_le_bytes())
    }

    /// Records `id`'s acknowledgement of a heartbeat that carried `ctx`. A context this
    /// leader did not send (wrong length, or a number above the newest read) is ignored:
    /// it confirms nothing.
    pub fn recv_ack(&mut self, id: u64, ctx: &[u8]) {
        let Ok(bytes) = <[u8; ROUND_CONTEXT_BYTES]>::try_from(ctx) else {
            return;
        };
        let n = u64::from_le_bytes(bytes);
        if n > self.newest() {
            return;
        }
        let acked = self.acks.entry(id).or_insert(0);
        *acked = (*acked).max(n);
    }

    /// Removes and returns, oldest first, every read whose number a quorum of `voters` has
    /// acknowledged.
    pub fn maybe_advance(&mut self, voters: &JointConfig) -> Vec<ReadIndexStatus> {
        let acks = &self.acks;
        // An empty configuration answers u64::MAX; no more than the reads sent can be released.
        let quorum = voters.committed_index(&|id| acks.get(&id).copied()).min(self.newest());
        if quorum <= self.confirmed {
            return Vec::new();
        }
        let released = (quorum - self.confirmed) as usize;
        self.confirmed = quorum;
        let out: Vec<ReadIndexStatus> = self.unconfirmed.drain(..released).collect();
        debug_assert!(self.acks.values().all(|n| *n <= self.newest()));
        out
    }

    /// Reads waiting.
    pub fn pending_count(&self) -> usize {
        self.unconfirmed.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Entry;
    use std::collections::BTreeSet;

    fn read(ctx: &'static [u8]) -> Message {
        Message {
            entries: vec![Entry { data: Bytes::from_static(ctx), ..Entry::default() }],
            ..Message::default()
        }
    }

    fn voters(ids: &[u64]) -> JointConfig {
        JointConfig::new(ids.iter().copied().collect::<BTreeSet<u64>>())
    }

    fn ctx_of(n: u64) -> Bytes {
        Bytes::copy_from_slice(&n.to_le_bytes())
    }

    #[test]
    fn rounds_are_numbered_by_the_newest_read() {
        let mut ro = ReadOnly::default();
        assert!(ro.heartbeat_ctx().is_empty(), "no read, no context");
        assert!(ro.add_request(5, read(b"a")));
        assert_eq!(ro.heartbeat_ctx(), ctx_of(1));
        assert!(ro.add_request(5, read(b"a")), "the same context is another read");
        assert_eq!(ro.heartbeat_ctx(), ctx_of(2));
        assert_eq!(ro.pending_count(), 2);
    }

    #[test]
    fn a_quorum_of_acks_releases_the_reads_up_to_its_number() {
        let cfg = voters(&[1, 2, 3]);
        let mut ro = ReadOnly::default();
        ro.add_request(5, read(b"a"));
        ro.recv_ack(1, &ro.heartbeat_ctx());
        ro.add_request(6, read(b"b"));
        ro.recv_ack(1, &ro.heartbeat_ctx());
        assert!(ro.maybe_advance(&cfg).is_empty(), "the leader alone is no quorum");
        // 2 acknowledges the round sent after the first read only.
        ro.recv_ack(2, &ctx_of(1));
        let out = ro.maybe_advance(&cfg);
        assert_eq!(out.iter().map(|r| r.index).collect::<Vec<_>>(), vec![5]);
        assert_eq!(ro.pending_count(), 1);
        // A third read; acks of the second round cannot release it.
        ro.add_request(7, read(b"c"));
        ro.recv_ack(1, &ro.heartbeat_ctx());
        ro.recv_ack(3, &ctx_of(2));
        let out = ro.maybe_advance(&cfg);
        assert_eq!(out.iter().map(|r| r.index).collect::<Vec<_>>(), vec![6]);
        ro.recv_ack(2, &ctx_of(2));
        assert!(ro.maybe_advance(&cfg).is_empty(), "read 3 needs a round sent after it");
        ro.recv_ack(2, &ctx_of(3));
        let out = ro.maybe_advance(&cfg);
        assert_eq!(out.iter().map(|r| r.index).collect::<Vec<_>>(), vec![7]);
        assert_eq!(ro.pending_count(), 0);
        assert!(ro.heartbeat_ctx().is_empty());
    }

    #[test]
    fn acks_of_contexts_never_sent_are_ignored() {
        let cfg = voters(&[1, 2, 3]);
        let mut ro = ReadOnly::default();
        ro.add_request(5, read(b"a"));
        ro.recv_ack(1, &ro.heartbeat_ctx());
        for bogus in [&b""[..], b"a", b"abcdefghi", &u64::MAX.to_le_bytes(), &2u64.to_le_bytes()] {
            ro.recv_ack(2, bogus);
            ro.recv_ack(3, bogus);
            assert!(ro.maybe_advance(&cfg).is_empty(), "{bogus:?}");
        }
        ro.recv_ack(3, &ctx_of(1));
        assert_eq!(ro.maybe_advance(&cfg).len(), 1);
    }

    #[test]
    fn an_empty_configuration_releases_only_reads_that_exist() {
        let mut ro = ReadOnly::default();
        ro.add_request(5, read(b"a"));
        assert_eq!(ro.maybe_advance(&JointConfig::default()).len(), 1);
        assert!(ro.maybe_advance(&JointConfig::default()).is_empty());
    }

    #[test]
    fn the_queue_is_bounded() {
        let mut ro = ReadOnly::default();
        for _ in 0..MAX_PENDING_READS {
            assert!(ro.add_request(1, read(b"x")));
        }
        assert!(!ro.add_request(1, read(b"x")), "one more is refused");
        assert_eq!(ro.pending_count(), MAX_PENDING_READS);
    }
}
