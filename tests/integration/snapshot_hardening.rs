//! The snapshot paths of both storages under unusual but legal use: two writers of one snapshot
//! at once, a log compacted while a snapshot streams, and a membership-only snapshot (index 0)
//! offered to a log that already holds entries.

use std::io::Write;
use std::path::Path;

use bytes::Bytes;
use raftwal::{
    ConfState, Entry, Error, MemoryStorage, Snapshot, SnapshotMetadata, Storage, WalOptions,
    WalStorage,
};

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

/// `len` incompressible bytes from `seed`, so that compression keeps them long.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut bytes = vec![0u8; len];
    raftwal::rng::Rng::new(seed).fill(&mut bytes);
    bytes
}

/// The names in the snapshot directory, sorted.
pub fn snap_files(dir: &Path) -> Vec<String> {
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
            [raftwal::snapshot::format::snapshot_name(0, 1, 8)],
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
    assert_eq!(snap_files(tmp.path()), [raftwal::snapshot::format::snapshot_name(0, 1, 8)]);
}

#[test]
fn a_snapshot_of_an_index_compacted_away_is_compacted_on_both_storages() {
    let memory = MemoryStorage::new();
    memory.append(&run(1, 10, 1)).unwrap();
    memory.compact(7).unwrap();
    assert!(matches!(memory.create_snapshot(5, None, Bytes::new()), Err(Error::Compacted)));
    assert_eq!(memory.snapshot().unwrap().metadata.index, 0, "nothing recorded");

    let tmp = tempfile::tempdir().unwrap();
    let storage = WalStorage::open(tmp.path(), options()).unwrap();
    storage.append(&run(1, 10, 1)).unwrap();
    // Compacted while the snapshot streams: the commit finds the entry gone.
    let mut writer = storage.snapshot_writer(5, None).unwrap();
    writer.write_all(b"state at five").unwrap();
    storage.compact(7).unwrap();
    assert!(matches!(writer.finish(), Err(Error::Compacted)));
    // Compacted before: refused at once.
    assert!(matches!(storage.create_snapshot(5, None, Bytes::new()), Err(Error::Compacted)));
    assert_eq!(storage.snapshot().unwrap().metadata.index, 0, "nothing recorded");
    assert_eq!(storage.first_index().unwrap(), 8);
    drop(storage);
    let storage = WalStorage::open(tmp.path(), options()).unwrap();
    assert_eq!(storage.snapshot().unwrap().metadata.index, 0);
    assert_eq!(snap_files(tmp.path()), Vec::<String>::new(), "no file left behind");
}

fn membership_only() -> Snapshot {
    Snapshot {
        metadata: SnapshotMetadata { index: 0, term: 0, conf_state: voters(&[1, 2, 3]) },
        data: Bytes::new(),
    }
}

#[test]
fn an_index_0_snapshot_bootstraps_an_empty_log_and_never_wipes_one_on_both_storages() {
    let memory = MemoryStorage::new();
    memory.apply_snapshot(membership_only()).unwrap();
    memory.append(&run(1, 5, 1)).unwrap();
    assert!(matches!(memory.apply_snapshot(membership_only()), Err(Error::SnapshotOutOfDate)));
    assert_eq!(memory.last_index().unwrap(), 5);
    assert_eq!(memory.entries(1, 6, u64::MAX).unwrap(), run(1, 5, 1));

    let tmp = tempfile::tempdir().unwrap();
    let storage = WalStorage::open(tmp.path(), options()).unwrap();
    storage.apply_snapshot(membership_only()).unwrap();
    assert_eq!(storage.initial_state().unwrap().conf_state, voters(&[1, 2, 3]));
    storage.append(&run(1, 5, 1)).unwrap();
    assert!(matches!(storage.apply_snapshot(membership_only()), Err(Error::SnapshotOutOfDate)));
    assert_eq!(storage.last_index().unwrap(), 5);
    drop(storage);
    let storage = WalStorage::open(tmp.path(), options()).unwrap();
    assert_eq!(storage.last_index().unwrap(), 5);
    assert_eq!(storage.entries(1, 6, u64::MAX).unwrap(), run(1, 5, 1));
}

