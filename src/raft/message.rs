//! The messages Raft peers exchange, the membership-change requests that travel as entry data,
//! and the small status types a `Ready` carries; with their compact binary encoding.
//!
//! Encoding (every integer little-endian, through [`crate::codec`]):
//!
//! | item | layout |
//! |---|---|
//! | `Message` | version u8 (1) · type u8 · to, from, term, log_term, index, commit, reject_hint u64 · reject u8 · context (len u32, bytes) · entries (count u32, each an encoded `Entry`) · snapshot flag u8 (0 none, 1 present) · [`SnapshotMetadata`, data (len u32, bytes)] |
//! | `ConfChange` | version u8 (1) · type u8 · node_id u64 · context (len u32, bytes) |
//! | `ConfChangeV2` | version u8 (1) · transition u8 · count u32 · count × (type u8, node_id u64) · context (len u32, bytes) |
//!
//! Decoding checks every length and count against the bytes left, so arbitrary input gives an
//! error, never a panic and never an allocation larger than the input.

use bytes::Bytes;

use crate::codec::{self, DecodeError, Decoder, put_u32, put_u64};
use crate::error::Result;
use crate::types::{Entry, Snapshot};

/// Version byte leading every encoding in this module.
const FORMAT_VERSION: u8 = 1;

/// What a message asks or answers. Local messages (`MsgHup`, `MsgBeat`, `MsgUnreachable`,
/// `MsgSnapStatus`, `MsgCheckQuorum`) never cross the network.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum MessageType {
    /// Local: start an election.
    #[default]
    MsgHup,
    /// Local: the leader should send heartbeats.
    MsgBeat,
    /// A proposal of entries, to the leader (possibly forwarded by a follower).
    MsgProp,
    /// Entries to append after (`index`, `log_term`), with the leader's commit index.
    MsgApp,
    /// Answer to `MsgApp` or `MsgSnap`: accepted up to `index`, or rejected with a hint.
    MsgAppResp,
    /// A request for a vote.
    MsgVote,
    /// Answer to `MsgVote`.
    MsgVoteResp,
    /// A snapshot for a follower that needs compacted entries.
    MsgSnap,
    /// The leader's heartbeat, carrying its commit index (bounded by the follower's match).
    MsgHeartbeat,
    /// Answer to `MsgHeartbeat`.
    MsgHeartbeatResp,
    /// Local: a peer could not be reached.
    MsgUnreachable,
    /// Local: how sending a snapshot went.
    MsgSnapStatus,
    /// Local: the leader should check that a quorum is still active.
    MsgCheckQuorum,
    /// A request to transfer leadership to `from`.
    MsgTransferLeader,
    /// From the leader to the transfer target: campaign now, ignoring the election timeout.
    MsgTimeoutNow,
    /// A linearizable read request, identified by the entries' first data (the context).
    MsgReadIndex,
    /// Answer to `MsgReadIndex`: reads may be served once `index` is applied.
    MsgReadIndexResp,
    /// A pre-vote request: would you vote for me in `term`?
    MsgPreVote,
    /// Answer to `MsgPreVote`.
    MsgPreVoteResp,
}

const MESSAGE_TYPES: [MessageType; 19] = [
    MessageType::MsgHup,
    MessageType::MsgBeat,
    MessageType::MsgProp,
    MessageType::MsgApp,
    MessageType::MsgAppResp,
    MessageType::MsgVote,
    MessageType::MsgVoteResp,
    MessageType::MsgSnap,
    MessageType::MsgHeartbeat,
    MessageType::MsgHeartbeatResp,
    MessageType::MsgUnreachable,
    MessageType::MsgSnapStatus,
    MessageType::MsgCheckQuorum,
    MessageType::MsgTransferLeader,
    MessageType::MsgTimeoutNow,
    MessageType::MsgReadIndex,
    MessageType::MsgReadIndexResp,
    MessageType::MsgPreVote,
    MessageType::MsgPreVoteResp,
];

impl MessageType {
    /// The byte that stands for this type on the wire.
    pub fn to_u8(self) -> u8 {
        MESSAGE_TYPES.iter().position(|t| *t == self).expect("every message type is listed") as u8
    }

