//! `raftwal-kv` as built, as real processes on 127.0.0.1: a 3-node cluster survives the
//! SIGKILL of its leader without losing an acknowledged write, the killed node restarts on its
//! directory and catches up by snapshot, membership changes add and remove a node, and a
//! sharded cluster (several regions) does the same per region with its leaders spread, and a
//! follower whose log was damaged on disk repairs from a leader without voting (one region or
//! several). Every wait is bounded; every child is killed and reaped on every path (the
//! guard's `Drop`).

use std::collections::BTreeMap;
use std::collections::hash_map::RandomState;
use std::fs::{self, File, OpenOptions};
use std::hash::{BuildHasher, Hasher};
use std::net::TcpListener;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::sync::atomic::AtomicU16;
use std::sync::atomic::Ordering::SeqCst;
use std::thread::sleep;
use std::time::{Duration, Instant};

use raftwal::storage::WAL_DIR;
use raftwal::wal::format::{self, FRAME_HEADER_LEN, Record};
use raftwal::wal::recovery::scan_segment;
use raftwal::wal::repair::REPAIR_FILE;
use raftwal::{Error, LogEngine, WalOptions};
use serde_json::Value;

/// Limit on any one wait (an election, a catch-up); elections take well under a second here.
const WAIT_LIMIT: Duration = Duration::from_secs(20);
const POLL: Duration = Duration::from_millis(50);

/// Nodes of one cluster; kills and reaps every process it started when dropped.
struct Cluster {
    dir: tempfile::TempDir,
    raft_ports: BTreeMap<u64, u16>,
    http_ports: BTreeMap<u64, u16>,
    children: BTreeMap<u64, Child>,
    agent: ureq::Agent,
    /// The --regions every node is started with.
    regions: u64,
    /// The --snapshot-every every node is started with.
    snapshot_every: u64,
    /// Processes started so far (each writes its own log file).
    starts: u64,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for child in self.children.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Lowest port [`free_ports`] hands out.
const PORTS_FROM: u16 = 10_000;
/// The next port [`free_ports`] tries: the tests of this process get distinct ports (until
/// they have used the whole range).
static NEXT_PORT: AtomicU16 = AtomicU16::new(0);

/// `n` ports of 127.0.0.1 that nothing listens on now (released before use), below the kernel's
/// ephemeral range. A port in that range can become the local end of any outgoing connection
/// (this process's HTTP clients, a node's peer connections) between its release here and a
/// node binding it, or linger in TIME_WAIT after one; the node would then fail to bind and
/// exit (seen with `tools/kv-demo`).
fn free_ports(n: usize) -> Vec<u16> {
    let ephemeral_low = fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    assert!(
        ephemeral_low > PORTS_FROM + 1_000,
        "no room below the ephemeral range {ephemeral_low}"
    );
    let span = ephemeral_low - PORTS_FROM;
    // A start that differs between runs, so that runs close together do not collide.
    let seed = RandomState::new().build_hasher().finish();
    let _ = NEXT_PORT.compare_exchange(0, (seed % u64::from(span)) as u16 + 1, SeqCst, SeqCst);
    let mut listeners = Vec::with_capacity(n);
    // Bounded: a whole lap of the span.
    for _ in 0..span {
        if listeners.len() == n {
            break;
        }
        let k = NEXT_PORT.fetch_add(1, SeqCst) % span;
        if let Ok(l) = TcpListener::bind(("127.0.0.1", PORTS_FROM + k)) {
            listeners.push(l);
        }
    }
    assert_eq!(listeners.len(), n, "no {n} free ports from {PORTS_FROM} to {ephemeral_low}");
    listeners.iter().map(|l| l.local_addr().unwrap().port()).collect()
}

/// Polls `f` until it gives a value; panics naming `what` after `WAIT_LIMIT`.
fn until<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + WAIT_LIMIT;
    let max_polls = (WAIT_LIMIT.as_millis() / POLL.as_millis()) as usize + 1;
    for _ in 0..max_polls {
        if let Some(v) = f() {
            return v;
        }
        if Instant::now() >= deadline {
            break;
        }
        sleep(POLL);
    }
    panic!("timed out waiting for {what}");
}

