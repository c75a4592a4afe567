//! Binary encoding of the shared types, used by WAL records, snapshot headers and Raft messages.
//!
//! Every integer is little-endian. Decoding reads from a byte slice with every length checked
//! against what is left, so damaged input yields a [`DecodeError`], never a panic and never an
//! allocation larger than the input itself.
//!
//! | item          | layout                                                                  |
//! |---------------|-------------------------------------------------------------------------|
//! | `Entry`       | index u64, term u64, type u8, data length u32, data                     |
//! | `HardState`   | term u64, vote u64, commit u64                                          |
//! | id list       | count u32, then count × u64                                             |
//! | `ConfState`   | voters, learners, voters_outgoing, learners_next (id lists), auto_leave u8 |
//! | `SnapshotMetadata` | index u64, term u64, `ConfState`                                   |

use bytes::Bytes;

use crate::types::{ConfState, Entry, EntryType, HardState, SnapshotMetadata};

/// Bytes of an encoded [`HardState`].
pub const HARD_STATE_LEN: usize = 3 * size_of::<u64>();

/// Input that does not decode; `what` names the field that was being read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[error("cannot decode {what}")]
pub struct DecodeError {
    /// The field or structure that failed.
    pub what: &'static str,
}

/// Reads fields one after another from a byte slice, checking every length.
///
/// It keeps the bytes not yet read as a slice, so that each field costs one length check (the
/// fuzz targets trace every compare, and decoding runs for every record at every open).
#[derive(Debug)]
pub struct Decoder<'a> {
    /// Every byte given, for [`Decoder::position`].
    len: usize,
    rest: &'a [u8],
}