    /// The type a byte stands for.
    pub fn from_u8(byte: u8) -> Option<MessageType> {
        MESSAGE_TYPES.get(byte as usize).copied()
    }

    /// Whether the message is generated and consumed inside one node.
    pub fn is_local(self) -> bool {
        matches!(
            self,
            MessageType::MsgHup
                | MessageType::MsgBeat
                | MessageType::MsgUnreachable
                | MessageType::MsgSnapStatus
                | MessageType::MsgCheckQuorum
        )
    }

    /// Whether the message answers a request (and so must come from a known peer).
    pub fn is_response(self) -> bool {
        matches!(
            self,
            MessageType::MsgAppResp
                | MessageType::MsgVoteResp
                | MessageType::MsgHeartbeatResp
                | MessageType::MsgUnreachable
                | MessageType::MsgPreVoteResp
        )
    }

    /// The answer type to a vote or pre-vote request.
    pub fn vote_response(self) -> MessageType {
        match self {
            MessageType::MsgVote => MessageType::MsgVoteResp,
            MessageType::MsgPreVote => MessageType::MsgPreVoteResp,
            other => panic!("{other:?} is not a vote request"),
        }
    }
}

/// One Raft message. Fields a type does not use are zero or empty.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Message {
    /// What the message is.
    pub msg_type: MessageType,
    /// Recipient id.
    pub to: u64,
    /// Sender id.
    pub from: u64,
    /// Sender's term (0 for local messages and proposals).
    pub term: u64,
    /// `MsgApp`: term of the entry at `index`. Votes: the candidate's last term. Rejections:
    /// the term of the follower's hint.
    pub log_term: u64,
    /// `MsgApp`: index of the entry the new ones follow. Responses: the index answered.
    pub index: u64,
    /// Entries (appends, proposals, read-index contexts).
    pub entries: Vec<Entry>,
    /// The sender's commit index.
    pub commit: u64,
    /// A snapshot (`MsgSnap`).
    pub snapshot: Option<Snapshot>,
    /// Whether the request is rejected.
    pub reject: bool,
    /// Rejections of `MsgApp`: the index up to which the follower's log may match.
    pub reject_hint: u64,
    /// Opaque data: heartbeats carry read-index contexts, campaigns a transfer marker.
    pub context: Bytes,
}

/// Limit on entries in one decoded message: an encoded entry takes at least its header, so
/// the count is also bounded by the input's length.
const MIN_ENTRY_BYTES: usize = crate::types::Entry::HEADER_LEN as usize;

fn put_bytes(out: &mut Vec<u8>, data: &[u8]) {
    let len = u32::try_from(data.len()).expect("message payloads must be below 4 GiB");
    put_u32(out, len);
    out.extend_from_slice(data);
}

fn get_bytes(dec: &mut Decoder<'_>, what: &'static str) -> Result<Bytes, DecodeError> {
    let len = dec.u32(what)? as usize;
    Ok(Bytes::copy_from_slice(dec.bytes(len, what)?))
}

fn get_bool(dec: &mut Decoder<'_>, what: &'static str) -> Result<bool, DecodeError> {
    match dec.u8(what)? {
        0 => Ok(false),
        1 => Ok(true),
        _ => Err(DecodeError { what }),
    }
}

fn check_version(dec: &mut Decoder<'_>) -> Result<(), DecodeError> {
    if dec.u8("format version")? != FORMAT_VERSION {
        return Err(DecodeError { what: "format version" });
    }
    Ok(())
}

impl Message {
    /// A message of `msg_type` from `from` to `to`, every other field empty.
    pub fn new(msg_type: MessageType, from: u64, to: u64) -> Message {
        Message { msg_type, from, to, ..Message::default() }
    }

