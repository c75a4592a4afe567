//! Pending linearizable reads on the leader, waiting for a quorum of heartbeat
//! acknowledgements that confirm it is still the leader.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use super::message::Message;

/// Limit on reads waiting for confirmation; more are refused so a stalled quorum cannot make
/// the leader buffer requests without bound.
pub const MAX_PENDING_READS: usize = 4096;

/// A read waiting for confirmation.
#[derive(Clone, Debug)]
pub struct ReadIndexStatus {
    /// The request (its first entry's data is the context).
    pub req: Message,
    /// The commit index when the request arrived: the read may be served once applied.
    pub index: u64,
    /// Voters that acknowledged a heartbeat carrying this context.
    pub acks: BTreeSet<u64>,
}

/// Reads in arrival order, keyed by context.
#[derive(Clone, Debug, Default)]
pub struct ReadOnly {
    pending: BTreeMap<Bytes, ReadIndexStatus>,
    // Invariant: holds exactly the keys of `pending`, in arrival order.
    queue: VecDeque<Bytes>,
}

impl ReadOnly {
    /// Records a read at commit index `index`; returns false if it was refused (the queue is
    /// full). A context already pending is not added twice.
    pub fn add_request(&mut self, index: u64, req: Message) -> bool {
        let ctx = req.entries[0].data.clone();
        if self.pending.contains_key(&ctx) {
            return true;
        }
        if self.queue.len() >= MAX_PENDING_READS {
            return false;
        }
        self.pending.insert(ctx.clone(), ReadIndexStatus { req, index, acks: BTreeSet::new() });
        self.queue.push_back(ctx);
        true
    }

    /// Records `id`'s acknowledgement of `ctx`; returns the acknowledgements so far.
    pub fn recv_ack(&mut self, id: u64, ctx: &[u8]) -> Option<&BTreeSet<u64>> {
        let status = self.pending.get_mut(ctx)?;
        status.acks.insert(id);
        Some(&status.acks)
    }

    /// Removes and returns every read up to and including the one with `ctx`: a quorum
    /// confirmed leadership after all of them arrived.
    pub fn advance(&mut self, ctx: &[u8]) -> Vec<ReadIndexStatus> {
        let Some(pos) = self.queue.iter().position(|c| c.as_ref() == ctx) else {
            return Vec::new();
        };
        self.queue
            .drain(..=pos)
            .map(|c| self.pending.remove(&c).expect("queued read is pending"))
            .collect()
    }

    /// The context of the newest pending read, to carry on heartbeats.
    pub fn last_pending_request_ctx(&self) -> Option<Bytes> {
        self.queue.back().cloned()
    }

    /// Reads waiting.
    pub fn pending_count(&self) -> usize {
        self.queue.len()
    }
}
