//! `crest-bench-migrate`: live migration between two network namespaces
//! joined by a veth pair, rate-limited with `tc` (1 and 10 Gbit/s).
//!
//! Per link it measures the throughput (iperf3, and crest-bench-migrate's
//! own single TCP stream, in the same run), then per size and memory
//! behaviour (idle; busy = 128 MiB/s rewritten) migrates a
//! `crest-bench-workload mem` process from namespace a to b, lets the
//! restored process verify every page, and reports the downtime (freeze
//! to RUNNING from the destination), the total time, the bytes sent and
//! total / (size / measured throughput).  Must run as root.
//!
//! ```text
//! crest-bench-migrate [--sizes 256,1024] [--links 1,10] [--modes idle,busy] [--dest-pidns]
//!                     [--json-out PATH]
//! ```
//!
//! Both namespaces share this machine's PID space, so by default the PIDs
//! are handed over (the downtime then includes killing the source tree
//! and waiting for it to be reaped).  `--dest-pidns` runs the destination
//! in a PID namespace of its own, as on another host: no handover.
//!
//! ```text
//! ```

use serde::Serialize;
use std::io::{BufRead, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Serialize, Default, Clone)]
struct Case {
    link_gbit: u64,
    iperf3_gbit: Option<f64>,
    own_stream_gbit: Option<f64>,
    size_mib: u64,
    mode: String,
    downtime_ms: f64,
    total_ms: f64,
    bytes_sent: u64,
    /// total / (size / best measured throughput)
    ratio: f64,
    handover: bool,
    /// The destination built the memory while the source ran.
    prebuild: bool,
    /// The destination's report of it (pages kept, rewritten, dropped).
    prebuilt: Option<serde_json::Value>,
    /// The destination's restore proper (in the downtime).
    dest_restore_ms: f64,
    /// The source's report (`crest migrate --json`).
    source: Option<serde_json::Value>,
    verified: bool,
    error: Option<String>,
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("blast-recv") {
        return blast_recv(&args[1]);
    }
    if args.first().map(String::as_str) == Some("blast-send") {
        return blast_send(&args[1], args[2].parse().unwrap());
    }
    let mut sizes = vec![256u64, 1024];
    let mut links = vec![1u64, 10];
    let mut modes = vec!["idle".to_string(), "busy".to_string()];
    let mut json_out = PathBuf::from("target/bench-migrate.json");
    let mut pidns = false;
    let mut prebuild = vec![true];
    let mut i = 0;
    while i < args.len() {
        let v = args.get(i + 1).cloned().unwrap_or_default();
        match args[i].as_str() {
            "--sizes" => sizes = v.split(',').map(|s| s.parse().expect("size")).collect(),
            "--links" => links = v.split(',').map(|s| s.parse().expect("gbit")).collect(),
            "--modes" => modes = v.split(',').map(String::from).collect(),
            "--json-out" => json_out = PathBuf::from(v),
            "--prebuild" => {
                prebuild = v
                    .split(',')
                    .map(|s| match s {
                        "on" => true,
                        "off" => false,
                        _ => panic!("--prebuild on,off"),
                    })
                    .collect()
            }
            "--dest-pidns" => {
                pidns = true;
                i += 1;
                continue;
            }
            a => {
                eprintln!("unknown argument {a}");
                std::process::exit(2)
            }
        }
        i += 2;
    }
    // SAFETY: prctl with integer arguments only.
    unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) };
    let me = std::env::current_exe().unwrap();
    let dir = me.parent().unwrap().to_path_buf();
    let crest = dir.join("crest");
    let workload = dir.join("crest-bench-workload");
    let mut cases = Vec::new();
    for &gbit in &links {
        let net = Net::new(gbit);
        let iperf = iperf3(&net);
        let own = own_stream(&me, &net);
        eprintln!("link {gbit} Gbit/s: iperf3 {iperf:?} Gbit/s, own stream {own:?} Gbit/s");
        let best = iperf.into_iter().chain(own).fold(0f64, f64::max);
        for &mib in &sizes {
            for (mode, &pre) in modes
                .iter()
                .flat_map(|m| prebuild.iter().map(move |p| (m, p)))
            {
                let mut c = Case {
                    prebuild: pre,
                    link_gbit: gbit,
                    iperf3_gbit: iperf,
                    own_stream_gbit: own,
                    size_mib: mib,
                    mode: mode.clone(),
                    ..Default::default()
                };
                if let Err(e) = one(&net, &crest, &workload, mib, mode == "busy", pidns, &mut c) {
                    c.error = Some(e);
                }
                if best > 0.0 && c.total_ms > 0.0 {
                    let ideal_ms = (mib as f64 * 8.0 * 1048576.0) / (best * 1e9) * 1000.0;
                    c.ratio = c.total_ms / ideal_ms;
                }
                eprintln!(
                    "  {mib} MiB {mode} prebuild {pre}: downtime {:.1} ms, total {:.1} ms, sent {:.1} MiB, ratio {:.2}, verified {}{}",
                    c.downtime_ms,
                    c.total_ms,
                    c.bytes_sent as f64 / 1048576.0,
                    c.ratio,
                    c.verified,
                    c.error.as_deref().map(|e| format!(", ERROR {e}")).unwrap_or_default()
                );
                cases.push(c);
            }
        }
    }
    println!(
        "{:>5} {:>8} {:>8} {:>6} {:>5} {:>4} {:>10} {:>10} {:>10} {:>6} {:>8}",
        "Gbit",
        "iperf3",
        "own",
        "MiB",
        "mode",
        "pre",
        "down ms",
        "total ms",
        "sent MiB",
        "ratio",
        "verified"
    );
    for c in &cases {
        println!(
            "{:>5} {:>8.2} {:>8.2} {:>6} {:>5} {:>4} {:>10.1} {:>10.1} {:>10.1} {:>6.2} {:>8}",
            c.link_gbit,
            c.iperf3_gbit.unwrap_or(0.0),
            c.own_stream_gbit.unwrap_or(0.0),
            c.size_mib,
            c.mode,
            if c.prebuild { "on" } else { "off" },
            c.downtime_ms,
            c.total_ms,
            c.bytes_sent as f64 / 1048576.0,
            c.ratio,
            if c.verified { "PASS" } else { "FAIL" }
        );
    }
    let _ = std::fs::write(&json_out, serde_json::to_string_pretty(&cases).unwrap());
    eprintln!("JSON in {}", json_out.display());
    if cases.iter().any(|c| !c.verified) {
        std::process::exit(1);
    }
}