    /// The compact binary encoding (see the module documentation).
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(
            80 + self.context.len()
                + self.entries.iter().map(|e| e.encoded_len() as usize).sum::<usize>(),
        );
        out.push(FORMAT_VERSION);
        out.push(self.msg_type.to_u8());
        for v in [
            self.to,
            self.from,
            self.term,
            self.log_term,
            self.index,
            self.commit,
            self.reject_hint,
        ] {
            put_u64(&mut out, v);
        }
        out.push(u8::from(self.reject));
        put_bytes(&mut out, &self.context);
        let count = u32::try_from(self.entries.len()).expect("fewer than 2^32 entries");
        put_u32(&mut out, count);
        for e in &self.entries {
            codec::encode_entry(&mut out, e);
        }
        match &self.snapshot {
            None => out.push(0),
            Some(s) => {
                out.push(1);
                codec::encode_snapshot_metadata(&mut out, &s.metadata);
                put_bytes(&mut out, &s.data);
            }
        }
        out
    }

    /// Decodes bytes written by [`Message::encode`]. Every byte must be used.
    pub fn decode(buf: &[u8]) -> Result<Message> {
        Ok(Self::decode_inner(buf)?)
    }

    fn decode_inner(buf: &[u8]) -> Result<Message, DecodeError> {
        let mut dec = Decoder::new(buf);
        check_version(&mut dec)?;
        let msg_type = MessageType::from_u8(dec.u8("message type")?)
            .ok_or(DecodeError { what: "message type" })?;
        let to = dec.u64("message to")?;
        let from = dec.u64("message from")?;
        let term = dec.u64("message term")?;
        let log_term = dec.u64("message log term")?;
        let index = dec.u64("message index")?;
        let commit = dec.u64("message commit")?;
        let reject_hint = dec.u64("message reject hint")?;
        let reject = get_bool(&mut dec, "message reject")?;
        let context = get_bytes(&mut dec, "message context")?;
        let count = dec.u32("message entry count")? as usize;
        if count > dec.remaining() / MIN_ENTRY_BYTES {
            return Err(DecodeError { what: "message entry count" });
        }
        let mut entries = Vec::with_capacity(count);
        for _ in 0..count {
            entries.push(codec::decode_entry(&mut dec)?);
        }
        let snapshot = if get_bool(&mut dec, "message snapshot flag")? {
            let metadata = codec::decode_snapshot_metadata(&mut dec)?;
            let data = get_bytes(&mut dec, "snapshot data")?;
            Some(Snapshot { metadata, data })
        } else {
            None
        };
        dec.finish("message trailing bytes")?;
        Ok(Message {
            msg_type,
            to,
            from,
            term,
            log_term,
            index,
            entries,
            commit,
            snapshot,
            reject,
            reject_hint,
            context,
        })
    }
}

/// What a single membership change does to one node.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConfChangeType {
    /// Add the node as a voter (or promote it from learner).
    #[default]
    AddNode,
    /// Remove the node.
    RemoveNode,
    /// Add the node as a learner (or demote it from voter).
    AddLearnerNode,
}

impl ConfChangeType {
    fn to_u8(self) -> u8 {
        match self {
            ConfChangeType::AddNode => 0,
            ConfChangeType::RemoveNode => 1,
            ConfChangeType::AddLearnerNode => 2,
        }
    }

    fn from_u8(byte: u8) -> Option<ConfChangeType> {
        match byte {
            0 => Some(ConfChangeType::AddNode),
            1 => Some(ConfChangeType::RemoveNode),
            2 => Some(ConfChangeType::AddLearnerNode),
            _ => None,
        }
    }
}

/// A single-node membership change, carried as the data of an `EntryType::ConfChange` entry.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfChange {
    /// What to do.
    pub change_type: ConfChangeType,
    /// To which node.
    pub node_id: u64,
    /// Opaque application data (e.g. the node's address).
    pub context: Bytes,
}

/// One step of a [`ConfChangeV2`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct ConfChangeSingle {
    /// What to do.
    pub change_type: ConfChangeType,
    /// To which node.
    pub node_id: u64,
}

/// How a [`ConfChangeV2`] is carried out.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum ConfChangeTransition {
    /// A single change to one voter is applied directly; anything else enters a joint
    /// configuration that is left automatically once committed.
    #[default]
    Auto,
    /// Always joint, left automatically.
    Implicit,
    /// Always joint; the application leaves it by proposing an empty `ConfChangeV2`.
    Explicit,
}

