//! `raftwal bench`: fsync and batch throughput, group commit, reads, recovery and index memory,
//! each set against the raw limit of the same disk measured in the same run.
//!
//! Absolute figures on shared disks swing widely from one hour to the next, so every write
//! workload alternates rounds of the log with rounds of a raw pwrite + fdatasync loop of the same
//! byte count into a preallocated, zero-filled file, and prints the ratio.

mod groups;
mod raw;
pub mod report;
mod target;
mod workloads;

#[cfg(feature = "plot")]
mod plot;
#[cfg(feature = "raft-engine")]
mod raft_engine;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use clap::{Args, ValueEnum};
use indicatif::{ProgressBar, ProgressStyle};

use report::Report;
use workloads::{Ctx, Engine};

/// Errors of the benchmark (I/O, the log's own, or a result that does not add up).
pub type BenchResult<T> = Result<T, Box<dyn std::error::Error + Send + Sync>>;

/// Arguments of `raftwal bench`.
#[derive(Args, Debug)]
pub struct BenchArgs {
    /// Directory to measure in: a temporary directory is made inside it and removed at the end
    /// [default: the current directory, so the run measures its file system].
    #[arg(long, value_name = "DIR")]
    dir: Option<PathBuf>,
    /// A run of about 10 seconds (a 128 MiB log for recovery instead of 1 GiB).
    #[arg(long)]
    quick: bool,
    /// Print the results as JSON on stdout instead of a table.
    #[arg(long)]
    json: bool,
    /// Write a latency histogram of the write workloads to this .svg file (needs the `plot`
    /// feature).
    #[arg(long, value_name = "PATH")]
    plot: Option<PathBuf>,
    /// Run the same workloads on another engine in the same run and print the ratios (needs the
    /// `raft-engine` feature).
    #[arg(long, value_enum, value_name = "ENGINE")]
    compare: Option<Compare>,
    /// Run only these workloads (may be repeated), e.g. `--only reads` [default: all].
    #[arg(long, value_enum, value_name = "WORKLOADS")]
    only: Vec<Only>,
    /// Payload of the 10,000-group log the multi-group open row writes and opens, in MiB
    /// [default: 256, 32 with --quick]. The log takes up to twice that on disk, and the open is
    /// timed from the page cache: it should fit in memory.
    #[arg(long, value_name = "MIB", value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    groups_open_mib: Option<u64>,
}

/// Families of workloads `--only` selects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Only {
    /// Single-entry append+sync of 64 B, 1 KiB and 16 KiB.
    Append,
    /// Batches of 16, 256 and 1024 entries per sync, and 1024 compacting behind.
    Batch,
    /// 1, 2, 4 and 8 concurrent writers.
    Concurrent,
    /// entries() reads: cache hit, sealed segment, after reopen.
    Reads,
    /// Recovery of a large log, and index memory.
    Recovery,
    /// Multi-group writes, open and churn.
    Groups,
}

/// Engines raftwal can be compared with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum Compare {
    /// raft-engine 0.4, TiKV's log engine.
    RaftEngine,
}

/// How long and how large the workloads are. Rounds are short and many: a shared disk's sync
/// rate changes within seconds, and fine interleaving lets the log and the raw loop see the
/// same disk.
#[derive(Clone, Debug)]
pub struct Budget {
    /// Rounds of each write workload (each round runs the raw loop, then every engine).
    pub rounds: u32,
    /// Duration of one engine's (or the raw loop's) round.
    pub round: Duration,
    /// Uncounted run of the raw loop and of each engine before a write workload's rounds.
    pub warmup: Duration,
    /// Duration of each read workload.
    pub read: Duration,
    /// Bytes written for the sequential bandwidth figure, once per append workload.
    pub seq_bytes: u64,
    /// Size of the log the read workloads run on.
    pub read_fill_bytes: u64,
    /// Size of the log recovery opens.
    pub recovery_bytes: u64,
    /// Groups of the multi-group log that is opened.
    pub open_groups: u64,
    /// Payload bytes of the multi-group log that is opened.
    pub open_bytes: u64,
    /// Payload bytes the churn workload writes.
    pub churn_bytes: u64,
}