/// Two namespaces joined by a rate-limited veth pair.
struct Net {
    a: String,
    b: String,
    addr_b: String,
}

fn sh(args: &[&str]) {
    let o = Command::new(args[0])
        .args(&args[1..])
        .output()
        .expect(args[0]);
    assert!(
        o.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
}

impl Net {
    fn new(gbit: u64) -> Net {
        let tag = format!("{}g{gbit}", std::process::id() % 100_000);
        let net = Net {
            a: format!("crest-bm-{tag}-a"),
            b: format!("crest-bm-{tag}-b"),
            addr_b: "10.214.0.2".into(),
        };
        let (va, vb) = (format!("bma{tag}"), format!("bmb{tag}"));
        sh(&["ip", "netns", "add", &net.a]);
        sh(&["ip", "netns", "add", &net.b]);
        sh(&[
            "ip", "link", "add", &va, "type", "veth", "peer", "name", &vb,
        ]);
        sh(&["ip", "link", "set", &va, "netns", &net.a]);
        sh(&["ip", "link", "set", &vb, "netns", &net.b]);
        let rate = format!("{gbit}gbit");
        // A burst of a few ms at the rate keeps tbf accurate at 10 Gbit/s.
        let burst = format!("{}kb", gbit * 1000);
        for (ns, dev, host) in [(&net.a, &va, 1), (&net.b, &vb, 2)] {
            sh(&[
                "ip",
                "-n",
                ns,
                "addr",
                "add",
                &format!("10.214.0.{host}/24"),
                "dev",
                dev,
            ]);
            sh(&["ip", "-n", ns, "link", "set", dev, "up"]);
            sh(&["ip", "-n", ns, "link", "set", "lo", "up"]);
            sh(&[
                "ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", dev, "root", "tbf", "rate",
                &rate, "burst", &burst, "latency", "20ms",
            ]);
        }
        net
    }

    fn enter(ns: &str) -> Command {
        let mut c = Command::new("nsenter");
        c.arg(format!("--net=/run/netns/{ns}"));
        c
    }
}

impl Drop for Net {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).output();
        }
    }
}

