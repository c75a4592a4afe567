//! The write-ahead log: segment files of checksummed, chained records.

pub mod format;
pub mod recovery;
