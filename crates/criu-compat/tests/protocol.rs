//! The swrk protocol without a runtime: the server runs on one end of a
//! socket pair in a thread, the test speaks on the other.  Bad input of
//! every kind gets an error response (or the server ends), and a refused
//! request leaves the process it named as it was.

use crest_criu_compat::rpc::*;
use crest_criu_compat::server;
use crest_criu_compat::transport::{self, Packet};
use prost::Message;
use std::os::fd::OwnedFd;
use std::thread::JoinHandle;

/// A server on a fresh socket pair: (the runtime's end, the server thread).
fn start() -> (OwnedFd, JoinHandle<i32>) {
    let (client, srv) = transport::seqpacket_pair().unwrap();
    let h = std::thread::spawn(move || server::serve(srv));
    (client, h)
}

fn send(c: &OwnedFd, bytes: &[u8]) {
    transport::send(c, bytes).unwrap();
}

fn recv(c: &OwnedFd) -> CriuResp {
    match transport::recv(c).unwrap() {
        Packet::Data(d) => CriuResp::decode(&d[..]).expect("a criu_resp"),
        Packet::Closed => panic!("the server closed the socket without answering"),
    }
}

fn req(kind: CriuReqType) -> CriuReq {
    CriuReq {
        r#type: kind as i32,
        ..Default::default()
    }
}

/// One request, its response and the server's exit status.
fn one(r: &CriuReq) -> (CriuResp, i32) {
    let (c, h) = start();
    send(&c, &r.encode_to_vec());
    let resp = recv(&c);
    drop(c);
    (resp, h.join().unwrap())
}

