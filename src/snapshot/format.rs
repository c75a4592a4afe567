//! The snapshot file format: a fixed header, the metadata, then the (optionally zstd-compressed)
//! body. DESIGN.md §6 has the same layout as a diagram and a table; a test below checks the
//! constants against it.

use byteorder::{ByteOrder, LittleEndian};

use crate::codec::{self, Decoder};
use crate::types::SnapshotMetadata;

/// Suffix of a finished snapshot file.
pub const SNAPSHOT_SUFFIX: &str = ".snap";
/// Suffix of a snapshot being written; removed on open.
pub const TEMP_SUFFIX: &str = ".snap.tmp";
/// Suffix given to a snapshot file that failed its checks.
pub const BROKEN_SUFFIX: &str = ".broken";
/// Suffix a group's removal adds to its snapshot files (`*.snap.removing`) until its Remove
/// record is durable: never read, and settled by the next open (put back or deleted).
pub const REMOVING_SUFFIX: &str = ".removing";

/// `{group:016x}-{term:016x}-{index:016x}.snap`: a plain sorted listing groups a group's files
/// together and puts its newest last (terms and indices both only grow).
pub fn snapshot_name(group: u64, term: u64, index: u64) -> String {
    codec::hex_name(&[group, term, index], SNAPSHOT_SUFFIX)
}

/// The temp file writer number `writer` streams a snapshot into before it is renamed to
/// [`snapshot_name`]: `{group:016x}-{term:016x}-{index:016x}.{writer:x}.snap.tmp`. Each writer
/// has its own file, so two writers of one snapshot never write into (or remove) each other's.
pub fn temp_name(group: u64, term: u64, index: u64, writer: u64) -> String {
    format!("{group:016x}-{term:016x}-{index:016x}.{writer:x}{TEMP_SUFFIX}")
}

/// The (group, term, index) a snapshot file name carries.
pub fn parse_snapshot_name(name: &str) -> Option<(u64, u64, u64)> {
    let stem = name.strip_suffix(SNAPSHOT_SUFFIX)?;
    let mut parts = stem.split('-');
    let mut field = || -> Option<u64> {
        let part = parts.next()?;
        if part.len() != 16 {
            return None;
        }
        u64::from_str_radix(part, 16).ok()
    };
    let (group, term, index) = (field()?, field()?, field()?);
    if parts.next().is_some() {
        return None;
    }
    Some((group, term, index))
}

/// The group a snapshot temp file belongs to.
pub fn parse_temp_group(name: &str) -> Option<u64> {
    let stem = name.strip_suffix(TEMP_SUFFIX)?;
    let group = stem.split('-').next()?;
    if group.len() != 16 {
        return None;
    }
    u64::from_str_radix(group, 16).ok()
}

/// First bytes of every snapshot file.
pub const SNAPSHOT_MAGIC: [u8; 8] = *b"RWALSNP\x01";
/// The format version this build writes and reads.
pub const SNAPSHOT_VERSION: u32 = 1;

/// Magic, 8 bytes.
pub const MAGIC_OFFSET: usize = 0;
/// Format version, u32.
pub const VERSION_OFFSET: usize = MAGIC_OFFSET + SNAPSHOT_MAGIC.len();
/// Compression of the body, u32: 0 none, 1 zstd.
pub const COMPRESSION_OFFSET: usize = VERSION_OFFSET + size_of::<u32>();
/// Uncompressed length of the data, u64.
pub const DATA_LEN_OFFSET: usize = COMPRESSION_OFFSET + size_of::<u32>();
/// Bytes of body stored in the file, u64.
pub const STORED_LEN_OFFSET: usize = DATA_LEN_OFFSET + size_of::<u64>();
/// CRC-32 of the stored body, u32.
pub const BODY_CRC_OFFSET: usize = STORED_LEN_OFFSET + size_of::<u64>();
/// Length of the encoded metadata after the header, u32.
pub const META_LEN_OFFSET: usize = BODY_CRC_OFFSET + size_of::<u32>();
/// CRC-32 of header bytes `0..HEADER_CRC_OFFSET` followed by the metadata, u32.
pub const HEADER_CRC_OFFSET: usize = META_LEN_OFFSET + size_of::<u32>();
/// Reserved, u32, zero.
pub const RESERVED_OFFSET: usize = HEADER_CRC_OFFSET + size_of::<u32>();
/// Bytes of the fixed header; the metadata follows.
pub const SNAPSHOT_HEADER_LEN: usize = RESERVED_OFFSET + size_of::<u32>();

/// Largest metadata accepted: a membership of a few thousand nodes fits many times over.
pub const MAX_META_LEN: u32 = 1 << 20;