/// Found by the `recovery` fuzz target: a second index-0 snapshot on a log that holds one (and
/// no entry) was accepted, and written under the same file name as the first; when its marker
/// then failed, the first marker named the second's file, and a power cut later the storage
/// answered the first's membership with the second's data. A storage that holds a snapshot,
/// even at index 0, has been bootstrapped: another index-0 snapshot is out of date (etcd:
/// `ErrSnapOutOfDate` for any index at or below the current one), on both storages.
#[test]
fn a_second_index_0_snapshot_is_out_of_date_and_changes_nothing_on_both_storages() {
    let second = Snapshot {
        metadata: SnapshotMetadata { index: 0, term: 0, conf_state: voters(&[1]) },
        data: Bytes::from_static(b"other"),
    };
    let first = Snapshot { data: Bytes::from_static(b"first"), ..membership_only() };
    let memory = MemoryStorage::new();
    memory.apply_snapshot(first.clone()).unwrap();
    assert!(matches!(memory.apply_snapshot(second.clone()), Err(Error::SnapshotOutOfDate)));
    assert_eq!(memory.snapshot().unwrap(), first);

    let tmp = tempfile::tempdir().unwrap();
    let storage = WalStorage::open(tmp.path(), options()).unwrap();
    storage.apply_snapshot(first.clone()).unwrap();
    assert!(matches!(storage.apply_snapshot(second), Err(Error::SnapshotOutOfDate)));
    assert_eq!(storage.snapshot().unwrap(), first);
    drop(storage);
    let storage = WalStorage::open(tmp.path(), options()).unwrap();
    assert_eq!(storage.snapshot().unwrap(), first);
    assert_eq!(storage.initial_state().unwrap().conf_state, voters(&[1, 2, 3]));
}

/// Found by the `snapshot_recovery` fuzz target: the marked snapshot is damaged, and the newest
/// older file, named for index 6, holds a valid snapshot of index 4. Falling back to it wrote a
/// marker for index 4, whose file does not exist, and every later `snapshot()` failed. A file
/// whose contents disagree with its name is damage: open must not fall back to it.
#[test]
fn open_never_falls_back_to_a_snapshot_file_whose_contents_disagree_with_its_name() {
    let dir = tempfile::tempdir().unwrap();
    let options = WalOptions { snapshot_retention: 3, ..options() };
    let storage = WalStorage::open(dir.path(), options.clone()).unwrap();
    storage.save(None, &run(1, 10, 1)).unwrap();
    for index in [4, 6, 8] {
        let image = Bytes::from(format!("image at {index}"));
        storage.create_snapshot(index, Some(voters(&[1])), image).unwrap();
    }
    storage.close().unwrap();
    let snap = dir.path().join(raftwal::storage::SNAP_DIR);
    let name = |index: u64| raftwal::snapshot::format::snapshot_name(0, 1, index);
    assert_eq!(snap_files(dir.path()), [name(4), name(6), name(8)]);
    // The marked file (8) damaged; the file named 6 replaced by the bytes of 4, and 4 gone.
    let marked = snap.join(name(8));
    let mut bytes = std::fs::read(&marked).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0x40;
    std::fs::write(&marked, bytes).unwrap();
    std::fs::rename(snap.join(name(4)), snap.join(name(6))).unwrap();

    match WalStorage::open(dir.path(), options) {
        Err(Error::Corruption { .. }) => {}
        Err(e) => panic!("expected Corruption, got {e}"),
        Ok(storage) => {
            // A fallback is acceptable only to a snapshot that can be read back.
            let snapshot = storage.snapshot();
            assert!(snapshot.is_ok(), "open fell back to a snapshot it cannot read: {snapshot:?}");
            panic!("fell back to {:?}", snapshot.unwrap().metadata);
        }
    }
}