impl ConfChangeTransition {
    fn to_u8(self) -> u8 {
        match self {
            ConfChangeTransition::Auto => 0,
            ConfChangeTransition::Implicit => 1,
            ConfChangeTransition::Explicit => 2,
        }
    }

    fn from_u8(byte: u8) -> Option<ConfChangeTransition> {
        match byte {
            0 => Some(ConfChangeTransition::Auto),
            1 => Some(ConfChangeTransition::Implicit),
            2 => Some(ConfChangeTransition::Explicit),
            _ => None,
        }
    }
}

/// A membership change of any number of nodes, possibly through joint consensus; carried as the
/// data of an `EntryType::ConfChangeV2` entry. An empty change leaves a joint configuration.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConfChangeV2 {
    /// How the change is carried out.
    pub transition: ConfChangeTransition,
    /// The changes, applied in order.
    pub changes: Vec<ConfChangeSingle>,
    /// Opaque application data.
    pub context: Bytes,
}

impl ConfChange {
    /// The encoding stored as entry data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(14 + self.context.len());
        out.push(FORMAT_VERSION);
        out.push(self.change_type.to_u8());
        put_u64(&mut out, self.node_id);
        put_bytes(&mut out, &self.context);
        out
    }

    /// Decodes bytes written by [`ConfChange::encode`].
    pub fn decode(buf: &[u8]) -> Result<ConfChange> {
        let mut dec = Decoder::new(buf);
        check_version(&mut dec)?;
        let change_type = ConfChangeType::from_u8(dec.u8("conf change type")?)
            .ok_or(DecodeError { what: "conf change type" })?;
        let node_id = dec.u64("conf change node")?;
        let context = get_bytes(&mut dec, "conf change context")?;
        dec.finish("conf change trailing bytes")?;
        Ok(ConfChange { change_type, node_id, context })
    }
}

impl ConfChangeV2 {
    /// The encoding stored as entry data.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(10 + 9 * self.changes.len() + self.context.len());
        out.push(FORMAT_VERSION);
        out.push(self.transition.to_u8());
        put_u32(&mut out, u32::try_from(self.changes.len()).expect("fewer than 2^32 changes"));
        for c in &self.changes {
            out.push(c.change_type.to_u8());
            put_u64(&mut out, c.node_id);
        }
        put_bytes(&mut out, &self.context);
        out
    }

    /// Decodes bytes written by [`ConfChangeV2::encode`].
    pub fn decode(buf: &[u8]) -> Result<ConfChangeV2> {
        let mut dec = Decoder::new(buf);
        check_version(&mut dec)?;
        let transition = ConfChangeTransition::from_u8(dec.u8("conf change transition")?)
            .ok_or(DecodeError { what: "conf change transition" })?;
        let count = dec.u32("conf change count")? as usize;
        if count > dec.remaining() / 9 {
            return Err(DecodeError { what: "conf change count" }.into());
        }
        let mut changes = Vec::with_capacity(count);
        for _ in 0..count {
            let change_type = ConfChangeType::from_u8(dec.u8("conf change type")?)
                .ok_or(DecodeError { what: "conf change type" })?;
            let node_id = dec.u64("conf change node")?;
            changes.push(ConfChangeSingle { change_type, node_id });
        }
        let context = get_bytes(&mut dec, "conf change context")?;
        dec.finish("conf change trailing bytes")?;
        Ok(ConfChangeV2 { transition, changes, context })
    }

    /// Whether this change leaves a joint configuration (it has no changes).
    pub fn leave_joint(&self) -> bool {
        self.changes.is_empty()
    }

    /// Whether applying this change enters a joint configuration, and if so whether it is
    /// left automatically: `(uses_joint, auto_leave)`.
    pub fn enter_joint(&self) -> Option<bool> {
        if self.transition != ConfChangeTransition::Auto || self.changes.len() > 1 {
            Some(self.transition != ConfChangeTransition::Explicit)
        } else {
            None
        }
    }
}

