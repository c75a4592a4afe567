//! `check_raft_message`: the Raft wire decoders on arbitrary bytes, and their round trip on
//! messages built from structured input.

use arbitrary::{Arbitrary, Unstructured};
use bytes::Bytes;

use crate::error::Error;
use crate::raft::message::{
    ConfChange, ConfChangeSingle, ConfChangeTransition, ConfChangeType, ConfChangeV2, Message,
    MessageType,
};
use crate::types::{ConfState, Entry, EntryType, Snapshot, SnapshotMetadata};

/// Entries a structured message carries at most.
const MAX_ENTRIES: usize = 8;
/// Node ids a structured membership lists at most, per list.
const MAX_IDS: usize = 8;
/// Bytes of one payload (entry data, context, snapshot data) at most.
const MAX_PAYLOAD_BYTES: usize = 256;

/// A message as a fuzzer builds it: every field free, lists and payloads bounded.
#[derive(Arbitrary, Clone, Debug)]
struct MessageInput {
    msg_type: u8,
    to: u64,
    from: u64,
    term: u64,
    log_term: u64,
    index: u64,
    commit: u64,
    reject: bool,
    reject_hint: u64,
    context: Vec<u8>,
    entries: Vec<(u64, u64, u8, Vec<u8>)>,
    snapshot: Option<(u64, u64, ConfInput, Vec<u8>)>,
}

#[derive(Arbitrary, Clone, Debug)]
struct ConfInput {
    voters: Vec<u64>,
    learners: Vec<u64>,
    voters_outgoing: Vec<u64>,
    learners_next: Vec<u64>,
    auto_leave: bool,
}

/// Both membership-change encodings, built from structured input.
#[derive(Arbitrary, Clone, Debug)]
struct ConfChangeInput {
    change_type: u8,
    node_id: u64,
    transition: u8,
    changes: Vec<(u8, u64)>,
    context: Vec<u8>,
}

fn bounded(bytes: &[u8]) -> Bytes {
    Bytes::copy_from_slice(&bytes[..bytes.len().min(MAX_PAYLOAD_BYTES)])
}

fn ids(list: &[u64]) -> Vec<u64> {
    list.iter().take(MAX_IDS).copied().collect()
}

fn entry_type(byte: u8) -> EntryType {
    EntryType::from_u8(byte % 3).expect("0, 1 and 2 are entry types")
}

fn change_type(byte: u8) -> ConfChangeType {
    [ConfChangeType::AddNode, ConfChangeType::RemoveNode, ConfChangeType::AddLearnerNode]
        [usize::from(byte) % 3]
}

impl MessageInput {
    fn build(&self) -> Message {
        // 19 message types; `from_u8` answers for 0..19.
        let msg_type = MessageType::from_u8(self.msg_type % 19).expect("below the type count");
        Message {
            msg_type,
            to: self.to,
            from: self.from,
            term: self.term,
            log_term: self.log_term,
            index: self.index,
            commit: self.commit,
            reject: self.reject,
            reject_hint: self.reject_hint,
            context: bounded(&self.context),
            entries: self
                .entries
                .iter()
                .take(MAX_ENTRIES)
                .map(|(index, term, kind, data)| Entry {
                    index: *index,
                    term: *term,
                    entry_type: entry_type(*kind),
                    data: bounded(data),
                })
                .collect(),
            snapshot: self.snapshot.as_ref().map(|(index, term, conf, data)| Snapshot {
                metadata: SnapshotMetadata {
                    index: *index,
                    term: *term,
                    conf_state: ConfState {
                        voters: ids(&conf.voters),
                        learners: ids(&conf.learners),
                        voters_outgoing: ids(&conf.voters_outgoing),
                        learners_next: ids(&conf.learners_next),
                        auto_leave: conf.auto_leave,
                    },
                },
                data: bounded(data),
            }),
        }
    }
}

impl ConfChangeInput {
    fn build(&self) -> (ConfChange, ConfChangeV2) {
        let v1 = ConfChange {
            change_type: change_type(self.change_type),
            node_id: self.node_id,
            context: bounded(&self.context),
        };
        let transition = [
            ConfChangeTransition::Auto,
            ConfChangeTransition::Implicit,
            ConfChangeTransition::Explicit,
        ][usize::from(self.transition) % 3];
        let v2 = ConfChangeV2 {
            transition,
            changes: self
                .changes
                .iter()
                .take(MAX_IDS)
                .map(|(kind, node_id)| ConfChangeSingle {
                    change_type: change_type(*kind),
                    node_id: *node_id,
                })
                .collect(),
            context: bounded(&self.context),
        };
        (v1, v2)
    }
}

/// One decoder on arbitrary bytes: an error is a decode error, never a panic;
/// what decodes encodes back to exactly the same bytes (the encoding is canonical: every
/// flag byte is 0 or 1, every count exact, and trailing bytes are refused).
fn decodes_canonically<T: std::fmt::Debug>(
    what: &str,
    bytes: &[u8],
    decode: impl Fn(&[u8]) -> crate::Result<T>,
    encode: impl Fn(&T) -> Vec<u8>,
) {
    match decode(bytes) {
        Ok(value) => {
            assert_eq!(encode(&value), bytes, "{what} decoded from bytes it does not encode to")
        }
        Err(Error::Decode(_)) => {}
        Err(e) => panic!("{what}: undecodable bytes gave {e}, not a decode error"),
    }
}

/// Decodes `bytes` as a `Message`, a `ConfChange` and a `ConfChangeV2`: never a panic, and
/// anything that decodes re-encodes to the same bytes. Then reads `bytes` as structured input
/// (a message and a membership change with every field free, lists and payloads bounded) and
/// checks `decode(encode(m)) == m` for each, and that the message's encoding cut short or
/// with a byte more is refused.
pub fn check_raft_message(bytes: &[u8]) {
    decodes_canonically("Message", bytes, Message::decode, Message::encode);
    decodes_canonically("ConfChange", bytes, ConfChange::decode, ConfChange::encode);
    decodes_canonically("ConfChangeV2", bytes, ConfChangeV2::decode, ConfChangeV2::encode);

    let mut input = Unstructured::new(bytes);
    let (Ok(message), Ok(change)) =
        (MessageInput::arbitrary(&mut input), ConfChangeInput::arbitrary(&mut input))
    else {
        return;
    };
    let message = message.build();
    let encoded = message.encode();
    assert_eq!(Message::decode(&encoded).ok(), Some(message.clone()), "a message round-trips");
    // A message cut short, or with a byte more, is refused. (Every other cut is some input's
    // bytes too, checked above as arbitrary bytes.)
    for cut in [encoded.len() - 1, encoded.len() / 2] {
        assert!(
            Message::decode(&encoded[..cut]).is_err(),
            "{message:?} cut to {cut} bytes decodes"
        );
    }
    let mut longer = encoded.clone();
    longer.push(0);
    assert!(Message::decode(&longer).is_err(), "{message:?} with a byte more decodes");
    let (v1, v2) = change.build();
    assert_eq!(ConfChange::decode(&v1.encode()).ok(), Some(v1), "a ConfChange round-trips");
    assert_eq!(ConfChangeV2::decode(&v2.encode()).ok(), Some(v2), "a ConfChangeV2 round-trips");
}