/// A log stopped by a failed sync refuses a snapshot before any I/O: not one file system
/// operation, nothing under `snap/`, and after a power cut an empty log still has no
/// membership. (Found by the `recovery` fuzz target: the file of a refused bootstrap was
/// written, its removal then failed on the dying file system, and the next open took the file
/// for a bootstrap a crash had interrupted, a membership the caller had been told was refused.)
#[test]
fn a_poisoned_log_refuses_a_snapshot_without_writing_its_file() {
    use raftwal::io::{CrashFs, Fault, FaultKind, FileSystem, Fs};
    use std::sync::Arc;

    for install in [true, false] {
        let fs = CrashFs::new();
        let open =
            || WalStorage::open_with_fs(Arc::new(fs.clone()) as Fs, Path::new("/node"), options());
        let storage = open().unwrap();
        let snap_dir = Path::new("/node").join(raftwal::storage::SNAP_DIR);
        let files_before = fs.list(&snap_dir).unwrap_or_default();
        if !install {
            storage.append(&run(1, 3, 1)).unwrap();
            storage.sync().unwrap();
        }
        fs.inject(Fault { at_op: fs.op_count(), kind: FaultKind::SyncEio });
        let hs = raftwal::HardState { term: 2, vote: 1, commit: 0 };
        assert!(storage.save(Some(&hs), &[]).is_err(), "the sync fails");
        assert!(storage.sync().is_err(), "and the log is poisoned");
        let ops = fs.op_count();
        let answer = if install {
            let metadata = SnapshotMetadata { index: 0, term: 0, conf_state: voters(&[1]) };
            storage.apply_snapshot(Snapshot { metadata, data: Bytes::from_static(b"boot") })
        } else {
            storage.create_snapshot(3, Some(voters(&[1, 2])), Bytes::from_static(b"s")).map(|_| ())
        };
        assert!(matches!(answer, Err(Error::Poisoned)), "install {install}: {answer:?}");
        assert_eq!(fs.op_count(), ops, "install {install}: refused before any I/O");
        assert_eq!(
            fs.list(&snap_dir).unwrap_or_default(),
            files_before,
            "install {install}: nothing written under snap/"
        );
        drop(storage);
        fs.crash_lose_all_unsynced();
        let reopened = open().unwrap();
        let state = reopened.initial_state().unwrap();
        if install {
            assert_eq!(state.conf_state, ConfState::default(), "no bootstrap took place");
        }
        assert_eq!(reopened.snapshot().unwrap().metadata.index, 0, "install {install}");
    }
}

/// A snapshot whose marker write fails keeps its file: the failed write may have left the
/// marker's bytes in the segment (a short write, then an error for the rest, whose bytes the
/// preallocated file may already hold), so after a power cut the log can name the snapshot,
/// and open must find its file. Every power cut (over many seeds) must open, on the old
/// snapshot or on the new one with its data intact. (Found by the `recovery` fuzz target: the
/// failed commit removed the file, a crash kept the marker, and open refused the log with
/// "missing file".)
#[test]
fn a_snapshot_whose_marker_write_fails_keeps_its_file_for_the_marker_it_may_have_left() {
    use raftwal::io::{CrashFs, Fault, FaultKind, OpKind};
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    let options = WalOptions { sync_policy: raftwal::SyncPolicy::Never, ..options() };
    let data = Bytes::from(noise(4, 2000));
    let mut kept = 0;
    for seed in 0..64u64 {
        let fs = CrashFs::new();
        let open = || {
            WalStorage::open_with_fs(
                Arc::new(fs.clone()) as raftwal::io::Fs,
                Path::new("/node"),
                options.clone(),
            )
        };
        let storage = open().unwrap();
        storage.append(&run(1, 3, 1)).unwrap();
        // The first write after the snapshot directory's fsync is the marker's.
        let marker_write = Arc::new(AtomicU64::new(u64::MAX));
        let (seen, probe) = (marker_write.clone(), fs.clone());
        let dir_synced = Arc::new(std::sync::atomic::AtomicBool::new(false));
        fs.set_hook(Some(Arc::new(move |event: &raftwal::io::OpEvent<'_>| {
            let in_snap = event.path.is_some_and(|p| p.ends_with(raftwal::storage::SNAP_DIR));
            if event.kind == OpKind::SyncDir && in_snap {
                dir_synced.store(true, Ordering::SeqCst);
            } else if event.kind == OpKind::Write
                && dir_synced.load(Ordering::SeqCst)
                && seen.load(Ordering::SeqCst) == u64::MAX
            {
                let at_op = probe.op_count();
                seen.store(at_op, Ordering::SeqCst);
                // Half, then half of the rest, then an error for the last quarter.
                for kind in [FaultKind::ShortWrite, FaultKind::ShortWrite, FaultKind::WriteEio] {
                    probe.inject(Fault { at_op, kind });
                }
            }
            Ok(())
        })));
        let metadata = SnapshotMetadata { index: 4, term: 1, conf_state: voters(&[1]) };
        let answer = storage.apply_snapshot(Snapshot { metadata, data: data.clone() });
        assert!(matches!(answer, Err(Error::Io(_))), "seed {seed}: {answer:?}");
        assert_ne!(marker_write.load(Ordering::SeqCst), u64::MAX, "the marker was written");
        fs.set_hook(None);
        drop(storage);
        fs.clear_faults();
        fs.crash(seed);
        let reopened = open().unwrap_or_else(|e| panic!("seed {seed}: the log opens: {e}"));
        let snapshot = reopened.snapshot().unwrap();
        match snapshot.metadata.index {
            0 => {}
            4 => {
                assert_eq!(snapshot.data, data, "seed {seed}: the installed snapshot's data");
                assert_eq!(reopened.first_index().unwrap(), 5, "seed {seed}");
                kept += 1;
            }
            other => panic!("seed {seed}: recovered a snapshot at {other}"),
        }
    }
    // The case needs power cuts that keep the marker's bytes; some seeds must give one.
    assert!(kept > 0, "no power cut kept the marker, so the case was not tried");
}