#[test]
fn version_is_one_the_runtimes_accept() {
    let (resp, code) = one(&req(CriuReqType::Version));
    assert!(resp.success);
    assert_eq!(resp.r#type, CriuReqType::Version as i32);
    let v = resp.version.unwrap();
    // go-criu's number: major*10000 + minor*100 + sublevel, and no gitid
    // (which would bump it).
    let n = v.major_number * 10000 + v.minor_number * 100 + v.sublevel.unwrap_or(0);
    assert!(n >= 31600, "podman needs 3.16 for pods, crun 3.15: {n}");
    assert!(v.gitid.is_none());
    assert_eq!(code, 0);
}

#[test]
fn check_succeeds_as_root() {
    let (resp, code) = one(&req(CriuReqType::Check));
    assert!(resp.success, "{:?}", resp.cr_errmsg);
    assert_eq!(code, 0);
}

#[test]
fn feature_check_answers_what_was_asked_honestly() {
    let mut r = req(CriuReqType::FeatureCheck);
    r.features = Some(CriuFeatures {
        mem_track: Some(true),
        lazy_pages: Some(true),
        pidfd_store: None,
    });
    let (resp, _) = one(&r);
    assert!(resp.success);
    let f = resp.features.unwrap();
    assert_eq!(f.mem_track, Some(false));
    assert_eq!(f.lazy_pages, Some(false));
    assert_eq!(f.pidfd_store, None, "not asked, not answered");
}

#[test]
fn keep_open_serves_several_requests() {
    let (c, h) = start();
    let mut r = req(CriuReqType::Version);
    r.keep_open = Some(true);
    send(&c, &r.encode_to_vec());
    assert!(recv(&c).success);
    send(&c, &req(CriuReqType::Check).encode_to_vec());
    let resp = recv(&c);
    assert!(resp.success && resp.r#type == CriuReqType::Check as i32);
    assert_eq!(h.join().unwrap(), 0, "no keep_open on the second: it ends");
}

fn expect_error(resp: &CriuResp, code: i32, wants: &[&str]) {
    assert!(!resp.success, "must fail: {resp:?}");
    let msg = resp.cr_errmsg.clone().unwrap_or_default();
    for w in wants {
        assert!(msg.contains(w), "error lacks {w:?}: {msg}");
    }
    assert_eq!(code, 1, "the server exits with an error");
}

#[test]
fn malformed_request_gets_an_error() {
    let (c, h) = start();
    send(&c, &[0xff, 0xff, 0xff]);
    let resp = recv(&c);
    expect_error(&resp, h.join().unwrap(), &["malformed request"]);
}

#[test]
fn truncated_request_gets_an_error() {
    let mut r = req(CriuReqType::Dump);
    r.opts = Some(CriuOpts {
        images_dir: Some("/nonexistent-images".into()),
        pid: Some(1),
        ..Default::default()
    });
    let bytes = r.encode_to_vec();
    for cut in [1, bytes.len() / 2, bytes.len() - 1] {
        let (c, h) = start();
        send(&c, &bytes[..cut]);
        let resp = recv(&c);
        expect_error(&resp, h.join().unwrap(), &["malformed request"]);
    }
}

#[test]
fn request_without_a_type_gets_an_error() {
    // Only keep_open (field 4), no field 1.
    let mut b = Vec::new();
    prost::encoding::bool::encode(4, &true, &mut b);
    let (c, h) = start();
    send(&c, &b);
    expect_error(&recv(&c), h.join().unwrap(), &["no request type"]);
}

#[test]
fn unknown_request_type_gets_an_error() {
    let r = CriuReq {
        r#type: 99,
        ..Default::default()
    };
    let (resp, code) = one(&r);
    assert_eq!(resp.r#type, 99);
    expect_error(&resp, code, &["unknown request type 99"]);
}

#[test]
fn unimplemented_request_types_are_named() {
    for (k, name) in [
        (CriuReqType::PreDump, "PRE_DUMP"),
        (CriuReqType::SinglePreDump, "SINGLE_PRE_DUMP"),
        (CriuReqType::PageServer, "PAGE_SERVER"),
        (CriuReqType::CpuinfoDump, "CPUINFO_DUMP"),
        (CriuReqType::WaitPid, "WAIT_PID"),
    ] {
        let (resp, code) = one(&req(k));
        expect_error(&resp, code, &[name]);
    }
    let (resp, code) = one(&req(CriuReqType::Notify));
    expect_error(&resp, code, &["none is pending"]);
}

#[test]
fn closed_socket_before_a_request_ends_the_server() {
    let (c, h) = start();
    drop(c);
    assert_eq!(h.join().unwrap(), 1);
}

#[test]
fn dump_without_options_or_images_is_refused() {
    let (resp, code) = one(&req(CriuReqType::Dump));
    expect_error(&resp, code, &["DUMP without options"]);
    let mut r = req(CriuReqType::Dump);
    r.opts = Some(CriuOpts {
        pid: Some(1),
        ..Default::default()
    });
    let (resp, code) = one(&r);
    expect_error(&resp, code, &["no images directory"]);
    r.opts = Some(CriuOpts {
        images_dir: Some("/nonexistent-crest-images".into()),
        pid: Some(1),
        ..Default::default()
    });
    let (resp, code) = one(&r);
    expect_error(&resp, code, &["images_dir /nonexistent-crest-images"]);
}

/// A process for a request to name: must be left exactly as it was.
struct Target(std::process::Child);

impl Target {
    /// A `sleep 60`, once it sleeps.
    fn start() -> Target {
        let t = Target(
            std::process::Command::new("sleep")
                .arg("60")
                .stdin(std::process::Stdio::null())
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .unwrap(),
        );
        let t0 = std::time::Instant::now();
        while t
            .field("State:")
            .map(|s| !s.starts_with('S'))
            .unwrap_or(true)
            || t.field("Name:").as_deref() != Some("sleep")
        {
            assert!(t0.elapsed().as_secs() < 10, "sleep did not start");
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        t
    }

    fn field(&self, k: &str) -> Option<String> {
        let st = std::fs::read_to_string(format!("/proc/{}/status", self.pid())).ok()?;
        st.lines()
            .find_map(|l| l.strip_prefix(k))
            .map(|v| v.trim().to_string())
    }

    fn pid(&self) -> i32 {
        self.0.id() as i32
    }

    /// Still sleeping (not stopped, not killed), traced by no one.
    fn assert_untouched(&self) {
        let state = self.field("State:").expect("the process is gone");
        assert!(state.starts_with('S'), "state {state}");
        assert_eq!(self.field("TracerPid:").as_deref(), Some("0"));
    }
}

impl Drop for Target {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn temp_dir(tag: &str) -> std::path::PathBuf {
    let d = std::env::temp_dir().join(format!("crest-proto-{}-{tag}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

#[test]
fn unimplemented_options_are_refused_by_name_and_nothing_is_done() {
    let t = Target::start();
    let dir = temp_dir("opts");
    let cases: Vec<(&str, CriuOpts)> = vec![
        (
            "ext_mnt",
            CriuOpts {
                // Named by something else than a mount point.
                ext_mnt: vec![ExtMountMap {
                    key: "hosts".into(),
                    val: "/etc/hosts".into(),
                }],
                ..Default::default()
            },
        ),
        (
            "external",
            CriuOpts {
                // Only an external network namespace is implemented.
                external: vec!["mnt[/etc/hosts]:hosts".into()],
                ..Default::default()
            },
        ),
        (
            "inherit_fd",
            CriuOpts {
                inherit_fd: vec![InheritFd {
                    key: "pipe:[1234]".into(),
                    fd: 1,
                }],
                ..Default::default()
            },
        ),
        (
            "lsm_profile",
            CriuOpts {
                lsm_profile: Some("apparmor:x".into()),
                ..Default::default()
            },
        ),
        (
            "parent_img",
            CriuOpts {
                parent_img: Some("../pre".into()),
                track_mem: Some(true),
                ..Default::default()
            },
        ),
        (
            "manage_cgroups_mode",
            CriuOpts {
                manage_cgroups: Some(true),
                manage_cgroups_mode: Some(CriuCgMode::Full as i32),
                ..Default::default()
            },
        ),
        (
            "cg_root",
            CriuOpts {
                cg_root: vec![CgroupRoot {
                    ctrl: Some("memory".into()),
                    path: "/crest-nowhere".into(),
                }],
                ..Default::default()
            },
        ),
        (
            "empty_ns",
            CriuOpts {
                // Only the network namespace may be left empty.
                empty_ns: Some((libc::CLONE_NEWNET | libc::CLONE_NEWUTS) as u32),
                ..Default::default()
            },
        ),
        (
            "lazy_pages",
            CriuOpts {
                lazy_pages: Some(true),
                ..Default::default()
            },
        ),
        (
            "ps",
            CriuOpts {
                ps: Some(CriuPageServerInfo {
                    address: Some("127.0.0.1".into()),
                    port: Some(1),
                    ..Default::default()
                }),
                ..Default::default()
            },
        ),
    ];
    for (name, mut o) in cases {
        o.pid = Some(t.pid());
        o.images_dir = Some(dir.to_str().unwrap().into());
        o.log_file = Some("dump.log".into());
        let mut r = req(CriuReqType::Dump);
        r.opts = Some(o);
        let (resp, code) = one(&r);
        expect_error(&resp, code, &["options crest does not implement", name]);
        t.assert_untouched();
        assert!(!dir.join("crest.img").exists());
        let log = std::fs::read_to_string(dir.join("dump.log")).unwrap();
        assert!(log.contains(name), "the log names it too: {log}");
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_option_fields_are_refused_by_number() {
    let t = Target::start();
    let dir = temp_dir("unknown");
    let mut r = req(CriuReqType::Dump);
    r.opts = Some(CriuOpts {
        pid: Some(t.pid()),
        images_dir: Some(dir.to_str().unwrap().into()),
        ..Default::default()
    });
    let mut bytes = r.encode_to_vec();
    // Append a second options field holding only field 200 (a varint):
    // protobuf merges it into the first.
    let mut extra = Vec::new();
    prost::encoding::uint32::encode(200, &1, &mut extra);
    prost::encoding::encode_key(2, prost::encoding::WireType::LengthDelimited, &mut bytes);
    prost::encoding::encode_varint(extra.len() as u64, &mut bytes);
    bytes.extend_from_slice(&extra);
    let (c, h) = start();
    send(&c, &bytes);
    expect_error(&recv(&c), h.join().unwrap(), &["criu_opts field 200"]);
    t.assert_untouched();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn unknown_request_fields_are_refused() {
    let mut b = req(CriuReqType::Version).encode_to_vec();
    prost::encoding::uint32::encode(42, &7, &mut b);
    let (c, h) = start();
    send(&c, &b);
    expect_error(&recv(&c), h.join().unwrap(), &["criu_req field 42"]);
}

#[test]
fn a_failed_pre_dump_hook_aborts_before_anything_is_done() {
    let t = Target::start();
    let dir = temp_dir("hook");
    let mut r = req(CriuReqType::Dump);
    r.opts = Some(CriuOpts {
        pid: Some(t.pid()),
        images_dir: Some(dir.to_str().unwrap().into()),
        notify_scripts: Some(true),
        ..Default::default()
    });
    // The runtime says the hook failed.
    let (c, h) = start();
    send(&c, &r.encode_to_vec());
    let n = recv(&c);
    assert_eq!(n.r#type, CriuReqType::Notify as i32);
    assert_eq!(n.notify.unwrap().script.as_deref(), Some("pre-dump"));
    let mut ack = req(CriuReqType::Notify);
    ack.notify_success = Some(false);
    send(&c, &ack.encode_to_vec());
    expect_error(&recv(&c), h.join().unwrap(), &["pre-dump hook failed"]);
    t.assert_untouched();
    // The runtime goes away in the middle of the notification.
    let (c, h) = start();
    send(&c, &r.encode_to_vec());
    let n = recv(&c);
    assert_eq!(n.r#type, CriuReqType::Notify as i32);
    drop(c);
    assert_eq!(h.join().unwrap(), 1);
    t.assert_untouched();
    assert!(!dir.join("crest.img").exists());
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn the_schema_file_lists_the_option_numbers_the_server_knows() {
    // proto/rpc.proto is the contract; OPTS_FIELDS/OPTS_FIELD_GAP decide
    // which option numbers are unknown.  They must agree.
    let text = include_str!("../proto/rpc.proto");
    let start = text.find("message criu_opts {").unwrap();
    let body = &text[start..start + text[start..].find("\n}").unwrap()];
    let mut nums: Vec<u32> = body
        .lines()
        .filter_map(|l| l.split('=').nth(1))
        .filter_map(|r| {
            r.trim()
                .split(|c: char| !c.is_ascii_digit())
                .next()
                .and_then(|n| n.parse().ok())
        })
        .collect();
    nums.sort();
    let want: Vec<u32> = OPTS_FIELDS.filter(|n| *n != OPTS_FIELD_GAP).collect();
    assert_eq!(nums, want);
}

#[test]
fn freeze_cgroup_refuses_a_container_process_outside_the_tree() {
    // A freezer cgroup of this test's own, holding the target and an
    // unrelated process: dumping the target alone would leave the other
    // running outside the checkpoint.
    let dir = format!(
        "/sys/fs/cgroup/freezer/crest-test-{}-freeze",
        std::process::id()
    );
    std::fs::create_dir(&dir).expect("creating a freezer cgroup (cgroup v1 freezer)");
    let t = Target::start();
    let other = Target::start();
    let images = temp_dir("freeze");
    let run = || {
        let mut r = req(CriuReqType::Dump);
        r.opts = Some(CriuOpts {
            pid: Some(t.pid()),
            images_dir: Some(images.to_str().unwrap().into()),
            freeze_cgroup: Some(dir.clone()),
            ..Default::default()
        });
        one(&r)
    };
    let procs = format!("{dir}/cgroup.procs");
    std::fs::write(&procs, t.pid().to_string()).unwrap();
    std::fs::write(&procs, other.pid().to_string()).unwrap();
    let (resp, code) = run();
    // Move them back out before asserting, so the cgroup can go.
    let root = "/sys/fs/cgroup/freezer/cgroup.procs";
    let _ = std::fs::write(root, t.pid().to_string());
    let _ = std::fs::write(root, other.pid().to_string());
    let _ = std::fs::remove_dir(&dir);
    expect_error(
        &resp,
        code,
        &["freeze_cgroup", &format!("[{}]", other.pid()), "escape"],
    );
    t.assert_untouched();
    other.assert_untouched();
    let _ = std::fs::remove_dir_all(&images);
}
