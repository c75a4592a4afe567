//! The `raftwal` command.

mod bench;

use std::process::ExitCode;
use std::time::Instant;

use clap::{Parser, Subcommand};
use raftwal::{Entry, HardState, MemoryStorage, Storage};

#[derive(Parser)]
#[command(name = "raftwal", version, about = "Benchmark, inspect and repair raftwal logs")]
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
    /// Measure fsync and batch throughput, group commit, reads and recovery against the raw
    /// limit of the same disk.
    Bench(bench::BenchArgs),
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