/// A bootstrap whose marker write fails keeps its file (the marker may have reached the disk),
/// and that file has the empty marker's name: the live storage must still answer the empty
/// snapshot it holds, not the file's, until an open settles which one the disk holds. (Found
/// by the `recovery` fuzz target: `snapshot()` answered the refused bootstrap's membership and
/// data while every other answer was the empty storage's.)
#[test]
fn a_failed_bootstrap_leaves_the_live_storage_answering_the_empty_snapshot() {
    use raftwal::io::{CrashFs, Fault, FaultKind, OpKind};
    use std::io::Read;
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, Ordering};

    let fs = CrashFs::new();
    let storage = WalStorage::open_with_fs(
        Arc::new(fs.clone()) as raftwal::io::Fs,
        Path::new("/node"),
        options(),
    )
    .unwrap();
    // The first write after the snapshot directory's fsync is the marker's, and fails.
    let (dir_synced, probe) = (Arc::new(AtomicBool::new(false)), fs.clone());
    let armed = AtomicBool::new(false);
    fs.set_hook(Some(Arc::new(move |event: &raftwal::io::OpEvent<'_>| {
        let in_snap = event.path.is_some_and(|p| p.ends_with(raftwal::storage::SNAP_DIR));
        if event.kind == OpKind::SyncDir && in_snap {
            dir_synced.store(true, Ordering::SeqCst);
        } else if event.kind == OpKind::Write
            && dir_synced.load(Ordering::SeqCst)
            && !armed.swap(true, Ordering::SeqCst)
        {
            probe.inject(Fault { at_op: probe.op_count(), kind: FaultKind::WriteEio });
        }
        Ok(())
    })));
    let metadata = SnapshotMetadata { index: 0, term: 0, conf_state: voters(&[1]) };
    let answer = storage.apply_snapshot(Snapshot { metadata, data: Bytes::from_static(b"boot") });
    assert!(matches!(answer, Err(Error::Io(_))), "{answer:?}");
    fs.set_hook(None);
    let snapshot = storage.snapshot().unwrap();
    assert_eq!(snapshot.metadata, SnapshotMetadata::default(), "the empty snapshot");
    assert!(snapshot.data.is_empty());
    assert_eq!(storage.initial_state().unwrap().conf_state, ConfState::default());
    // The streaming reader agrees: it finds no snapshot to stream, as before the bootstrap.
    match storage.snapshot_reader() {
        Ok(mut reader) => {
            let mut data = Vec::new();
            reader.read_to_end(&mut data).unwrap();
            assert_eq!(reader.metadata(), &SnapshotMetadata::default(), "streamed {data:?}");
        }
        Err(Error::Io(e)) => assert_eq!(e.kind(), std::io::ErrorKind::NotFound, "{e}"),
        Err(e) => panic!("{e}"),
    }
}