/// Either kind of membership change; what [`super::RawNode::propose_conf_change`] and
/// [`super::RawNode::apply_conf_change`] accept.
pub trait AnyConfChange {
    /// The change as a [`ConfChangeV2`] (a [`ConfChange`] becomes a one-step `Auto` change).
    fn as_v2(&self) -> ConfChangeV2;
    /// The entry type and data that carry this change in the log.
    fn to_entry_data(&self) -> (crate::types::EntryType, Bytes);
}

impl AnyConfChange for ConfChange {
    fn as_v2(&self) -> ConfChangeV2 {
        ConfChangeV2 {
            transition: ConfChangeTransition::Auto,
            changes: vec![ConfChangeSingle {
                change_type: self.change_type,
                node_id: self.node_id,
            }],
            context: self.context.clone(),
        }
    }

    fn to_entry_data(&self) -> (crate::types::EntryType, Bytes) {
        (crate::types::EntryType::ConfChange, self.encode().into())
    }
}

impl AnyConfChange for ConfChangeV2 {
    fn as_v2(&self) -> ConfChangeV2 {
        self.clone()
    }

    fn to_entry_data(&self) -> (crate::types::EntryType, Bytes) {
        (crate::types::EntryType::ConfChangeV2, self.encode().into())
    }
}

impl<T: AnyConfChange + ?Sized> AnyConfChange for &T {
    fn as_v2(&self) -> ConfChangeV2 {
        (**self).as_v2()
    }

    fn to_entry_data(&self) -> (crate::types::EntryType, Bytes) {
        (**self).to_entry_data()
    }
}

/// How sending a snapshot to a follower went, as the application reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SnapshotStatus {
    /// The follower received it.
    Finish,
    /// Sending failed; the leader will probe the follower again.
    Failure,
}

/// A linearizable read that may be served once the local applied index reaches `index`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ReadState {
    /// The commit index at the time the read was confirmed.
    pub index: u64,
    /// The context the application passed to `read_index`.
    pub request_ctx: Bytes,
}

/// The role a node plays.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum StateRole {
    /// Follows a leader (or waits for one).
    #[default]
    Follower,
    /// Asks for votes in an election.
    Candidate,
    /// Leads the cluster.
    Leader,
    /// Asks whether it could win an election, without raising its term.
    PreCandidate,
}