/// A zstd body's frames use a window of at most `1 << ZSTD_WINDOW_LOG_MAX` bytes (8 MiB): readers
/// refuse a frame that declares more, so a forged file cannot make a reader allocate zstd's
/// default limit of 128 MiB.
pub const ZSTD_WINDOW_LOG_MAX: u32 = 23;
/// The highest zstd level whose own window fits [`ZSTD_WINDOW_LOG_MAX`] (zstd's levels 20 to 22
/// use 32 to 128 MiB); writers cap the window of the levels above it.
pub const ZSTD_MAX_LEVEL_WITHIN_WINDOW: i32 = 19;

/// How the body is stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// The data as is.
    None = 0,
    /// A zstd stream.
    Zstd = 1,
}

/// The fixed header and the metadata of a snapshot file.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SnapshotHeader {
    /// How the body is stored.
    pub compression: Compression,
    /// Uncompressed bytes of data.
    pub data_len: u64,
    /// Bytes of body in the file.
    pub stored_len: u64,
    /// CRC-32 of the stored body.
    pub body_crc: u32,
    /// What the snapshot stands for.
    pub metadata: SnapshotMetadata,
}

/// Why a header was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum HeaderError {
    /// Fewer bytes than the header and metadata need.
    Short,
    /// Not a raftwal snapshot.
    BadMagic,
    /// Another format version.
    Version(u32),
    /// CRC mismatch.
    Checksum,
    /// A field holds a value no writer produces.
    Malformed(&'static str),
}