/// iperf3 from a to b (single stream, 3 s): Gbit/s received.
fn iperf3(net: &Net) -> Option<f64> {
    let mut srv = Net::enter(&net.b)
        .args(["iperf3", "-s", "-1", "-B", &net.addr_b, "-p", "5299"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .ok()?;
    // The server may take a while to listen on a loaded machine: the
    // client tries again for a few seconds, and the server never outlives
    // the measurement (with no client it would wait for ever).
    let mut out = None;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let o = Net::enter(&net.a)
            .args(["iperf3", "-J", "-t", "3", "-c", &net.addr_b, "-p", "5299"])
            .output();
        match o {
            Ok(o) if o.status.success() => {
                out = Some(o);
                break;
            }
            _ => continue,
        }
    }
    let _ = srv.kill();
    let _ = srv.wait();
    let v: serde_json::Value = serde_json::from_slice(&out?.stdout).ok()?;
    v["end"]["sum_received"]["bits_per_second"]
        .as_f64()
        .map(|b| b / 1e9)
}

/// Our own single TCP stream of 512 MiB from a to b: Gbit/s.
fn own_stream(me: &Path, net: &Net) -> Option<f64> {
    let mut r = Net::enter(&net.b)
        .arg(me)
        .args(["blast-recv", &format!("{}:5300", net.addr_b)])
        .stdout(Stdio::piped())
        .spawn()
        .ok()?;
    let mut sent = false;
    for _ in 0..10 {
        std::thread::sleep(Duration::from_millis(300));
        let s = Net::enter(&net.a)
            .arg(me)
            .args(["blast-send", &format!("{}:5300", net.addr_b), "512"])
            .status();
        if s.is_ok_and(|s| s.success()) {
            sent = true;
            break;
        }
    }
    if !sent {
        // The receiver would wait for ever for a sender.
        let _ = r.kill();
        let _ = r.wait();
        return None;
    }
    let mut out = String::new();
    r.stdout.take()?.read_to_string(&mut out).ok()?;
    let _ = r.wait();
    out.trim().parse().ok()
}

fn blast_recv(addr: &str) {
    let l = std::net::TcpListener::bind(addr).unwrap();
    let (mut s, _) = l.accept().unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut n = 0u64;
    let mut t0 = None;
    loop {
        let k = s.read(&mut buf).unwrap();
        if k == 0 {
            break;
        }
        t0.get_or_insert_with(Instant::now);
        n += k as u64;
    }
    let secs = t0.map(|t| t.elapsed().as_secs_f64()).unwrap_or(1.0);
    println!("{}", n as f64 * 8.0 / secs / 1e9);
}

fn blast_send(addr: &str, mib: u64) {
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    let buf = vec![0x5au8; 1 << 20];
    for _ in 0..mib {
        s.write_all(&buf).unwrap();
    }
}

/// One migration of a `mem MIB [busy]` workload from a to b.
fn one(
    net: &Net,
    crest: &Path,
    wl: &Path,
    mib: u64,
    busy: bool,
    pidns: bool,
    c: &mut Case,
) -> Result<(), String> {
    let dir = std::env::temp_dir().join(format!("crest-bm-{}-{mib}-{busy}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
    let key = dir.join("key");
    std::fs::write(&key, [0x42u8; 32]).unwrap();
    // The workload, started inside namespace a.
    let mut run = Net::enter(&net.a);
    run.arg(crest)
        .args(["run", "--log"])
        .arg(dir.join("log"))
        .arg("--")
        .arg(wl)
        .arg("mem")
        .arg(&dir)
        .arg(mib.to_string());
    if busy {
        run.arg("busy");
    }
    let o = run.output().map_err(|e| e.to_string())?;
    let pid: i32 = String::from_utf8_lossy(&o.stdout)
        .trim()
        .parse()
        .map_err(|_| format!("crest run: {}", String::from_utf8_lossy(&o.stderr)))?;
    let t0 = Instant::now();
    while !dir.join("ready").exists() {
        if t0.elapsed() > Duration::from_secs(300) {
            return Err("workload not ready".into());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    // Let a busy workload reach its rate.
    std::thread::sleep(Duration::from_millis(500));
    let mut dest = Net::enter(&net.b);
    if pidns {
        // Another PID space, as on another host: no PID handover, and the
        // destination crest (PID 1 there) stays the restored process's parent.
        dest.args(["unshare", "--pid", "--fork", "--mount-proc"]);
    }
    if !c.prebuild {
        dest.env("CREST_NO_PREBUILD", "1");
    }
    let mut dest = dest
        .arg(crest)
        .args([
            "restore",
            "--json",
            "--listen",
            &format!("{}:0", net.addr_b),
            "--psk",
        ])
        .arg(&key)
        .args(if pidns { &[][..] } else { &["-d"][..] })
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let mut lines = std::io::BufReader::new(dest.stderr.take().unwrap()).lines();
    let first = lines.next().and_then(Result::ok).unwrap_or_default();
    let port = first.rsplit(':').next().unwrap_or("").to_string();
    let reaper = std::thread::spawn(move || {
        let mut st = 0;
        // SAFETY: waitpid on the workload, our child (we are its subreaper).
        unsafe { libc::waitpid(pid, &mut st, 0) }
    });
    let m = Net::enter(&net.a)
        .arg(crest)
        .args(["migrate", "--json", "-p", &pid.to_string(), "--to"])
        .arg(format!("{}:{port}", net.addr_b))
        .arg("--psk")
        .arg(&key)
        .output()
        .map_err(|e| e.to_string())?;
    // The destination's report: its last line of JSON (once it detached
    // or, in its own PID namespace, once it reported).
    let mut report = None;
    for l in lines.by_ref().map_while(Result::ok) {
        if let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) {
            if v.is_object() {
                report = Some(v);
                break;
            }
        }
    }
    if let Some(r) = &report {
        c.prebuilt = r.get("prebuilt").cloned();
        c.dest_restore_ms = r["restore_ms"].as_f64().unwrap_or(0.0);
    }
    if !pidns {
        let _ = dest.wait();
    }
    let err = String::from_utf8_lossy(&m.stderr).to_string();
    if !m.status.success() {
        let _ = dest.kill();
        let rest: Vec<String> = lines.map_while(Result::ok).collect();
        // SAFETY: plain kill of the workload we started.
        unsafe { libc::kill(pid, libc::SIGKILL) };
        return Err(format!("migrate: {err} / destination: {rest:?}"));
    }
    let _ = reaper.join();
    let v: serde_json::Value = serde_json::from_str(err.lines().last().unwrap_or(""))
        .map_err(|e| format!("no JSON from migrate ({e}): {err}"))?;
    c.downtime_ms = v["downtime_ms"].as_f64().unwrap_or(0.0);
    c.total_ms = v["total_ms"].as_f64().unwrap_or(0.0);
    c.bytes_sent = v["bytes_sent"].as_u64().unwrap_or(0);
    c.handover = v["handover"].as_bool().unwrap_or(false);
    c.source = Some(v.clone());
    std::fs::write(dir.join("go"), b"go\n").unwrap();
    let t0 = Instant::now();
    while !dir.join("result").exists() && t0.elapsed() < Duration::from_secs(600) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let result = std::fs::read_to_string(dir.join("result")).unwrap_or_default();
    if pidns {
        // The destination crest waits for the restored workload.
        let _ = dest.wait();
    } else {
        let mut st = 0;
        // SAFETY: reaps the restored workload (reparented to us).
        unsafe { libc::waitpid(pid, &mut st, 0) };
    }
    c.verified = result.starts_with("PASS");
    let _ = std::fs::remove_dir_all(&dir);
    if !c.verified {
        return Err(format!("verification: {result}"));
    }
    Ok(())
}
