//! `raftwal-kv`: a replicated key-value store, one process per node, on the bundled Raft core
//! (`MultiRaft`: one Raft group per region of the key space) and one `LogEngine`. Peers talk
//! over TCP; clients over HTTP (see `http.rs` for the API).
//!
//! ```text
//! raftwal-kv --id 1 --peers 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003 \
//!            --http 127.0.0.1:8001 --dir /tmp/kv1
//! ```
//!
//! Structure: `node.rs` owns the `MultiRaft`, the engine and the regions' maps on one thread
//! and runs the ready cycle; `transport.rs` and `http.rs` feed it events; `kv.rs` is the state machine.

mod http;
mod kv;
mod node;
mod transport;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::mpsc::channel;
use std::time::Duration;

use clap::{ArgAction, Parser};
use metrics_exporter_prometheus::PrometheusBuilder;
use raftwal::RecoveryMode;
use tracing::level_filters::LevelFilter;
use tracing::{error, info};

use node::{Node, Options};

#[derive(Parser)]
#[command(name = "raftwal-kv", version, about = "A replicated key-value store on raftwal")]
struct Args {
    /// This node's id (a positive integer listed in --peers).
    #[arg(long)]
    id: u64,
    /// Raft addresses of the members: ID=HOST:PORT,... (this node's included).
    #[arg(long)]
    peers: String,
    /// Address of the HTTP API.
    #[arg(long)]
    http: String,
    /// Directory of this node's LogEngine (created if missing).
    #[arg(long)]
    dir: PathBuf,
    /// Join a running cluster (add this node with POST /members/{id} first) instead of
    /// bootstrapping a new one. Ignored when --dir already holds a log.
    #[arg(long)]
    join: bool,
    /// Regions the key space is split into (by a hash of the key), each its own Raft group
    /// over the same members. Every node of a cluster, and every start, uses the same count.
    #[arg(long, default_value_t = 1)]
    regions: u64,
    /// Milliseconds per Raft tick (the leader heartbeats every tick).
    #[arg(long, default_value_t = 100)]
    tick_ms: u64,
    /// Ticks before a follower that hears no leader campaigns.
    #[arg(long, default_value_t = 10)]
    election_ticks: usize,
    /// Take a snapshot of the map every this many applied entries.
    #[arg(long, default_value_t = 1000)]
    snapshot_every: u64,
    /// Entries kept in the log below a snapshot when compacting.
    #[arg(long, default_value_t = 100)]
    compact_keep: u64,
    /// Milliseconds a request may wait to be committed and applied before a 503.
    #[arg(long, default_value_t = 5000)]
    request_timeout_ms: u64,
    /// Open the log in `RecoveryMode::Repairable` (true) or `Strict` (false). Repairable: damage
    /// to durable records is cut, what the cut lost is recorded, and the node neither votes nor
    /// campaigns until a leader has given it back (see docs/raftwal-kv.md, "Damaged logs").
    /// Strict: the node refuses to start on a damaged log.
    #[arg(long, default_value_t = true, action = ArgAction::Set, num_args = 0..=1,
          default_missing_value = "true", value_name = "BOOL")]
    repair: bool,
    /// Most detailed log events written to stderr: off, error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
}

fn parse_peers(text: &str) -> Result<BTreeMap<u64, String>, String> {
    let mut peers = BTreeMap::new();
    for item in text.split(',').filter(|s| !s.is_empty()) {
        let (id, addr) = item.split_once('=').ok_or(format!("{item:?} is not ID=HOST:PORT"))?;
        let id: u64 = id.parse().map_err(|_| format!("{id:?} is not a node id"))?;
        if id == 0 {
            return Err("node ids start at 1".into());
        }
        if peers.insert(id, addr.to_string()).is_some() {
            return Err(format!("node {id} is listed twice"));
        }
    }
    Ok(peers)
}

fn main() -> ExitCode {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_max_level(args.log_level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
    // The storage's and the node's metrics, rendered by GET /metrics.
    let metrics = match PrometheusBuilder::new().install_recorder() {
        Ok(handle) => handle,
        Err(e) => {
            error!(error = %e, "cannot set up metrics");
            return ExitCode::FAILURE;
        }
    };
    let peers = match parse_peers(&args.peers) {
        Ok(p) => p,
        Err(e) => {
            error!("--peers: {e}");
            return ExitCode::from(2);
        }
    };
    let Some(raft_addr) = peers.get(&args.id).cloned() else {
        error!("--peers must include this node ({})", args.id);
        return ExitCode::from(2);
    };
    if !(1..=node::MAX_REGIONS).contains(&args.regions) {
        error!("--regions must be between 1 and {}", node::MAX_REGIONS);
        return ExitCode::from(2);
    }
    if args.snapshot_every == 0 {
        error!("--snapshot-every must be at least 1");
        return ExitCode::from(2);
    }
    let timeout = Duration::from_millis(args.request_timeout_ms);
    let options = Options {
        id: args.id,
        peers,
        join: args.join,
        regions: args.regions,
        tick: Duration::from_millis(args.tick_ms.max(1)),
        election_ticks: args.election_ticks,
        snapshot_every: args.snapshot_every,
        compact_keep: args.compact_keep,
        request_timeout: timeout,
        recovery_mode: if args.repair { RecoveryMode::Repairable } else { RecoveryMode::Strict },
    };
    let (tx, rx) = channel();
    let node = match Node::open(options, &args.dir, tx.clone()) {
        Ok(n) => n,
        Err(e) => {
            error!(dir = %args.dir.display(), error = %e, "cannot open the storage");
            return ExitCode::FAILURE;
        }
    };
    if let Err(e) = transport::listen(&raft_addr, tx.clone()) {
        error!(addr = %raft_addr, error = %e, "cannot listen for peers");
        return ExitCode::FAILURE;
    }
    if let Err(e) = http::serve(&args.http, tx, timeout, metrics) {
        error!(addr = %args.http, error = %e, "cannot serve HTTP");
        return ExitCode::FAILURE;
    }
    info!(id = args.id, raft = %raft_addr, http = %args.http, dir = %args.dir.display(), "node started");
    match node.run(&rx) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!(id = args.id, error = %e, "node stopped");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::{Args, parse_peers};

    #[test]
    fn repair_is_on_unless_turned_off() {
        let base = ["raftwal-kv", "--id", "1", "--peers", "1=a", "--http", "h", "--dir", "d"];
        let parse = |extra: &[&str]| {
            let argv: Vec<&str> = base.iter().chain(extra).copied().collect();
            Args::try_parse_from(argv).map(|a| a.repair)
        };
        assert!(parse(&[]).unwrap(), "on by default");
        assert!(parse(&["--repair"]).unwrap());
        assert!(parse(&["--repair=true"]).unwrap());
        assert!(!parse(&["--repair=false"]).unwrap());
        assert!(!parse(&["--repair", "false"]).unwrap());
        assert!(parse(&["--repair=maybe"]).is_err(), "not a boolean");
    }

    #[test]
    fn peers_parse_and_reject_malformed_lists() {
        let p = parse_peers("1=127.0.0.1:7001,2=127.0.0.1:7002").unwrap();
        assert_eq!(p.len(), 2);
        assert_eq!(p[&2], "127.0.0.1:7002");
        assert!(parse_peers("1=a,1=b").is_err(), "duplicate id");
        assert!(parse_peers("0=a").is_err(), "id 0");
        assert!(parse_peers("x=a").is_err(), "not a number");
        assert!(parse_peers("1:a").is_err(), "no '='");
    }
}