impl Cluster {
    fn new(ids: &[u64]) -> Cluster {
        let ports = free_ports(ids.len() * 2);
        let (raft, http) = ports.split_at(ids.len());
        Cluster {
            dir: tempfile::tempdir().unwrap(),
            raft_ports: ids.iter().copied().zip(raft.iter().copied()).collect(),
            http_ports: ids.iter().copied().zip(http.iter().copied()).collect(),
            children: BTreeMap::new(),
            agent: ureq::AgentBuilder::new().timeout(Duration::from_secs(3)).build(),
            regions: 1,
            snapshot_every: 5,
            starts: 0,
        }
    }

    fn raft_addr(&self, id: u64) -> String {
        format!("127.0.0.1:{}", self.raft_ports[&id])
    }

    /// Starts node `id` with `members` as its --peers; returns the file its log goes to.
    fn start(&mut self, id: u64, members: &[u64], join: bool) -> PathBuf {
        self.start_with(id, members, join, &[])
    }

    /// Node `id`'s directory.
    fn node_dir(&self, id: u64) -> PathBuf {
        self.dir.path().join(format!("n{id}"))
    }

    /// Starts node `id` with `members` as its --peers and `extra` arguments; returns the file
    /// its stderr (its log) goes to.
    fn start_with(&mut self, id: u64, members: &[u64], join: bool, extra: &[&str]) -> PathBuf {
        let peers: Vec<String> =
            members.iter().map(|m| format!("{m}={}", self.raft_addr(*m))).collect();
        self.starts += 1;
        let log_path = self.dir.path().join(format!("n{id}-{}.log", self.starts));
        let log = File::create(&log_path).unwrap();
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_raftwal-kv"));
        cmd.args(["--id", &id.to_string(), "--peers", &peers.join(",")])
            .args(["--http", &format!("127.0.0.1:{}", self.http_ports[&id])])
            .arg("--dir")
            .arg(self.node_dir(id))
            .args(["--tick-ms", "20", "--election-ticks", "10"])
            .args(["--snapshot-every", &self.snapshot_every.to_string(), "--compact-keep", "2"])
            .args(["--request-timeout-ms", "2000"])
            .args(["--regions", &self.regions.to_string()])
            .stdout(std::process::Stdio::null())
            .stderr(log);
        if join {
            cmd.arg("--join");
        }
        cmd.args(extra);
        let child = cmd.spawn().unwrap();
        assert!(self.children.insert(id, child).is_none(), "node {id} started twice");
        log_path
    }

    /// SIGKILL, then reap.
    fn kill(&mut self, id: u64) {
        let mut child = self.children.remove(&id).expect("node running");
        child.kill().unwrap();
        child.wait().unwrap();
    }

    /// (status code, body), or None if the node did not answer.
    fn request(
        &self,
        id: u64,
        method: &str,
        path: &str,
        body: Option<&str>,
    ) -> Option<(u16, String)> {
        let url = format!("http://127.0.0.1:{}{path}", self.http_ports[&id]);
        let req = self.agent.request(method, &url);
        let result = match body {
            Some(b) => req.send_string(b),
            None => req.call(),
        };
        match result {
            Ok(r) => Some((r.status(), r.into_string().unwrap_or_default())),
            Err(ureq::Error::Status(code, r)) => Some((code, r.into_string().unwrap_or_default())),
            Err(_) => None,
        }
    }

    fn status(&self, id: u64) -> Option<Value> {
        let (code, body) = self.request(id, "GET", "/status", None)?;
        (code == 200).then(|| serde_json::from_str(&body).unwrap())
    }

    /// A node among `ids` that reports itself leader.
    fn leader_among(&self, ids: &[u64]) -> u64 {
        until("a leader", || {
            ids.iter()
                .copied()
                .find(|id| self.status(*id).is_some_and(|s| s["leader"].as_u64() == Some(*id)))
        })
    }

    /// A write through `id`, retried while leadership settles; true once acknowledged (204).
    fn put(&self, id: u64, key: &str, value: &str) -> bool {
        for _ in 0..20 {
            if let Some((204, _)) = self.request(id, "PUT", &format!("/keys/{key}"), Some(value)) {
                return true;
            }
            sleep(Duration::from_millis(100));
        }
        false
    }

