//! Runs `crest-bench-migrate` on a small size: every case must migrate
//! and its restored workload pass its own verification.  No timing is
//! checked (the figures are the benchmark's output).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn migrate_benchmark_runs_and_verifies() {
    let bench = PathBuf::from(env!("CARGO_BIN_EXE_crest-bench-migrate"));
    let crest = bench.with_file_name("crest");
    assert!(
        crest.is_file(),
        "{} not found (it is built when the whole workspace is tested: cargo test --workspace)",
        crest.display()
    );
    let json =
        std::env::temp_dir().join(format!("crest-bench-migrate-{}.json", std::process::id()));
    let out = Command::new(&bench)
        .args([
            "--sizes",
            "8",
            "--links",
            "10",
            "--modes",
            "idle,busy",
            "--json-out",
        ])
        .arg(&json)
        .output()
        .expect("running crest-bench-migrate");
    let text = std::fs::read_to_string(&json);
    let _ = std::fs::remove_file(&json);
    assert!(
        out.status.success(),
        "crest-bench-migrate failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text.expect("the JSON file")).expect("JSON");
    let cases = v.as_array().expect("a list of cases");
    assert_eq!(cases.len(), 2);
    for c in cases {
        assert_eq!(c["verified"], true, "{c}");
        assert!(c["downtime_ms"].as_f64() > Some(0.0), "{c}");
        assert!(c["bytes_sent"].as_u64() > Some(8 << 20), "{c}");
    }
}