impl Budget {
    fn new(quick: bool) -> Budget {
        if quick {
            Budget {
                rounds: 5,
                round: Duration::from_millis(40),
                warmup: Duration::from_millis(100),
                read: Duration::from_millis(150),
                seq_bytes: 16 << 20,
                read_fill_bytes: 32 << 20,
                recovery_bytes: 128 << 20,
                open_groups: 1_000,
                open_bytes: 32 << 20,
                churn_bytes: 32 << 20,
            }
        } else {
            Budget {
                rounds: 16,
                round: Duration::from_millis(100),
                warmup: Duration::from_millis(400),
                read: Duration::from_millis(600),
                seq_bytes: 64 << 20,
                read_fill_bytes: 64 << 20,
                recovery_bytes: 1 << 30,
                open_groups: 10_000,
                open_bytes: 256 << 20,
                churn_bytes: 256 << 20,
            }
        }
    }
}

/// The progress display: one bar over the workloads, naming the current one.
pub struct Progress {
    bar: ProgressBar,
    started: std::cell::Cell<bool>,
}

impl Progress {
    fn new(workloads: u64) -> Progress {
        let bar = ProgressBar::new(workloads);
        bar.set_style(
            ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}",
            )
            .expect("valid progress template"),
        );
        bar.enable_steady_tick(Duration::from_millis(100));
        Progress { bar, started: std::cell::Cell::new(false) }
    }

    /// Moves on to workload `name`.
    pub fn start(&self, name: &str) {
        if self.started.replace(true) {
            self.bar.inc(1);
        }
        self.bar.set_message(name.to_string());
    }

    /// Shows that the current workload is alive.
    pub fn tick(&self) {
        self.bar.tick();
    }
}

/// Runs `raftwal bench`.
pub fn run(args: BenchArgs) -> ExitCode {
    match bench(&args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("raftwal bench: {e}");
            ExitCode::FAILURE
        }
    }
}

fn engines(args: &BenchArgs) -> BenchResult<Vec<Engine>> {
    #[cfg_attr(not(feature = "raft-engine"), allow(unused_mut))]
    let mut engines = vec![Engine {
        name: "raftwal",
        open: target::open_raftwal,
        open_groups: groups::open_raftwal,
    }];
    match args.compare {
        None => {}
        #[cfg(feature = "raft-engine")]
        Some(Compare::RaftEngine) => {
            engines.push(Engine {
                name: "raft-engine",
                open: raft_engine::open,
                open_groups: raft_engine::open_groups,
            });
        }
        #[cfg(not(feature = "raft-engine"))]
        Some(Compare::RaftEngine) => {
            return Err("this raftwal was built without the comparison with raft-engine; run \
                 `cargo run --release -p raftwal-tools --features raft-engine -- bench --compare \
                 raft-engine`"
                .into());
        }
    }
    Ok(engines)
}

