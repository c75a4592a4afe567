//! The bundled Raft core.
//!
//! A pure state machine in the shape of etcd-raft's `RawNode`: it does no network or disk I/O
//! and starts no threads. The application drives it and does all I/O itself.
//!
//! # Structure
//!
//! The parts depend one way, each only on those before it:
//!
//! - [`quorum`]: arithmetic on indices and votes for majority and joint configurations;
//!   imports nothing else from `raft/`.
//! - [`tracker`]: per-peer [`tracker::Progress`] (Probe / Replicate / Snapshot, inflight
//!   window) and the [`tracker::ProgressTracker`] holding the configuration.
//! - [`confchange`]: computes the configuration a membership change produces.
//! - [`message`]: the wire types and their encoding (a leaf; used by the layers above).

pub mod confchange;
pub mod log;
pub mod message;
pub mod quorum;
pub mod tracker;

pub use message::{
    AnyConfChange, ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType,
    ConfChangeV2, Message, MessageType, ReadState, SnapshotStatus, SoftState, StateRole,
};
pub mod config;
pub mod core;
pub mod raw_node;
pub mod read_only;

pub use config::{Config, ReadOnlyOption};
pub use raw_node::{RawNode, Ready, Status};
