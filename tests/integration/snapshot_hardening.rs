//! The snapshot paths of both storages under unusual but legal use: two writers of one snapshot
//! at once.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use raftwal::{ConfState, Entry, Error, SnapshotMetadata, Storage, WalOptions, WalStorage};

fn options() -> WalOptions {
    WalOptions {
        segment_size_bytes: 64 << 10,
        prepare_in_background: false,
        ..WalOptions::default()
    }
}

fn run(lo: u64, hi: u64, term: u64) -> Vec<Entry> {
    (lo..=hi).map(|i| Entry::new(i, term, format!("entry {i}").into_bytes())).collect()
}

fn voters(ids: &[u64]) -> ConfState {
    ConfState { voters: ids.to_vec(), ..ConfState::default() }
}

/// `len` incompressible bytes (xorshift from `seed`), so that compression keeps them long.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// The names in the snapshot directory, sorted.
fn snap_files(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir.join(raftwal::storage::SNAP_DIR))
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    names.sort();
    names
}

/// Bytes per interleaved write: above the snapshot writer's 256 KiB buffer together with the
/// flush after each, so that every chunk reaches the file before the other writer's.
const CHUNK_BYTES: usize = 100 << 10;

#[test]
fn two_writers_of_one_snapshot_both_finishing_leave_the_committed_file_intact() {
    for install in [false, true] {
        let tmp = tempfile::tempdir().unwrap();
        let storage = WalStorage::open(tmp.path(), options()).unwrap();
        storage.append(&run(1, 10, 1)).unwrap();
        let metadata = SnapshotMetadata { index: 8, term: 1, conf_state: voters(&[1, 2, 3]) };
        let writer = || {
            if install {
                storage.snapshot_installer(metadata.clone()).unwrap()
            } else {
                storage.snapshot_writer(8, Some(voters(&[1, 2, 3]))).unwrap()
            }
        };
        let (mut a, mut b) = (writer(), writer());
        let (data_a, data_b) = (noise(1, 6 * CHUNK_BYTES), noise(2, 7 * CHUNK_BYTES));
        for (chunk_a, chunk_b) in data_a.chunks(CHUNK_BYTES).zip(data_b.chunks(CHUNK_BYTES)) {
            a.write_all(chunk_a).unwrap();
            a.flush().unwrap();
            b.write_all(chunk_b).unwrap();
            b.flush().unwrap();
        }
        let committed = a.finish().unwrap();
        assert_eq!(committed.data, Bytes::from(data_a.clone()), "install {install}");
        // The second writer goes on after the first one's file was committed.
        b.write_all(&data_b[6 * CHUNK_BYTES..]).unwrap();
        b.flush().unwrap();
        assert!(
            matches!(b.finish(), Err(Error::SnapshotOutOfDate)),
            "install {install}: the same snapshot is committed already"
        );
        drop(storage);

        let storage = WalStorage::open(tmp.path(), options()).unwrap();
        let snapshot = storage.snapshot().unwrap();
        assert_eq!(snapshot.metadata, metadata, "install {install}");
        assert_eq!(snapshot.data, Bytes::from(data_a), "install {install}");
        assert_eq!(
            snap_files(tmp.path()),
            [raftwal::snapshot::format::snapshot_name(1, 8)],
            "install {install}: one snapshot file, no temp file"
        );
    }
}

#[test]
fn a_dropped_writer_of_one_snapshot_leaves_the_other_writers_file_alone() {
    let tmp = tempfile::tempdir().unwrap();
    let storage = WalStorage::open(tmp.path(), options()).unwrap();
    storage.append(&run(1, 10, 1)).unwrap();
    let (mut a, mut b) =
        (storage.snapshot_writer(8, None).unwrap(), storage.snapshot_writer(8, None).unwrap());
    let (data_a, data_b) = (noise(3, 4 * CHUNK_BYTES), noise(4, 2 * CHUNK_BYTES));
    a.write_all(&data_a[..2 * CHUNK_BYTES]).unwrap();
    a.flush().unwrap();
    b.write_all(&data_b).unwrap();
    b.flush().unwrap();
    drop(b);
    a.write_all(&data_a[2 * CHUNK_BYTES..]).unwrap();
    let committed = a.finish().unwrap();
    assert_eq!(committed.data, Bytes::from(data_a.clone()));
    drop(storage);

    let storage = WalStorage::open(tmp.path(), options()).unwrap();
    assert_eq!(storage.snapshot().unwrap().data, Bytes::from(data_a));
    assert_eq!(snap_files(tmp.path()), [raftwal::snapshot::format::snapshot_name(1, 8)]);
}
