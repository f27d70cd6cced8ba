//! Runs `crest-bench --smoke` (what CI runs): it must finish, exit 0 and
//! write JSON in which every case ran and its restored workload passed its
//! own verification. No timing is checked anywhere.

use std::path::PathBuf;
use std::process::Command;

#[test]
fn smoke_mode_runs_and_writes_json() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_crest-bench"));
    let crest = bench.with_file_name("crest");
    if !crest.is_file() {
        eprintln!(
            "skipping: {} not found (it is built when the whole workspace is tested: cargo test --workspace)",
            crest.display()
        );
        return;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipping: crest-bench needs root");
        return;
    }
    let json = std::env::temp_dir().join(format!("crest-bench-smoke-{}.json", std::process::id()));
    let out = Command::new(&bench)
        .arg("--smoke")
        .arg("--json-out")
        .arg(&json)
        .output()
        .expect("running crest-bench");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "crest-bench --smoke failed ({}):\n{stdout}\n{stderr}",
        out.status
    );
    let text = std::fs::read_to_string(&json).expect("the JSON file");
    let _ = std::fs::remove_file(&json);
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
        for r in runs {
            assert_eq!(r["result"], "PASS", "run not verified: {r}");
            assert!(r["image_bytes"].as_u64().unwrap_or(0) > 0);
        }
    }
    assert!(stdout.contains("dump/dd"), "no table on stdout:\n{stdout}");
}