fn bench(args: &BenchArgs) -> BenchResult<()> {
    if let Some(path) = &args.plot
        && path.extension().and_then(|e| e.to_str()) != Some("svg")
    {
        return Err(format!("--plot {}: name an .svg file", path.display()).into());
    }
    #[cfg(not(feature = "plot"))]
    if args.plot.is_some() {
        return Err("this raftwal was built without plots; run `cargo run --release -p \
             raftwal-tools --features plot -- bench --plot PATH`"
            .into());
    }
    let engines = engines(args)?;
    let parent = args.dir.clone().unwrap_or_else(|| PathBuf::from("."));
    let temp = tempfile::Builder::new().prefix(".raftwal-bench-").tempdir_in(&parent)?;
    let dir = temp.path();
    let mut budget = Budget::new(args.quick);
    if let Some(mib) = args.groups_open_mib {
        budget.open_bytes = mib << 20;
    }
    let started = Instant::now();
    let run = |w: Only| args.only.is_empty() || args.only.contains(&w);
    // 3 append and 3 batch workloads, 4 concurrent, reads, recovery, 3 multi-group writes,
    // multi-group open, churn.
    let counts = [
        (Only::Append, 3u64),
        (Only::Batch, 4),
        (Only::Concurrent, 4),
        (Only::Reads, 1),
        (Only::Recovery, 1),
        (Only::Groups, 5),
    ];
    let progress = Progress::new(counts.iter().filter(|(w, _)| run(*w)).map(|(_, n)| n).sum());
    let mut ctx = Ctx {
        dir,
        budget: &budget,
        engines: &engines,
        sync_loop: raw::SyncLoop::new(dir)?,
        progress: &progress,
    };
    let mut rows = Vec::new();
    if run(Only::Append) {
        for size in [64, 1024, 16 << 10] {
            rows.push(workloads::append(&mut ctx, "append+sync", 1, size, None)?);
        }
    }
    if run(Only::Batch) {
        for count in [16, 256, 1024] {
            rows.push(workloads::append(&mut ctx, "batch", count, 1024, None)?);
        }
        // The same in steady state: compacting behind, segments are recycled, not prepared.
        let keep = Some(workloads::STEADY_KEEP_ENTRIES);
        rows.push(workloads::append(&mut ctx, "batch", 1024, 1024, keep)?);
    }
    if run(Only::Concurrent) {
        for writers in [1, 2, 4, 8] {
            rows.push(workloads::concurrent(&mut ctx, writers)?);
        }
    }
    if run(Only::Reads) {
        rows.extend(workloads::reads(&mut ctx)?);
    }
    if run(Only::Recovery) {
        rows.extend(workloads::recovery(&mut ctx)?);
    }
    if run(Only::Groups) {
        for writers in [1, 4] {
            rows.push(groups::writes(&mut ctx, writers, false)?);
        }
        rows.push(groups::writes(&mut ctx, 1, true)?);
        rows.extend(groups::open(&mut ctx)?);
        rows.push(groups::churn(&mut ctx)?);
    }
    progress.bar.finish_and_clear();
    drop(ctx);

    let mut notes = vec![
        format!(
            "Each write workload ran {} rounds of {} ms, alternating the raw loop and each engine, \
             after {} ms of each not counted.",
            budget.rounds,
            budget.round.as_millis(),
            budget.warmup.as_millis()
        ),
        "Concurrent writers append to one log: raftwal writes each append under a lock that \
         hands out indices, then the writer calls sync(), which joins or leads a group commit."
            .into(),
        "reads after reopen: the entries that were cache hits, read again after closing and \
         reopening the log (empty entry cache; the files are still in the page cache)."
            .into(),
        "index memory while appending counts the index's spare capacity (it grows by doubling); \
         recovery sizes it to fit."
            .into(),
        format!(
            "Multi-group rows: each batch carries one {} B entry and the hard state of {} \
             distinct random groups; with 4 writers each thread owns a quarter of the groups. \
             MB/s is payload.",
            groups::ENTRY_BYTES,
            groups::GROUPS_PER_BATCH
        ),
    ];
    if args.quick {
        notes.push(format!(
            "--quick: recovery opens a {} log instead of 1 GiB, the multi-group open a log of \
             {} groups and {} instead of 10,000 groups and 256 MiB, the churn writes {} instead \
             of 256 MiB, and rounds are short.",
            workloads::human_bytes(budget.recovery_bytes),
            budget.open_groups,
            workloads::human_bytes(budget.open_bytes),
            workloads::human_bytes(budget.churn_bytes)
        ));
    }
    if engines.len() > 1 {
        notes.push(
            "raft-engine: default configuration but the file size, one region per writer (per \
             group in the multi-group rows, whose hard state is a put_message), entries are \
             protobuf messages of the same payload size."
                .into(),
        );
    }
    let goals = report::goals(&rows);
    let report = Report {
        dir: std::fs::canonicalize(&parent)?.display().to_string(),
        quick: args.quick,
        seconds: started.elapsed().as_secs_f64(),
        rows,
        goals,
        notes,
    };
    #[cfg(feature = "plot")]
    if let Some(path) = &args.plot {
        plot::latency(path, &report)?;
    }
    if args.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "raftwal bench on {} ({}; {:.0} s)\n",
            report.dir,
            if args.quick { "quick" } else { "full" },
            report.seconds
        );
        print!("{}", report::table(&report));
    }
    temp.close()?;
    Ok(())
}
