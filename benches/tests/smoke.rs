//! Runs `crest-bench --smoke` (what CI runs): it must finish, exit 0 and
//! write JSON in which every case ran and its restored workload passed its
//! own verification, every mode and comparison (leave-running, compress,
//! the scaling curve, the incremental case) has figures, and every issue target has a verdict. No timing
//! is checked anywhere: whether a target is met is the benchmark's output,
//! not the test's concern.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn smoke_mode_runs_and_writes_json() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_crest-bench"));
    let crest = bench.with_file_name("crest");
    assert!(
        crest.is_file(),
        "{} not found (it is built when the whole workspace is tested: cargo test --workspace)",
        crest.display()
    );
    // SAFETY: geteuid has no preconditions.
    assert_eq!(unsafe { libc::geteuid() }, 0, "crest-bench needs root");
    let json = std::env::temp_dir().join(format!("crest-bench-smoke-{}.json", std::process::id()));
    let out = Command::new(&bench)
        .arg("--smoke")
        .arg("--json-out")
        .arg(&json)
        .output()
        .expect("running crest-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let text = std::fs::read_to_string(&json);
    let _ = std::fs::remove_file(&json);
    assert!(
        out.status.success(),
        "crest-bench --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let text = text.expect("the JSON file");
    let v: serde_json::Value = serde_json::from_str(&text).expect("valid JSON");
    assert_eq!(v["mode"], "smoke");
    assert_eq!(v["failures"], 0);
    assert!(!v["baselines"].as_array().expect("baselines").is_empty());
    let cases = v["cases"].as_array().expect("cases");
    assert!(!cases.is_empty(), "no cases ran");
    for c in cases {
        assert_eq!(c["status"], "ok", "case not ok: {c}");
        let runs = c["runs"].as_array().expect("runs");
        assert!(!runs.is_empty(), "case without runs: {c}");
        let left_running = c["mode"] == "leave-running";
        for r in runs {
            assert_eq!(r["result"], "PASS", "run not verified: {r}");
            assert!(r["image_bytes"].as_u64().unwrap_or(0) > 0);
            assert_eq!(r["left_running"], left_running, "{r}");
            if left_running {
                assert_eq!(r["live_result"], "PASS", "not verified while running: {r}");
            }
        }
    }
    for mode in ["plain", "compress", "leave-running"] {
        assert!(
            cases.iter().any(|c| c["mode"] == mode),
            "no {mode} case ran"
        );
    }
    for fill in ["random", "half-zero", "text"] {
        assert!(
            v["compression"]
                .as_array()
                .expect("compression")
                .iter()
                .any(|c| c["fill"] == fill),
            "no compression figures for {fill} memory"
        );
    }
    let lr = v["leave_running"].as_array().expect("leave_running");
    assert!(!lr.is_empty(), "no leave-running figures");
    for l in lr {
        assert!(l["frozen_over_memcpy"].as_f64().is_some(), "{l}");
        assert!(l["frozen_over_vm_readv"].as_f64().is_some(), "{l}");
    }
    let scaling = v["scaling"].as_array().expect("scaling");
    for kind in ["tree", "threads"] {
        // The curve: 1x -> 2x and 2x -> 4x.
        let n = scaling.iter().filter(|s| s["kind"] == kind).count();
        assert!(n >= 2, "{n} scaling figures for {kind}, expected 2");
    }
    let incr = v["incremental"].as_array().expect("incremental");
    assert!(!incr.is_empty(), "no incremental figures");
    for r in incr {
        assert!(r["error"].is_null(), "the incremental case failed: {r}");
        assert!(r["time_ratio"].as_f64().is_some(), "{r}");
        assert!(r["byte_ratio"].as_f64().is_some(), "{r}");
    }
    let targets = v["targets"].as_array().expect("targets");
    for t in targets {
        assert!(
            ["met", "not-met", "not-measured"].contains(&t["verdict"].as_str().unwrap_or("")),
            "{t}"
        );
    }
    assert_eq!(targets[0]["verdict"], "met", "{}", targets[0]);
    for (what, n) in [
        ("--leave-running", 2),
        ("each doubling", 4),
        ("Incremental dump", 2),
        ("1.1x", 2),
    ] {
        let found = targets
            .iter()
            .filter(|t| t["target"].as_str().unwrap_or("").contains(what))
            .count();
        assert!(found >= n, "{found} targets about {what:?}, expected {n}");
    }
    for s in [
        "dump/dd",
        "--leave-running",
        "--compress",
        "Scaling",
        "incremental dump",
        "Issue targets",
    ] {
        assert!(stdout.contains(s), "no {s:?} on stdout:\n{stdout}");
    }
    // Whether or not a criu is installed, the run says so.
    assert!(stderr.contains("CRIU peer"), "no CRIU notice:\n{stderr}");
}