/// The volatile state worth reporting when it changes: who leads, and this node's role.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SoftState {
    /// The leader this node knows of, 0 for none.
    pub leader_id: u64,
    /// This node's role.
    pub raft_state: StateRole,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{ConfState, EntryType, SnapshotMetadata};
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (any::<u64>(), any::<u64>(), 0u8..3, proptest::collection::vec(any::<u8>(), 0..16))
            .prop_map(|(index, term, t, data)| Entry {
                index,
                term,
                entry_type: EntryType::from_u8(t).unwrap(),
                data: data.into(),
            })
    }

    fn arb_message() -> impl Strategy<Value = Message> {
        let ids = proptest::collection::vec(any::<u64>(), 0..3);
        (
            (0u8..19, any::<u64>(), any::<u64>(), any::<u64>(), any::<u64>()),
            (any::<u64>(), any::<u64>(), any::<u64>(), any::<bool>()),
            proptest::collection::vec(any::<u8>(), 0..8),
            proptest::collection::vec(arb_entry(), 0..4),
            proptest::option::of((
                any::<u64>(),
                any::<u64>(),
                ids,
                proptest::collection::vec(any::<u8>(), 0..8),
            )),
        )
            .prop_map(
                |(
                    (t, to, from, term, log_term),
                    (index, commit, hint, reject),
                    ctx,
                    entries,
                    snap,
                )| Message {
                    msg_type: MessageType::from_u8(t).unwrap(),
                    to,
                    from,
                    term,
                    log_term,
                    index,
                    entries,
                    commit,
                    snapshot: snap.map(|(i, st, voters, data)| Snapshot {
                        metadata: SnapshotMetadata {
                            index: i,
                            term: st,
                            conf_state: ConfState { voters, ..ConfState::default() },
                        },
                        data: data.into(),
                    }),
                    reject,
                    reject_hint: hint,
                    context: ctx.into(),
                },
            )
    }

    proptest! {
        #[test]
        fn message_round_trips(m in arb_message()) {
            let buf = m.encode();
            prop_assert_eq!(Message::decode(&buf).unwrap(), m);
        }

        #[test]
        fn every_truncated_message_is_rejected(m in arb_message()) {
            let buf = m.encode();
            for cut in 0..buf.len() {
                prop_assert!(Message::decode(&buf[..cut]).is_err(), "cut at {} of {}", cut, buf.len());
            }
        }

        #[test]
        fn corrupted_encodings_never_panic(m in arb_message(), at in any::<usize>(), byte in any::<u8>()) {
            let mut buf = m.encode();
            let at = at % buf.len();
            buf[at] = byte;
            // Either it decodes (the byte was a value, not a length) or it is refused.
            if let Ok(d) = Message::decode(&buf) {
                prop_assert_eq!(d.encode(), buf);
            }
        }

        #[test]
        fn arbitrary_bytes_never_panic(buf in proptest::collection::vec(any::<u8>(), 0..200)) {
            let _ = Message::decode(&buf);
            let _ = ConfChange::decode(&buf);
            let _ = ConfChangeV2::decode(&buf);
        }

        #[test]
        fn conf_changes_round_trip(
            t in 0u8..3,
            changes in proptest::collection::vec((0u8..3, any::<u64>()), 0..5),
            ctx in proptest::collection::vec(any::<u8>(), 0..8),
            node in any::<u64>(),
        ) {
            let cc = ConfChange { change_type: ConfChangeType::from_u8(t).unwrap(), node_id: node, context: ctx.clone().into() };
            prop_assert_eq!(ConfChange::decode(&cc.encode()).unwrap(), cc);
            let v2 = ConfChangeV2 {
                transition: ConfChangeTransition::from_u8(t).unwrap(),
                changes: changes.into_iter().map(|(t, n)| ConfChangeSingle { change_type: ConfChangeType::from_u8(t).unwrap(), node_id: n }).collect(),
                context: ctx.into(),
            };
            let buf = v2.encode();
            prop_assert_eq!(ConfChangeV2::decode(&buf).unwrap(), v2);
            for cut in 0..buf.len() {
                prop_assert!(ConfChangeV2::decode(&buf[..cut]).is_err());
            }
        }
    }

    #[test]
    fn message_type_bytes_round_trip_and_unknown_is_rejected() {
        for t in MESSAGE_TYPES {
            assert_eq!(MessageType::from_u8(t.to_u8()), Some(t));
        }
        assert_eq!(MessageType::from_u8(19), None);
        let mut buf = Message::new(MessageType::MsgApp, 1, 2).encode();
        buf[1] = 200;
        assert!(Message::decode(&buf).is_err());
    }

    #[test]
    fn huge_entry_count_is_rejected_without_allocating() {
        let mut buf = Message::new(MessageType::MsgApp, 1, 2).encode();
        // The entry count sits right before the snapshot flag at the end.
        let at = buf.len() - 1 - 4;
        buf[at..at + 4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(Message::decode(&buf).is_err());
    }

    #[test]
    fn trailing_bytes_and_bad_version_are_rejected() {
        let mut buf = Message::new(MessageType::MsgHeartbeat, 1, 2).encode();
        buf.push(0);
        assert!(Message::decode(&buf).is_err());
        let mut buf = Message::new(MessageType::MsgHeartbeat, 1, 2).encode();
        buf[0] = 9;
        assert!(Message::decode(&buf).is_err());
    }

    #[test]
    fn a_single_conf_change_is_a_one_step_auto_v2() {
        let cc = ConfChange {
            change_type: ConfChangeType::AddLearnerNode,
            node_id: 4,
            context: Bytes::from_static(b"addr"),
        };
        let v2 = cc.as_v2();
        assert_eq!(v2.transition, ConfChangeTransition::Auto);
        assert_eq!(v2.enter_joint(), None, "one change needs no joint state");
        assert_eq!(v2.changes.len(), 1);
        let explicit = ConfChangeV2 { transition: ConfChangeTransition::Explicit, ..v2.clone() };
        assert_eq!(explicit.enter_joint(), Some(false));
        assert!(ConfChangeV2::default().leave_joint());
    }
}
