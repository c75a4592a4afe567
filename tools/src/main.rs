//! The `raftwal` command.
//!
//! Exit codes of the inspection commands (`dump`, `verify`, `repair`, `stat`): 0 clean (or
//! repaired), 1 corruption (or a repair refused), 2 usage or I/O error, 3 a torn tail only
//! (which opening the log cuts).

mod bench;
mod inspect;
mod readonly;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Instant;

use clap::{Args, Parser, Subcommand};
use raftwal::wal::format::DEFAULT_MAX_RECORD_BYTES;
use raftwal::{Entry, HardState, MemoryStorage, Storage};

#[derive(Parser)]
#[command(
    name = "raftwal",
    version,
    about = "Benchmark, inspect and repair raftwal logs",
    after_help = "Exit codes of dump, verify, repair and stat: 0 clean (or repaired), \
                  1 corruption (or a repair refused), 2 usage or I/O error, 3 a torn tail only."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Append, read back, compact and snapshot a log in memory, and report what was checked.
    Smoke {
        /// Entries to append.
        #[arg(long, default_value_t = 100_000)]
        entries: u64,
        /// Payload bytes per entry.
        #[arg(long, default_value_t = 256)]
        entry_size: usize,
    },
    /// Print every record of a log, like etcd-dump-logs.
    ///
    /// Entries (index, term, type, size and the start of the data), hard states, snapshot
    /// markers, compactions, group removals and checkpoints, in log order. Records that recovery
    /// would drop are marked `x`. With --group, only that group's records (and its line of each
    /// checkpoint); without it, every group's, with a group column. With --json, one JSON object
    /// per line.
    Dump {
        #[command(flatten)]
        target: Target,
        /// Show entries from this index on, and other records written after entry FROM (of the
        /// same group).
        #[arg(long)]
        from: Option<u64>,
        /// Show entries up to this index, and other records written before entry TO + 1 (of the
        /// same group).
        #[arg(long)]
        to: Option<u64>,
    },
    /// Check every record, and the snapshot files of a group; the exit code says what was found.
    ///
    /// Reads every segment and the snapshot files of the group (--group, default 0) through and
    /// checks every CRC. On damage, prints the
    /// segment, the offset, the kind and the entries affected. Exit 0 when clean, 1 on
    /// corruption, 3 on a torn tail only (which opening the log cuts), 2 on usage or I/O errors.
    Verify {
        #[command(flatten)]
        target: Target,
    },
    /// Cut a torn tail; refuse mid-log corruption unless --force-truncate.
    ///
    /// Keeps a `<segment>.broken` copy of every segment it cuts or removes. Corruption (damage to
    /// data that had been made durable) is cut only with --force-truncate, which first prints
    /// what it drops.
    Repair {
        #[command(flatten)]
        target: Target,
        /// Cut the log at mid-log corruption too, dropping every record from the damage on
        /// (listed before anything is changed). Only for a node whose log will be re-fetched
        /// from its leader.
        #[arg(long)]
        force_truncate: bool,
    },
    /// Summarize a log: segments, groups, first and last index, hard state, snapshots.
    ///
    /// Segments with their sizes and entry ranges, the number of groups and the ones pinning the
    /// most segment bytes, and of the chosen group the first and last index, the hard state, the
    /// snapshot marker and the snapshot files.
    Stat {
        #[command(flatten)]
        target: Target,
    },
    /// Measure fsync and batch throughput, group commit, reads and recovery against the raw
    /// limit of the same disk.
    Bench(bench::BenchArgs),
}

/// The directory an inspection command works on.
#[derive(Args)]
struct Target {
    /// A storage directory (holding wal/ and snap/) or a bare WAL directory (holding *.wal).
    dir: PathBuf,
    /// Print JSON for scripts instead of tables.
    #[arg(long)]
    json: bool,
    /// The largest record payload the log was written with (WalOptions::max_record_bytes).
    #[arg(long, default_value_t = DEFAULT_MAX_RECORD_BYTES)]
    max_record_bytes: u32,
    /// The Raft group whose entries, state and snapshot files are shown [default: 0, the group
    /// `WalStorage` uses]. `dump` without it shows every group's records.
    #[arg(long)]
    group: Option<u64>,
}

impl Target {
    fn group(&self) -> u64 {
        self.group.unwrap_or(0)
    }
}

fn run_inspection(
    name: &str,
    target: &Target,
    command: impl FnOnce(&inspect::Layout) -> Result<u8, inspect::Failure>,
) -> ExitCode {
    let result = inspect::Layout::find(&target.dir).and_then(|layout| command(&layout));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(inspect::Failure(why)) => {
            eprintln!("raftwal {name}: {why}");
            ExitCode::from(inspect::EXIT_ERROR)
        }
    }
}

fn main() -> ExitCode {
    match Cli::parse().command {
        Command::Smoke { entries, entry_size } => match smoke(entries, entry_size) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("raftwal smoke: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Dump { target, from, to } => run_inspection("dump", &target, |layout| {
            inspect::dump(layout, target.max_record_bytes, target.group, from, to, target.json)
        }),
        Command::Verify { target } => run_inspection("verify", &target, |layout| {
            inspect::verify(layout, target.max_record_bytes, target.group(), target.json)
        }),
        Command::Repair { target, force_truncate } => run_inspection("repair", &target, |layout| {
            let group = target.group();
            inspect::repair(layout, target.max_record_bytes, group, force_truncate, target.json)
        }),
        Command::Stat { target } => run_inspection("stat", &target, |layout| {
            inspect::stat(layout, target.max_record_bytes, target.group(), target.json)
        }),
        Command::Bench(args) => bench::run(args),
    }
}

fn smoke(count: u64, entry_size: usize) -> raftwal::Result<()> {
    const BATCH: u64 = 256;
    let storage = MemoryStorage::new();
    let payload = bytes::Bytes::from(vec![0xA5u8; entry_size]);
    let started = Instant::now();
    let mut index = 1;
    while index <= count {
        let end = (index + BATCH).min(count + 1);
        let batch: Vec<Entry> = (index..end).map(|i| Entry::new(i, 1, payload.clone())).collect();
        storage.append(&batch)?;
        storage.set_hard_state(HardState { term: 1, vote: 1, commit: end - 1 })?;
        index = end;
    }
    let appended = started.elapsed();
    let read = storage.entries(1, count + 1, u64::MAX)?;
    let intact = read.iter().zip(1..).all(|(e, i)| e.index == i && e.data == payload);
    if read.len() as u64 != count || !intact {
        return Err(raftwal::Error::ContractViolation(
            "read back differs from what was appended".into(),
        ));
    }
    let half = count / 2;
    storage.create_snapshot(half, None, bytes::Bytes::from_static(b"state"))?;
    storage.compact(half)?;
    println!(
        "appended {count} entries of {entry_size} B in {appended:?} ({:.0} entries/s); read back intact; \
         first_index after compact({half}) = {}, last_index = {}",
        count as f64 / appended.as_secs_f64(),
        storage.first_index()?,
        storage.last_index()?
    );
    Ok(())
}
