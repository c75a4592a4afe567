//! `raftwal bench`, run as a built binary on a real directory.

use std::process::Command;

fn raftwal() -> Command {
    Command::new(env!("CARGO_BIN_EXE_raftwal"))
}

#[test]
fn a_quick_run_reports_every_workload_as_json_and_cleans_up() {
    let dir = tempfile::tempdir().unwrap();
    let out =
        raftwal().args(["bench", "--quick", "--json", "--dir"]).arg(dir.path()).output().unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["quick"], true);
    let rows = report["rows"].as_array().unwrap();
    let workloads: Vec<&str> = rows.iter().map(|r| r["workload"].as_str().unwrap()).collect();
    for expected in [
        "1 × 64 B / sync",
        "1 × 1 KiB / sync",
        "1 × 16 KiB / sync",
        "16 × 1 KiB / sync",
        "256 × 1 KiB / sync",
        "1024 × 1 KiB / sync",
        "1024 × 1 KiB / sync, compacting behind (keeps 16,384 entries)",
        "1 writer × 1 KiB",
        "8 writers × 1 KiB",
        "entries() cache hit, 64 × 1 KiB",
        "recovery rate of a 128 MiB log",
        "64 groups × 256 B / sync, 1,000 groups, 1 writer",
        "64 groups × 256 B / sync, 1,000 groups, 4 writers",
        "64 groups × 256 B / sync, each in a new term, 1,000 groups, 1 writer",
        "open a log of 1,000 groups, 32 MiB of 256 B entries (page cache)",
        "index memory after open (1,000 groups, 131,072 entries)",
        "WAL bytes after churn, 1,000 groups, 100 cold, 32 MiB written",
    ] {
        assert!(workloads.contains(&expected), "{expected} missing from {workloads:?}");
    }
    for row in rows.iter().filter(|r| r["group"] != "index" && r["unit"] != "s") {
        assert!(row["raftwal"]["value"].as_f64().unwrap() > 0.0, "{row}");
        assert!(row["raw"].as_f64().unwrap() > 0.0, "{row}: no raw figure");
        assert!(row["raftwal"]["ratio_to_raw"].as_f64().is_some(), "{row}: no ratio");
    }
    let concurrent = rows.iter().find(|r| r["workload"] == "8 writers × 1 KiB").unwrap();
    let latency = &concurrent["raftwal"]["latency_us"];
    assert!(latency["p50"].as_u64().unwrap() <= latency["p99"].as_u64().unwrap());
    assert!(latency["p99"].as_u64().unwrap() <= latency["p999"].as_u64().unwrap());
    let index = rows.iter().find(|r| r["group"] == "index").unwrap();
    assert!(index["raftwal"]["value"].as_f64().unwrap() >= 4.0, "a 4-byte offset per entry");
    // Without --compare: the six single-group goals and three multi-group ones.
    assert_eq!(report["goals"].as_array().unwrap().len(), 9);
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the run leaves nothing behind");
}

/// Runs `bench --quick --json` with `args` in a new directory, checks that it succeeds and
/// leaves nothing behind, and returns the names of the rows.
fn quick_rows(args: &[&str]) -> Vec<String> {
    let dir = tempfile::tempdir().unwrap();
    let out = raftwal()
        .args(["bench", "--quick", "--json"])
        .args(args)
        .arg("--dir")
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "stderr: {}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "the run leaves nothing behind");
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let rows = report["rows"].as_array().unwrap();
    rows.iter().map(|r| r["workload"].as_str().unwrap().to_string()).collect()
}

#[test]
fn only_reads_runs_the_read_rows_alone() {
    let workloads = quick_rows(&["--only", "reads"]);
    assert_eq!(
        workloads,
        [
            "entries() cache hit, 64 × 1 KiB",
            "entries() sealed segment, 64 × 1 KiB",
            "entries() after reopen (same entries), 64 × 1 KiB",
        ]
    );
}

#[test]
fn the_multi_group_open_row_writes_the_payload_asked_for() {
    let rows = quick_rows(&["--only", "groups", "--groups-open-mib", "8"]);
    let opens: Vec<&String> = rows.iter().filter(|w| w.starts_with("open a log of")).collect();
    assert_eq!(opens, ["open a log of 1,000 groups, 8 MiB of 256 B entries (page cache)"]);
    let refused = raftwal().args(["bench", "--groups-open-mib", "0"]).output().unwrap();
    assert_eq!(refused.status.code(), Some(2), "a zero size is a usage error");
}

#[test]
fn a_plot_that_is_not_svg_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let out = raftwal()
        .args(["bench", "--quick", "--plot", "latency.png", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains(".svg"), "{stderr}");
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0, "nothing was written");
}

#[cfg(not(feature = "raft-engine"))]
#[test]
fn the_comparison_says_how_to_build_it_when_it_is_not_built_in() {
    let dir = tempfile::tempdir().unwrap();
    let out = raftwal()
        .args(["bench", "--quick", "--compare", "raft-engine", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("--features raft-engine"), "{stderr}");
}