impl SnapshotHeader {
    /// The header and metadata bytes.
    pub fn encode(&self) -> Vec<u8> {
        let mut meta = Vec::new();
        codec::encode_snapshot_metadata(&mut meta, &self.metadata);
        let mut buf = vec![0u8; SNAPSHOT_HEADER_LEN];
        buf[MAGIC_OFFSET..VERSION_OFFSET].copy_from_slice(&SNAPSHOT_MAGIC);
        LittleEndian::write_u32(&mut buf[VERSION_OFFSET..], SNAPSHOT_VERSION);
        LittleEndian::write_u32(&mut buf[COMPRESSION_OFFSET..], self.compression as u32);
        LittleEndian::write_u64(&mut buf[DATA_LEN_OFFSET..], self.data_len);
        LittleEndian::write_u64(&mut buf[STORED_LEN_OFFSET..], self.stored_len);
        LittleEndian::write_u32(&mut buf[BODY_CRC_OFFSET..], self.body_crc);
        let meta_len = u32::try_from(meta.len()).expect("metadata below 4 GiB");
        assert!(
            meta_len <= MAX_META_LEN,
            "snapshot metadata of {meta_len} bytes is over the limit"
        );
        LittleEndian::write_u32(&mut buf[META_LEN_OFFSET..], meta_len);
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&buf[..HEADER_CRC_OFFSET]);
        hasher.update(&meta);
        LittleEndian::write_u32(&mut buf[HEADER_CRC_OFFSET..], hasher.finalize());
        buf.extend_from_slice(&meta);
        buf
    }

    /// Bytes the metadata after the fixed header takes, read from the fixed header (not yet
    /// checked; bounded by [`MAX_META_LEN`]).
    pub fn meta_len(fixed: &[u8]) -> Result<usize, HeaderError> {
        let fixed = fixed.get(..SNAPSHOT_HEADER_LEN).ok_or(HeaderError::Short)?;
        let len = LittleEndian::read_u32(&fixed[META_LEN_OFFSET..]);
        if len > MAX_META_LEN {
            return Err(HeaderError::Malformed("metadata length"));
        }
        Ok(len as usize)
    }

    /// Reads and checks the header and metadata from the start of a file.
    pub fn decode(buf: &[u8]) -> Result<SnapshotHeader, HeaderError> {
        let fixed = buf.get(..SNAPSHOT_HEADER_LEN).ok_or(HeaderError::Short)?;
        if fixed[MAGIC_OFFSET..VERSION_OFFSET] != SNAPSHOT_MAGIC {
            return Err(HeaderError::BadMagic);
        }
        let meta_len = Self::meta_len(fixed)?;
        let meta = buf
            .get(SNAPSHOT_HEADER_LEN..SNAPSHOT_HEADER_LEN + meta_len)
            .ok_or(HeaderError::Short)?;
        let mut hasher = crc32fast::Hasher::new();
        hasher.update(&fixed[..HEADER_CRC_OFFSET]);
        hasher.update(meta);
        if hasher.finalize() != LittleEndian::read_u32(&fixed[HEADER_CRC_OFFSET..]) {
            return Err(HeaderError::Checksum);
        }
        let version = LittleEndian::read_u32(&fixed[VERSION_OFFSET..]);
        if version != SNAPSHOT_VERSION {
            return Err(HeaderError::Version(version));
        }
        let compression = match LittleEndian::read_u32(&fixed[COMPRESSION_OFFSET..]) {
            0 => Compression::None,
            1 => Compression::Zstd,
            _ => return Err(HeaderError::Malformed("compression")),
        };
        if LittleEndian::read_u32(&fixed[RESERVED_OFFSET..]) != 0 {
            return Err(HeaderError::Malformed("reserved"));
        }
        let mut dec = Decoder::new(meta);
        let metadata = codec::decode_snapshot_metadata(&mut dec)
            .map_err(|_| HeaderError::Malformed("metadata"))?;
        dec.finish("metadata").map_err(|_| HeaderError::Malformed("metadata"))?;
        let header = SnapshotHeader {
            compression,
            data_len: LittleEndian::read_u64(&fixed[DATA_LEN_OFFSET..]),
            stored_len: LittleEndian::read_u64(&fixed[STORED_LEN_OFFSET..]),
            body_crc: LittleEndian::read_u32(&fixed[BODY_CRC_OFFSET..]),
            metadata,
        };
        if header.compression == Compression::None && header.stored_len != header.data_len {
            return Err(HeaderError::Malformed("uncompressed body length"));
        }
        Ok(header)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::ConfState;

    /// The offset table of DESIGN.md §6, read from the file, against the constants.
    #[test]
    fn offsets_match_the_design_table() {
        let fields = [
            (MAGIC_OFFSET, VERSION_OFFSET - MAGIC_OFFSET, "magic"),
            (VERSION_OFFSET, COMPRESSION_OFFSET - VERSION_OFFSET, "version"),
            (COMPRESSION_OFFSET, DATA_LEN_OFFSET - COMPRESSION_OFFSET, "compression"),
            (DATA_LEN_OFFSET, STORED_LEN_OFFSET - DATA_LEN_OFFSET, "data_len"),
            (STORED_LEN_OFFSET, BODY_CRC_OFFSET - STORED_LEN_OFFSET, "stored_len"),
            (BODY_CRC_OFFSET, META_LEN_OFFSET - BODY_CRC_OFFSET, "body_crc"),
            (META_LEN_OFFSET, HEADER_CRC_OFFSET - META_LEN_OFFSET, "meta_len"),
            (HEADER_CRC_OFFSET, RESERVED_OFFSET - HEADER_CRC_OFFSET, "header_crc"),
            (RESERVED_OFFSET, SNAPSHOT_HEADER_LEN - RESERVED_OFFSET, "reserved"),
        ];
        let code: Vec<(usize, usize, String)> =
            fields.iter().map(|(o, s, n)| (*o, *s, n.to_string())).collect();
        assert_eq!(
            code,
            crate::design_doc::table("snapshot-header-table"),
            "snapshot header: code vs DESIGN.md"
        );
        assert_eq!(SNAPSHOT_HEADER_LEN, 48);
    }

    fn sample() -> SnapshotHeader {
        SnapshotHeader {
            compression: Compression::Zstd,
            data_len: 1000,
            stored_len: 120,
            body_crc: 0xABCD_0123,
            metadata: SnapshotMetadata {
                index: 42,
                term: 7,
                conf_state: ConfState {
                    voters: vec![1, 2, 3],
                    learners: vec![4],
                    ..ConfState::default()
                },
            },
        }
    }

    #[test]
    fn header_round_trips_and_every_flipped_bit_is_refused() {
        let bytes = sample().encode();
        assert_eq!(SnapshotHeader::decode(&bytes), Ok(sample()));
        for bit in 0..bytes.len() * 8 {
            let mut damaged = bytes.clone();
            damaged[bit / 8] ^= 1 << (bit % 8);
            assert!(SnapshotHeader::decode(&damaged).is_err(), "bit {bit} flipped must be refused");
        }
        for cut in 0..bytes.len() {
            assert!(SnapshotHeader::decode(&bytes[..cut]).is_err(), "{cut} bytes must be refused");
        }
    }

    #[test]
    fn names_sort_newest_last_and_parse_back() {
        let names = [snapshot_name(5, 1, 10), snapshot_name(5, 1, 300), snapshot_name(5, 2, 301)];
        let mut sorted = names.clone();
        sorted.sort();
        assert_eq!(sorted, names);
        assert_eq!(parse_snapshot_name(&names[2]), Some((5, 2, 301)));
        assert!(snapshot_name(4, 9, 9) < snapshot_name(5, 1, 1), "a group's files sort together");
        assert_eq!(parse_snapshot_name("0000000000000001-0000000000000002.snap"), None);
        assert_eq!(parse_temp_group(&temp_name(7, 1, 1, 3)), Some(7));
        assert_eq!(parse_snapshot_name("x.snap"), None);
        assert_eq!(
            parse_snapshot_name(&format!("{}{}", snapshot_name(0, 1, 1), BROKEN_SUFFIX)),
            None
        );
        assert_eq!(parse_snapshot_name(&temp_name(0, 1, 1, 0)), None);
        assert_ne!(temp_name(0, 1, 1, 0), temp_name(0, 1, 1, 1));
        assert!(temp_name(0, 1, 1, u64::MAX).ends_with(TEMP_SUFFIX));
    }
}