    fn get(&self, id: u64, key: &str) -> Option<(u16, String)> {
        self.request(id, "GET", &format!("/keys/{key}"), None)
    }
}

#[test]
fn leader_killed_keeps_acknowledged_writes_and_restarted_node_catches_up_by_snapshot() {
    let ids = [1, 2, 3];
    let mut c = Cluster::new(&ids);
    for id in ids {
        c.start(id, &ids, false);
    }
    let leader = c.leader_among(&ids);
    let mut acked = BTreeMap::new();
    for k in 0..10 {
        let (key, value) = (format!("k{k}"), format!("v{k}"));
        if c.put(leader, &key, &value) {
            acked.insert(key, value);
        }
    }
    assert!(!acked.is_empty(), "a healthy cluster acknowledges writes");

    c.kill(leader);
    let rest: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    let new_leader = c.leader_among(&rest);
    assert_ne!(new_leader, leader);
    for (key, value) in &acked {
        assert_eq!(
            c.get(new_leader, key),
            Some((200, value.clone())),
            "the new leader serves acknowledged write {key}"
        );
    }

    // Enough writes for several snapshots: the log is compacted past the dead node's end.
    for k in 10..30 {
        let (key, value) = (format!("k{k}"), format!("v{k}"));
        if c.put(new_leader, &key, &value) {
            acked.insert(key, value);
        }
    }
    assert!(c.put(new_leader, "k0", "overwritten"), "an overwrite is acknowledged");
    acked.insert("k0".into(), "overwritten".into());
    assert_eq!(c.request(new_leader, "DELETE", "/keys/k1", None).map(|r| r.0), Some(204));
    acked.remove("k1");
    let leader_status = c.status(new_leader).unwrap();
    let commit = leader_status["commit"].as_u64().unwrap();
    assert!(
        leader_status["first_index"].as_u64().unwrap() > 12,
        "the leader compacted its log: {leader_status}"
    );

    c.start(leader, &ids, false);
    let status = until("the restarted node to catch up", || {
        c.status(leader).filter(|s| s["applied"].as_u64().unwrap() >= commit)
    });
    assert!(
        status["snapshots_received"].as_u64().unwrap() >= 1,
        "the restarted node caught up by snapshot: {status}"
    );
    for (key, value) in &acked {
        assert_eq!(c.get(leader, key), Some((200, value.clone())), "restarted node serves {key}");
    }
    assert_eq!(c.get(leader, "k1").map(|r| r.0), Some(404), "the delete reached it too");
}

#[test]
fn member_added_by_post_joins_and_serves_reads_then_is_removed_by_delete() {
    add_and_remove_a_member(1);
}

#[test]
fn member_added_by_post_joins_every_region_and_is_removed_from_every_region() {
    add_and_remove_a_member(4);
}