impl<'a> Decoder<'a> {
    /// A decoder at the start of `buf`.
    pub fn new(buf: &'a [u8]) -> Decoder<'a> {
        Decoder { len: buf.len(), rest: buf }
    }

    /// Bytes not yet read.
    pub fn remaining(&self) -> usize {
        self.rest.len()
    }

    /// Bytes read so far.
    pub fn position(&self) -> usize {
        self.len - self.rest.len()
    }

    /// The next `len` bytes.
    pub fn bytes(&mut self, len: usize, what: &'static str) -> Result<&'a [u8], DecodeError> {
        let (out, rest) = self.rest.split_at_checked(len).ok_or(DecodeError { what })?;
        self.rest = rest;
        Ok(out)
    }

    /// The next `N` bytes.
    fn array<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], DecodeError> {
        let (out, rest) = self.rest.split_first_chunk::<N>().ok_or(DecodeError { what })?;
        self.rest = rest;
        Ok(*out)
    }

    /// The next byte.
    pub fn u8(&mut self, what: &'static str) -> Result<u8, DecodeError> {
        self.array::<1>(what).map(|[b]| b)
    }

    /// The next little-endian u32.
    pub fn u32(&mut self, what: &'static str) -> Result<u32, DecodeError> {
        self.array(what).map(u32::from_le_bytes)
    }

    /// The next little-endian u64.
    pub fn u64(&mut self, what: &'static str) -> Result<u64, DecodeError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// Fails unless every byte was read.
    pub fn finish(&self, what: &'static str) -> Result<(), DecodeError> {
        if self.rest.is_empty() { Ok(()) } else { Err(DecodeError { what }) }
    }
}

/// `fields` as 16 lowercase hex digits each, joined by `-`, then `suffix`: the names of segment
/// and snapshot files, built without the formatting machinery (a snapshot's name is built at
/// every read of it).
pub fn hex_name(fields: &[u64], suffix: &str) -> String {
    let mut name = String::with_capacity(fields.len() * 17 + suffix.len());
    for (k, field) in fields.iter().enumerate() {
        if k > 0 {
            name.push('-');
        }
        for shift in (0..16).rev() {
            let nibble = ((field >> (shift * 4)) & 0xf) as u32;
            name.push(char::from_digit(nibble, 16).expect("a nibble is a hex digit"));
        }
    }
    name.push_str(suffix);
    name
}

/// Appends a little-endian u32.
pub fn put_u32(out: &mut Vec<u8>, value: u32) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Appends a little-endian u64.
pub fn put_u64(out: &mut Vec<u8>, value: u64) {
    out.extend_from_slice(&value.to_le_bytes());
}

/// Appends the encoding of `entry`: exactly [`Entry::encoded_len`] bytes.
///
/// # Panics
/// If the payload is 4 GiB or larger; the WAL's record limit stops such entries long before.
pub fn encode_entry(out: &mut Vec<u8>, entry: &Entry) {
    let data_len = u32::try_from(entry.data.len()).expect("entry payload must be below 4 GiB");
    let start = out.len();
    put_u64(out, entry.index);
    put_u64(out, entry.term);
    out.push(entry.entry_type.to_u8());
    put_u32(out, data_len);
    out.extend_from_slice(&entry.data);
    debug_assert_eq!((out.len() - start) as u64, entry.encoded_len());
}

/// Reads one entry written by [`encode_entry`].
pub fn decode_entry(dec: &mut Decoder<'_>) -> Result<Entry, DecodeError> {
    decode_entry_in(dec, None)
}

/// Like [`decode_entry`]; with `owner` (a buffer and the offset in it where the decoder's
/// bytes start), the entry's data is a slice of that buffer instead of a copy.
pub fn decode_entry_in(
    dec: &mut Decoder<'_>,
    owner: Option<(&Bytes, usize)>,
) -> Result<Entry, DecodeError> {
    let index = dec.u64("entry index")?;
    decode_entry_after_index(dec, index, owner)
}

/// The rest of an entry whose index [`decode_entry_in`] (or a caller skipping entries) read.
pub fn decode_entry_after_index(
    dec: &mut Decoder<'_>,
    index: u64,
    owner: Option<(&Bytes, usize)>,
) -> Result<Entry, DecodeError> {
    let term = dec.u64("entry term")?;
    let entry_type =
        EntryType::from_u8(dec.u8("entry type")?).ok_or(DecodeError { what: "entry type" })?;
    let len = dec.u32("entry data length")? as usize;
    let at = dec.position();
    let raw = dec.bytes(len, "entry data")?;
    let data = match owner {
        Some((buf, base)) => buf.slice(base + at..base + at + len),
        None => Bytes::copy_from_slice(raw),
    };
    Ok(Entry { index, term, entry_type, data })
}

/// Appends the encoding of `hs`: [`HARD_STATE_LEN`] bytes.
pub fn encode_hard_state(out: &mut Vec<u8>, hs: &HardState) {
    put_u64(out, hs.term);
    put_u64(out, hs.vote);
    put_u64(out, hs.commit);
}

/// Reads a hard state written by [`encode_hard_state`].
pub fn decode_hard_state(dec: &mut Decoder<'_>) -> Result<HardState, DecodeError> {
    Ok(HardState {
        term: dec.u64("hard state term")?,
        vote: dec.u64("hard state vote")?,
        commit: dec.u64("hard state commit")?,
    })
}

fn encode_ids(out: &mut Vec<u8>, ids: &[u64]) {
    let count = u32::try_from(ids.len()).expect("a configuration has fewer than 2^32 members");
    put_u32(out, count);
    for id in ids {
        put_u64(out, *id);
    }
}

fn decode_ids(dec: &mut Decoder<'_>, what: &'static str) -> Result<Vec<u64>, DecodeError> {
    let count = dec.u32(what)? as usize;
    // Bound the allocation by the bytes actually present, not by the count field.
    if count > dec.remaining() / size_of::<u64>() {
        return Err(DecodeError { what });
    }
    (0..count).map(|_| dec.u64(what)).collect()
}

/// Appends the encoding of `cs`.
pub fn encode_conf_state(out: &mut Vec<u8>, cs: &ConfState) {
    encode_ids(out, &cs.voters);
    encode_ids(out, &cs.learners);
    encode_ids(out, &cs.voters_outgoing);
    encode_ids(out, &cs.learners_next);
    out.push(u8::from(cs.auto_leave));
}

/// Bytes [`encode_conf_state`] appends for `cs`.
pub fn conf_state_encoded_len(cs: &ConfState) -> usize {
    let ids =
        cs.voters.len() + cs.learners.len() + cs.voters_outgoing.len() + cs.learners_next.len();
    4 * size_of::<u32>() + ids * size_of::<u64>() + 1
}

/// Reads a conf state written by [`encode_conf_state`].
pub fn decode_conf_state(dec: &mut Decoder<'_>) -> Result<ConfState, DecodeError> {
    let voters = decode_ids(dec, "conf state voters")?;
    let learners = decode_ids(dec, "conf state learners")?;
    let voters_outgoing = decode_ids(dec, "conf state outgoing voters")?;
    let learners_next = decode_ids(dec, "conf state next learners")?;
    let auto_leave = match dec.u8("conf state auto_leave")? {
        0 => false,
        1 => true,
        _ => {
            return Err(DecodeError { what: "conf state auto_leave" });
        }
    };
    Ok(ConfState { voters, learners, voters_outgoing, learners_next, auto_leave })
}

/// Appends the encoding of `meta`.
pub fn encode_snapshot_metadata(out: &mut Vec<u8>, meta: &SnapshotMetadata) {
    put_u64(out, meta.index);
    put_u64(out, meta.term);
    encode_conf_state(out, &meta.conf_state);
}

/// Reads snapshot metadata written by [`encode_snapshot_metadata`].
pub fn decode_snapshot_metadata(dec: &mut Decoder<'_>) -> Result<SnapshotMetadata, DecodeError> {
    Ok(SnapshotMetadata {
        index: dec.u64("snapshot index")?,
        term: dec.u64("snapshot term")?,
        conf_state: decode_conf_state(dec)?,
    })
}

#[cfg(test)]
mod tests {

    #[test]
    fn hex_names_are_what_padded_hex_formatting_gives() {
        let values =
            [0, 1, 0xf, 0x10, 0xdead_beef, u64::from(u32::MAX) + 1, u64::MAX - 1, u64::MAX];
        for (a, b) in values.iter().zip(values.iter().rev()) {
            assert_eq!(hex_name(&[*a], ".tmp"), format!("{a:016x}.tmp"));
            assert_eq!(hex_name(&[*a, *b], ".wal"), format!("{a:016x}-{b:016x}.wal"));
            assert_eq!(hex_name(&[*b, *a, *b], ""), format!("{b:016x}-{a:016x}-{b:016x}"));
        }
    }

    use super::*;
    use proptest::prelude::*;

    fn arb_entry() -> impl Strategy<Value = Entry> {
        (any::<u64>(), any::<u64>(), 0u8..3, proptest::collection::vec(any::<u8>(), 0..64))
            .prop_map(|(index, term, t, data)| Entry {
                index,
                term,
                entry_type: EntryType::from_u8(t).unwrap(),
                data: data.into(),
            })
    }

    fn arb_conf_state() -> impl Strategy<Value = ConfState> {
        let ids = || proptest::collection::vec(any::<u64>(), 0..5);
        (ids(), ids(), ids(), ids(), any::<bool>()).prop_map(|(v, l, vo, ln, a)| ConfState {
            voters: v,
            learners: l,
            voters_outgoing: vo,
            learners_next: ln,
            auto_leave: a,
        })
    }

    proptest! {
        #[test]
        fn entry_round_trips_with_its_encoded_len(e in arb_entry()) {
            let mut buf = Vec::new();
            encode_entry(&mut buf, &e);
            prop_assert_eq!(buf.len() as u64, e.encoded_len());
            let mut dec = Decoder::new(&buf);
            prop_assert_eq!(decode_entry(&mut dec).unwrap(), e);
            prop_assert_eq!(dec.remaining(), 0);
        }

        #[test]
        fn snapshot_metadata_round_trips(index in any::<u64>(), term in any::<u64>(), cs in arb_conf_state()) {
            let meta = SnapshotMetadata { index, term, conf_state: cs };
            let mut buf = Vec::new();
            encode_snapshot_metadata(&mut buf, &meta);
            let mut dec = Decoder::new(&buf);
            prop_assert_eq!(decode_snapshot_metadata(&mut dec).unwrap(), meta);
            prop_assert!(dec.finish("end").is_ok());
        }

        #[test]
        fn every_truncation_of_an_encoding_fails_cleanly(e in arb_entry(), cs in arb_conf_state()) {
            let mut buf = Vec::new();
            encode_entry(&mut buf, &e);
            encode_conf_state(&mut buf, &cs);
            for cut in 0..buf.len() {
                let mut dec = Decoder::new(&buf[..cut]);
                let ok = decode_entry(&mut dec).and_then(|_| decode_conf_state(&mut dec));
                prop_assert!(ok.is_err(), "decoding {} of {} bytes must fail", cut, buf.len());
            }
        }
    }

    #[test]
    fn hard_state_encoding_has_its_documented_length() {
        let hs = HardState { term: 7, vote: 3, commit: 42 };
        let mut buf = Vec::new();
        encode_hard_state(&mut buf, &hs);
        assert_eq!(buf.len(), HARD_STATE_LEN);
        assert_eq!(decode_hard_state(&mut Decoder::new(&buf)).unwrap(), hs);
    }

    #[test]
    fn huge_id_count_is_rejected_without_allocating() {
        let mut buf = Vec::new();
        put_u32(&mut buf, u32::MAX);
        put_u64(&mut buf, 1);
        let err = decode_conf_state(&mut Decoder::new(&buf)).unwrap_err();
        assert_eq!(err.what, "conf state voters");
    }

    #[test]
    fn unknown_entry_type_and_auto_leave_bytes_are_rejected() {
        let mut buf = Vec::new();
        encode_entry(&mut buf, &Entry::new(1, 1, vec![1, 2]));
        buf[16] = 9;
        assert_eq!(decode_entry(&mut Decoder::new(&buf)).unwrap_err().what, "entry type");

        let mut buf = Vec::new();
        encode_conf_state(&mut buf, &ConfState::default());
        *buf.last_mut().unwrap() = 2;
        let err = decode_conf_state(&mut Decoder::new(&buf)).unwrap_err();
        assert_eq!(err.what, "conf state auto_leave");
    }
}
