//! The bundled Raft core.
//!
//! A pure state machine in the shape of etcd-raft's `RawNode`: it does no network or disk I/O,
//! reads no clock and starts no threads. The application drives it with [`RawNode::tick`],
//! [`RawNode::step`] and [`RawNode::propose`], and [`RawNode::ready`] hands back a [`Ready`]:
//! what to persist, what to send and what to apply. The log is read through the crate's
//! [`Storage`](crate::Storage) trait, so the same core runs on `MemoryStorage` in tests and on a
//! durable storage in production.
//!
//! # Structure
//!
//! The parts depend one way, each only on those listed before it:
//!
//! - [`quorum`]: arithmetic on acknowledged indices and votes for majority and joint
//!   configurations; imports nothing else from `raft/`.
//! - [`tracker`]: per-peer [`tracker::Progress`] (Probe / Replicate / Snapshot, bounded
//!   inflight window) and the [`tracker::ProgressTracker`] holding the configuration.
//! - [`confchange`]: computes the configuration a membership change produces, on a copy.
//! - [`message`]: the wire types and their encoding (data only; used by the layers above).
//! - [`log`]: [`log::RaftLog`], the stable log in `Storage` plus the unstable tail.
//! - [`read_only`]: reads waiting for a heartbeat quorum.
//! - [`core`]: [`core::Raft`], the state machine: elections, replication, snapshots,
//!   membership, leadership transfer, reads.
//! - [`raw_node`]: [`RawNode`], [`Ready`] and [`Status`], the application's interface;
//!   [`config`]: [`Config`].
//! - [`multi`]: [`MultiRaft`], many groups of one node on one `LogEngine`: one ready cycle
//!   and one sync for all of them, heartbeats coalesced per node, idle groups quiesced.
//!
//! # Driving a node
//!
//! ```
//! use std::sync::Arc;
//! use bytes::Bytes;
//! use raftwal::raft::{ConfChange, Config, RawNode, StateRole};
//! use raftwal::{EntryType, MemoryStorage};
//!
//! /// Handles every Ready: the loop an application runs after each tick, step or propose.
//! fn drive(
//!     node: &mut RawNode<Arc<MemoryStorage>>,
//!     storage: &MemoryStorage,
//!     applied: &mut Vec<Bytes>,
//! ) -> raftwal::Result<()> {
//!     while node.has_ready() {
//!         let rd = node.ready();
//!         // 1. Persist: snapshot, entries, hard state (fsync if rd.must_sync).
//!         if let Some(s) = &rd.snapshot {
//!             storage.apply_snapshot(s.clone())?;
//!         }
//!         storage.append(&rd.entries)?;
//!         if let Some(hs) = rd.hard_state {
//!             storage.set_hard_state(hs)?;
//!         }
//!         // 2. Only now send rd.messages to their peers (none in a one-node cluster).
//!         assert!(rd.messages.is_empty());
//!         // 3. Apply committed entries; membership entries go through apply_conf_change.
//!         for e in &rd.committed_entries {
//!             match e.entry_type {
//!                 EntryType::ConfChange => {
//!                     node.apply_conf_change(ConfChange::decode(&e.data)?);
//!                 }
//!                 _ if !e.data.is_empty() => applied.push(e.data.clone()),
//!                 _ => {} // a new leader's empty entry
//!             }
//!         }
//!         // 4. Acknowledge.
//!         node.advance(rd);
//!     }
//!     Ok(())
//! }
//!
//! # fn main() -> raftwal::Result<()> {
//! let storage = Arc::new(MemoryStorage::new());
//! let mut node = RawNode::new(&Config::new(1), storage.clone())?;
//! let mut applied = Vec::new();
//! node.bootstrap([1u64])?; // a new one-node cluster
//! drive(&mut node, &storage, &mut applied)?;
//! node.campaign()?;
//! drive(&mut node, &storage, &mut applied)?;
//! assert_eq!(node.status().soft_state.raft_state, StateRole::Leader);
//! node.propose(&b"hello"[..])?;
//! drive(&mut node, &storage, &mut applied)?;
//! assert_eq!(applied, vec![Bytes::from("hello")]);
//! # Ok(())
//! # }
//! ```
//!
//! Messages that acknowledge log entries or grant votes are in the same `Ready` as the state
//! they acknowledge; the contract that messages go out only after that `Ready` is persisted
//! is what makes them safe (etcd-raft's synchronous-storage mode).

pub mod confchange;
pub mod config;
pub mod core;
pub mod log;
pub mod message;
pub mod multi;
pub mod quorum;
pub mod raw_node;
pub mod read_only;
pub mod tracker;

pub use config::{Config, ReadOnlyOption};
pub use message::{
    AnyConfChange, ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType,
    ConfChangeV2, Message, MessageType, ReadState, SnapshotStatus, SoftState, StateRole,
};
pub use multi::{
    Batch, GroupFactory, GroupReady, GroupStatus, Heartbeat, HeartbeatResp, MultiRaft, MultiReady,
    MultiStats,
};
pub use raw_node::{Payload, RawNode, Ready, Status};