fn add_and_remove_a_member(regions: u64) {
    let ids = [1, 2, 3];
    let mut c = Cluster::new(&[1, 2, 3, 4]);
    c.regions = regions;
    for id in ids {
        c.start(id, &ids, false);
    }
    let leader = c.leader_among(&ids);
    // A membership change goes to every region: let leaderships settle where they belong
    // (region r to the voter at position r % voters) so that no region is between leaders.
    // Counting the regions each node leads is not enough: two nodes may hold each other's
    // regions, and the handover then runs while the change is proposed (a leader handing a
    // region over drops proposals).
    let settled = |c: &Cluster, voters: &[u64]| {
        if regions > 1 {
            until("leaderships to settle", || preferred_leaders_everywhere(c, voters));
        }
    };
    settled(&c, &ids);
    for k in 0..8 {
        assert!(c.put(leader, &format!("k{k}"), &format!("v{k}")), "write k{k}");
    }
    let addr = c.raft_addr(4);
    // The body says why if the answer is neither 204 nor 503 (asked again until it is not 503).
    let added = c.change_members(leader, "POST", Some(&addr));
    assert_eq!(added.0, 204, "{added:?}");
    c.start(4, &[1, 2, 3, 4], true);
    until("node 4 to serve every key", || {
        (0..8).all(|k| c.get(4, &format!("k{k}")) == Some((200, format!("v{k}")))).then_some(())
    });
    let status = c.status(4).unwrap();
    assert_eq!(status["voters"], serde_json::json!([1, 2, 3, 4]), "{status}");
    // Every region replicates to node 4, not only those of the keys read.
    let keys_per_region = |s: Value| -> Vec<u64> {
        s["regions"].as_array().unwrap().iter().map(|r| r["keys"].as_u64().unwrap()).collect()
    };
    let want = keys_per_region(c.status(leader).unwrap());
    assert_eq!(want.len() as u64, regions);
    until("node 4 to hold every region's keys", || {
        c.status(4).map(keys_per_region).filter(|got| *got == want)
    });

    let leader = c.leader_among(&[1, 2, 3, 4]);
    assert!(c.put(leader, "after-join", "yes"));
    assert_eq!(c.get_settled(4, "after-join"), (200, "yes".into()));
    settled(&c, &[1, 2, 3, 4]);

    let remover = if leader == 4 { 1 } else { leader };
    let removed = c.change_members(remover, "DELETE", None);
    assert_eq!(removed.0, 204, "{removed:?}");
    let status = until("node 4 to leave the membership", || {
        c.status(remover).filter(|s| s["voters"] == serde_json::json!([1, 2, 3]))
    });
    assert_eq!(status["voters"], serde_json::json!([1, 2, 3]));
}

#[test]
fn keys_in_urls_are_percent_decoded() {
    let mut c = Cluster::new(&[1]);
    c.start(1, &[1], false);
    let leader = c.leader_among(&[1]);
    assert!(c.put(leader, "a%20b", "spaced"), "write a%20b");

    // The same key spelled another way: 'b' escaped, and a space kept escaped.
    assert_eq!(c.get(leader, "a%20%62"), Some((200, "spaced".into())));
    assert_eq!(c.get(leader, "a%2520b").map(|r| r.0), Some(404), "the key \"a%20b\" is another");
    assert!(c.put(leader, "x%2Fy", "slash"), "write x%2Fy");
    assert_eq!(c.get(leader, "x/y"), Some((200, "slash".into())));
    let (code, body) = c.get(leader, "%FF").unwrap();
    assert_eq!(code, 400, "{body}");
}

/// The value of the first sample of `name` (a line `name{...} value` or `name value`).
fn sample(text: &str, name: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find(|l| l.strip_prefix(name).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[test]
fn metrics_are_scraped_in_prometheus_text_from_a_running_node() {
    let mut c = Cluster::new(&[1]);
    c.start(1, &[1], false);
    let leader = c.leader_among(&[1]);
    for k in 0..6 {
        assert!(c.put(leader, &format!("m{k}"), "v"), "write m{k}");
    }
    assert_eq!(c.get(leader, "m0"), Some((200, "v".into())));
    let (code, text) = c.request(leader, "GET", "/metrics", None).unwrap();
    assert_eq!(code, 200, "{text}");

    // The storage's counters: six writes at least (plus the election's), each synced.
    let appends = sample(&text, "raftwal_appends_total").expect("raftwal_appends_total");
    assert!(appends >= 6.0, "{appends} appends for 6 writes:\n{text}");
    assert!(sample(&text, "raftwal_entries_written_total").unwrap() >= 6.0);
    assert!(text.contains("raftwal_sync_duration_seconds"), "sync latency missing:\n{text}");
    assert!(sample(&text, "raftwal_segments_live").unwrap() >= 1.0);
    // The snapshot every 5 applied entries (the cluster's --snapshot-every).
    assert!(sample(&text, "raftwal_snapshot_writes_total").unwrap() >= 1.0, "{text}");
    // The node's: it leads, and applied what it committed.
    assert_eq!(sample(&text, "raftwal_kv_is_leader"), Some(1.0), "{text}");
    let commit = sample(&text, "raftwal_kv_commit_index").unwrap();
    assert!(commit >= 7.0, "commit {commit}: an empty entry and six writes");
    assert_eq!(sample(&text, "raftwal_kv_applied_index"), Some(commit));
    assert!(sample(&text, "raftwal_kv_leader_changes_total").unwrap() >= 1.0);
    assert!(text.contains("raftwal_kv_read_index_duration_seconds"), "read latency:\n{text}");
}

/// Per region of `status`: (leader, commit, applied).
fn regions_of(status: &Value) -> Vec<(u64, u64, u64)> {
    let regions = status["regions"].as_array().expect("a regions list");
    regions
        .iter()
        .map(|r| {
            let field = |name: &str| r[name].as_u64().unwrap();
            (field("leader"), field("commit"), field("applied"))
        })
        .collect()
}

/// Regions each node leads, as `id` sees it, if every region has a leader.
fn leaders_seen_by(c: &Cluster, id: u64) -> Option<BTreeMap<u64, usize>> {
    let regions = regions_of(&c.status(id)?);
    let mut led = BTreeMap::new();
    for (leader, _, _) in regions {
        if leader == 0 {
            return None;
        }
        *led.entry(leader).or_insert(0) += 1;
    }
    Some(led)
}

/// Whether every voter sees each region `r` led by the voter at position `r % voters` of the
/// sorted membership (where the nodes hand leaderships over to), so that none is moving.
fn preferred_leaders_everywhere(c: &Cluster, voters: &[u64]) -> Option<()> {
    let mut sorted = voters.to_vec();
    sorted.sort_unstable();
    // Bounded by the voters.
    for id in voters {
        let regions = regions_of(&c.status(*id)?);
        let placed = regions
            .iter()
            .enumerate()
            .all(|(r, (leader, _, _))| *leader == sorted[r % sorted.len()]);
        if !placed {
            return None;
        }
    }
    Some(())
}

impl Cluster {
    /// Adds (`POST`, with node 4's address) or removes (`DELETE`) node 4 through `id`, asked
    /// again while the answer is 503: a region between leaders drops the proposal or does not
    /// apply it in time, as the API says a client must expect. Asking again is safe: a change
    /// already applied is applied again as a no-op, and one still pending makes the new
    /// proposal an empty entry, answered by a timeout. The last answer.
    fn change_members(&self, id: u64, method: &str, addr: Option<&str>) -> (u16, String) {
        until(&format!("node {id} to answer {method} /members/4 with other than 503"), || {
            self.request(id, method, "/members/4", addr).filter(|(code, _)| *code != 503)
        })
    }

    /// A read through `id`, retried while a region's leadership moves (503).
    fn get_settled(&self, id: u64, key: &str) -> (u16, String) {
        until(&format!("node {id} to answer for {key}"), || {
            self.get(id, key).filter(|(code, _)| *code != 503)
        })
    }
}

#[test]
fn sharded_cluster_spreads_leaders_survives_the_busiest_node_and_catches_it_up() {
    const REGIONS: usize = 6;
    let ids = [1, 2, 3];
    let mut c = Cluster::new(&ids);
    c.regions = REGIONS as u64;
    for id in ids {
        c.start(id, &ids, false);
    }
    // Region r is meant for the voter at position r % 3: two regions each.
    until("leaderships spread two per node", || {
        leaders_seen_by(&c, 1).filter(|led| led.len() == 3 && led.values().all(|n| *n == 2))
    });

    let mut acked = BTreeMap::new();
    for k in 0..24u64 {
        let (key, value) = (format!("k{k}"), format!("v{k}"));
        if c.put(1 + k % 3, &key, &value) {
            acked.insert(key, value);
        }
    }
    assert_eq!(acked.len(), 24, "a healthy cluster acknowledges every write");
    let status = c.status(1).unwrap();
    let keys: Vec<u64> =
        status["regions"].as_array().unwrap().iter().map(|r| r["keys"].as_u64().unwrap()).collect();
    assert!(keys.iter().all(|n| *n > 0), "24 keys reach all {REGIONS} regions: {keys:?}");

    // The node that leads the most regions, as node 1 sees it.
    let led = leaders_seen_by(&c, 1).expect("every region has a leader");
    let busiest = *led.iter().max_by_key(|(id, n)| (**n, u64::MAX - **id)).unwrap().0;
    c.kill(busiest);
    let rest: Vec<u64> = ids.iter().copied().filter(|id| *id != busiest).collect();
    until("every region to elect a leader among the survivors", || {
        leaders_seen_by(&c, rest[0]).filter(|led| led.keys().all(|l| rest.contains(l)))
    });
    for (key, value) in &acked {
        for id in &rest {
            assert_eq!(
                c.get_settled(*id, key),
                (200, value.clone()),
                "node {id} serves acknowledged write {key}"
            );
        }
    }

    // Enough writes for snapshots in every region: logs compacted past the dead node's end.
    for k in 24..72usize {
        let (key, value) = (format!("k{k}"), format!("v{k}"));
        if c.put(rest[k % 2], &key, &value) {
            acked.insert(key, value);
        }
    }
    assert!(c.put(rest[0], "k0", "overwritten"), "an overwrite is acknowledged");
    acked.insert("k0".into(), "overwritten".into());
    let commits: Vec<u64> = regions_of(&c.status(rest[0]).unwrap()).iter().map(|r| r.1).collect();

    c.start(busiest, &ids, false);
    let status = until("the restarted node to catch up in every region", || {
        c.status(busiest).filter(|s| {
            let regions = regions_of(s);
            regions.len() == REGIONS && regions.iter().zip(&commits).all(|(r, c)| r.2 >= *c)
        })
    });
    assert!(
        status["snapshots_received"].as_u64().unwrap() >= 1,
        "the restarted node caught up by snapshot in some region: {status}"
    );
    for (key, value) in &acked {
        assert_eq!(
            c.get_settled(busiest, key),
            (200, value.clone()),
            "restarted node serves {key}"
        );
    }
    until("the restarted node to lead its two regions again", || {
        leaders_seen_by(&c, busiest).filter(|led| led.get(&busiest) == Some(&2))
    });
}

/// Flips a byte inside the payload of the middle `Entries` record of group `group` in the
/// newest segment of the engine directory `dir` (its WAL is in `dir/wal`). Later records follow it in the segment, so it
/// had been durable: recovery cannot take the damage for a torn tail. Returns the first index
/// the damaged record held.
fn damage_an_entries_record(dir: &Path, group: u64) -> u64 {
    let mut segments: Vec<PathBuf> = fs::read_dir(dir.join(WAL_DIR))
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| e.file_name().to_str().and_then(format::parse_segment_name).is_some())
        .map(|e| e.path())
        .collect();
    // Names start with the sequence number in fixed-width hex: the last sorts newest.
    segments.sort();
    let newest = segments.last().expect("the node wrote a segment");
    let bytes = fs::read(newest).unwrap();
    let scan = scan_segment(&bytes, WalOptions::default().max_record_bytes);
    let candidates: Vec<usize> = (0..scan.records.len())
        .filter(
            |i| matches!(&scan.records[*i].record, Record::Entries { group: g, .. } if *g == group),
        )
        .collect();
    assert!(candidates.len() >= 3, "{} entries records in {}", candidates.len(), newest.display());
    let at = candidates[candidates.len() / 2];
    assert!(at + 1 < scan.records.len(), "later records follow the damaged one");
    let record = &scan.records[at];
    let Record::Entries { entries, .. } = &record.record else { unreachable!("filtered") };
    let offset = record.offset + FRAME_HEADER_LEN as u64 + 3;
    let flipped = [!bytes[usize::try_from(offset).unwrap()]];
    let file = OpenOptions::new().write(true).open(newest).unwrap();
    file.write_at(&flipped, offset).unwrap();
    file.sync_all().unwrap();
    entries[0].index
}

/// The `repairing_until` of a status, if set.
fn repairing_until(status: &Value) -> Option<u64> {
    let field = &status["repairing_until"];
    assert!(field.is_null() || field.is_u64(), "repairing_until: {status}");
    field.as_u64()
}

#[test]
fn a_follower_with_a_damaged_log_repairs_without_voting_and_serves_every_acknowledged_write() {
    let ids = [1, 2, 3];
    let mut c = Cluster::new(&ids);
    // No snapshot: the damage cuts entries that only a leader's log can give back.
    c.snapshot_every = 1000;
    for id in ids {
        c.start(id, &ids, false);
    }
    let leader = c.leader_among(&ids);
    let mut acked = BTreeMap::new();
    for k in 0..30 {
        let (key, value) = (format!("k{k}"), format!("v{k}"));
        if c.put(leader, &key, &value) {
            acked.insert(key, value);
        }
    }
    assert_eq!(acked.len(), 30, "a healthy cluster acknowledges every write");
    let others: Vec<u64> = ids.iter().copied().filter(|id| *id != leader).collect();
    let (damaged, healthy) = (others[0], others[1]);
    let commit = c.status(leader).unwrap()["commit"].as_u64().unwrap();
    let before = until("the follower to hold and apply every write", || {
        c.status(damaged).filter(|s| s["applied"].as_u64().unwrap() >= commit)
    });
    assert_eq!(repairing_until(&before), None, "a healthy node is not repairing: {before}");
    let term_before = before["term"].as_u64().unwrap();
    let vote_before = before["vote"].as_u64().unwrap();
    let last_before = before["last_index"].as_u64().unwrap();

    c.kill(damaged);
    let dir = c.node_dir(damaged);
    let cut_at = damage_an_entries_record(&dir, 1);
    assert!(cut_at < last_before, "the damage is inside the log: {cut_at} < {last_before}");
    let err = LogEngine::open(&dir, WalOptions::default()).expect_err("Strict refuses");
    assert!(matches!(err, Error::Corruption { .. }), "durable damage is corruption: {err}");

    // Without --repair the node refuses to start.
    let strict_log = c.start_with(damaged, &ids, false, &["--repair=false"]);
    let exit = until("the node without --repair to exit", || {
        c.children.get_mut(&damaged).unwrap().try_wait().unwrap()
    });
    c.children.remove(&damaged);
    assert!(!exit.success(), "{exit}");
    let text = fs::read_to_string(&strict_log).unwrap();
    assert!(text.contains("cannot open the storage"), "{text}");

    // With the leader down too, only the healthy follower is left to elect with: the
    // repairing node's vote decides, and it must not be granted.
    c.kill(leader);
    let repair_log = c.start(damaged, &ids, false);
    let first = until("the repairing node to answer", || c.status(damaged));
    assert_eq!(repairing_until(&first), Some(last_before), "repairs up to its old end: {first}");
    assert!(first["last_index"].as_u64().unwrap() < cut_at, "the log is cut: {first}");
    let repair_file = dir.join(WAL_DIR).join(REPAIR_FILE);
    assert!(repair_file.exists(), "the loss is recorded durably");
    let no_vote_granted = |s: &Value| {
        let (term, vote) = (s["term"].as_u64().unwrap(), s["vote"].as_u64().unwrap());
        assert!(
            vote == 0 || (term == term_before && vote == vote_before),
            "a repairing node voted: {s} (before the damage: term {term_before} vote {vote_before})"
        );
        assert_ne!(s["role"], "Leader", "a repairing node leads: {s}");
    };
    // Samples over 1 s: 50 ticks, several election timeouts of the healthy follower.
    let mut healthy_campaigned = false;
    for _ in 0..20 {
        let s = c.status(damaged).expect("the repairing node answers");
        assert_eq!(repairing_until(&s), Some(last_before), "no leader, no repair: {s}");
        no_vote_granted(&s);
        let h = c.status(healthy).expect("the healthy follower answers");
        assert_ne!(h["role"], "Leader", "elected without the repairing node's vote: {h}");
        healthy_campaigned |= h["role"] == "PreCandidate" || h["role"] == "Candidate";
        sleep(POLL);
    }
    assert!(healthy_campaigned, "the healthy follower asked for votes");

    // The old leader back: it and the healthy follower elect a leader, which repairs the node.
    c.start(leader, &ids, false);
    let repaired = until("the node to end its repair", || {
        let s = c.status(damaged)?;
        if repairing_until(&s).is_none() {
            return Some(s);
        }
        no_vote_granted(&s);
        None
    });
    assert!(repaired["last_index"].as_u64().unwrap() >= last_before, "{repaired}");
    assert!(!repair_file.exists(), "the end of the repair is durable");
    let text = fs::read_to_string(&repair_log).unwrap();
    assert!(text.contains("repairing:"), "the start of the repair is logged:\n{text}");
    assert!(text.contains("repair ended"), "the end of the repair is logged:\n{text}");
    for (key, value) in &acked {
        assert_eq!(
            c.get_settled(damaged, key),
            (200, value.clone()),
            "the repaired node serves acknowledged write {key}"
        );
    }
}

#[test]
fn a_sharded_follower_with_a_damaged_log_repairs_every_region_the_cut_reached() {
    const REGIONS: usize = 3;
    let ids = [1, 2, 3];
    let mut c = Cluster::new(&ids);
    c.regions = REGIONS as u64;
    c.snapshot_every = 1000;
    for id in ids {
        c.start(id, &ids, false);
    }
    // Region r is led by the voter at position r % 3: node 2 leads region 1 only.
    until("leaderships spread one per node", || {
        leaders_seen_by(&c, 1).filter(|led| led.len() == 3 && led.values().all(|n| *n == 1))
    });
    let mut acked = BTreeMap::new();
    for k in 0..24u64 {
        let (key, value) = (format!("k{k}"), format!("v{k}"));
        if c.put(1 + k % 3, &key, &value) {
            acked.insert(key, value);
        }
    }
    assert_eq!(acked.len(), 24, "a healthy cluster acknowledges every write");
    let damaged = 2;
    let commits: Vec<u64> = regions_of(&c.status(1).unwrap()).iter().map(|r| r.1).collect();
    let before = until("node 2 to apply every write in every region", || {
        c.status(damaged).filter(|s| regions_of(s).iter().zip(&commits).all(|(r, c)| r.2 >= *c))
    });
    let region_field = |s: &Value, r: usize, name: &str| s["regions"][r][name].as_u64().unwrap();
    let last_before: Vec<u64> =
        (0..REGIONS).map(|r| region_field(&before, r, "last_index")).collect();
    let voted_before: Vec<(u64, u64)> = (0..REGIONS)
        .map(|r| (region_field(&before, r, "term"), region_field(&before, r, "vote")))
        .collect();

    c.kill(damaged);
    // Region 0 is group 1; the cut drops every region's records that follow the damage.
    damage_an_entries_record(&c.node_dir(damaged), 1);
    let log = c.start(damaged, &ids, false);
    // The other two hold every region's leadership: the repair may end before the first poll,
    // so its start is checked in the node's log.
    let repaired = until("node 2 to end every region's repair", || {
        let s = c.status(damaged)?;
        let mut repairing = false;
        for r in 0..REGIONS {
            let Some(until) = repairing_until(&s["regions"][r]) else { continue };
            repairing = true;
            assert_eq!(until, last_before[r], "region {r} repairs up to its old end: {s}");
            let (term, vote) = (region_field(&s, r, "term"), region_field(&s, r, "vote"));
            assert!(
                vote == 0 || (term, vote) == voted_before[r],
                "region {r} voted while repairing: {s} (before: {:?})",
                voted_before[r]
            );
        }
        assert_eq!(repairing_until(&s), repairing_until(&s["regions"][0]), "top level: region 0");
        (!repairing).then_some(s)
    });
    let text = fs::read_to_string(&log).unwrap();
    let started = format!("region=0 index={}", last_before[0]);
    assert!(
        text.lines().any(|l| l.contains("repairing:") && l.contains(&started)),
        "region 0 starts repairing up to {}:\n{text}",
        last_before[0]
    );
    let ended = |r: usize| {
        text.lines().any(|l| l.contains("repair ended") && l.contains(&format!("region={r} ")))
    };
    for r in 0..REGIONS {
        let began =
            text.lines().any(|l| l.contains("repairing:") && l.contains(&format!("region={r} ")));
        assert_eq!(began, ended(r), "region {r}: a repair that starts ends:\n{text}");
    }
    for (r, last) in last_before.iter().enumerate() {
        assert!(region_field(&repaired, r, "last_index") >= *last, "{repaired}");
    }
    for (key, value) in &acked {
        assert_eq!(
            c.get_settled(damaged, key),
            (200, value.clone()),
            "the repaired node serves acknowledged write {key}"
        );
    }
}
