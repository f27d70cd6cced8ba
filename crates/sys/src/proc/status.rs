//! `/proc/PID/status` and `/proc/PID/task/TID/status`.

use super::{num, pid_path, read_parsed_lossy, snippet, task_path, FromStrRadix};
use crate::{Error, Result};

/// The fields crest uses from `/proc/PID/status`.
///
/// `Name`, `State`, `Tgid`, `Pid`, `PPid`, `Uid` and `Gid` must be present;
/// other lines, if missing, leave their default (0, empty, None).  Lines
/// this struct has no field for are skipped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Status {
    /// The command name, with the kernel's `\n` and `\\` escapes undone.
    pub name: String,
    /// Octal in the file.
    pub umask: Option<u32>,
    /// First letter of `State:` (R, S, D, T, t, Z, X, I, ...).
    pub state: char,
    pub tgid: i32,
    /// NUMA group leader pid, 0 if none.
    pub ngid: i32,
    pub pid: i32,
    pub ppid: i32,
    /// 0 if not traced.
    pub tracer_pid: i32,
    /// Real, effective, saved, filesystem.
    pub uid: [u32; 4],
    /// Real, effective, saved, filesystem.
    pub gid: [u32; 4],
    pub fd_size: u32,
    /// Supplementary groups.
    pub groups: Vec<u32>,
    /// Ids in each nested pid namespace, outermost first.
    pub ns_tgid: Vec<i32>,
    pub ns_pid: Vec<i32>,
    pub ns_pgid: Vec<i32>,
    pub ns_sid: Vec<i32>,
    pub threads: u32,
    /// Queued signals / limit.
    pub sig_q: (u64, u64),
    /// Thread-pending signal mask.
    pub sig_pnd: u64,
    /// Process-wide pending signal mask.
    pub shd_pnd: u64,
    pub sig_blk: u64,
    pub sig_ign: u64,
    pub sig_cgt: u64,
    pub cap_inh: u64,
    pub cap_prm: u64,
    pub cap_eff: u64,
    pub cap_bnd: u64,
    pub cap_amb: u64,
    pub no_new_privs: u32,
    /// 0 disabled, 1 strict, 2 filter.
    pub seccomp: u32,
    pub seccomp_filters: u32,
}

/// Parses `/proc/PID/status` text.
pub fn parse_status(text: &str) -> Result<Status> {
    let mut st = Status::default();
    let mut seen = 0u8;
    const REQUIRED: [&str; 7] = ["Name", "State", "Tgid", "Pid", "PPid", "Uid", "Gid"];
    for (i, line) in text.lines().enumerate() {
        let fail = |msg: String| Error::parse("status", format!("line {}: {msg}", i + 1));
        let (key, raw) = line
            .split_once(':')
            .ok_or_else(|| fail(format!("no ':' in '{}'", snippet(line))))?;
        if let Some(k) = REQUIRED.iter().position(|r| *r == key) {
            seen |= 1 << k;
        }
        field(&mut st, key, raw).map_err(fail)?;
    }
    if let Some(k) = (0..REQUIRED.len()).find(|k| seen & (1 << k) == 0) {
        return Err(Error::parse(
            "status",
            format!("missing {} line", REQUIRED[k]),
        ));
    }
    Ok(st)
}

/// Reads and parses `/proc/PID/status`.
pub fn read_status(pid: i32) -> Result<Status> {
    read_parsed_lossy(&pid_path(pid, "status"), parse_status)
}

/// Reads and parses `/proc/PID/task/TID/status`.
pub fn read_task_status(pid: i32, tid: i32) -> Result<Status> {
    read_parsed_lossy(&task_path(pid, tid, "status"), parse_status)
}

type Res<T> = std::result::Result<T, String>;

fn field(st: &mut Status, key: &str, raw: &str) -> Res<()> {
    let v = raw.trim();
    match key {
        // The name may begin or end with spaces: strip only the tab.
        "Name" => st.name = unescape(raw.strip_prefix('\t').unwrap_or(raw)),
        "Umask" => st.umask = Some(num(v, 8, "Umask")?),
        "State" => st.state = v.chars().next().ok_or_else(|| "empty State".to_string())?,
        "Tgid" => st.tgid = num(v, 10, key)?,
        "Ngid" => st.ngid = num(v, 10, key)?,
        "Pid" => st.pid = num(v, 10, key)?,
        "PPid" => st.ppid = num(v, 10, key)?,
        "TracerPid" => st.tracer_pid = num(v, 10, key)?,
        "Uid" => st.uid = four(v, key)?,
        "Gid" => st.gid = four(v, key)?,
        "FDSize" => st.fd_size = num(v, 10, key)?,
        "Groups" => st.groups = list(v, key)?,
        "NStgid" => st.ns_tgid = list(v, key)?,
        "NSpid" => st.ns_pid = list(v, key)?,
        "NSpgid" => st.ns_pgid = list(v, key)?,
        "NSsid" => st.ns_sid = list(v, key)?,
        "Threads" => st.threads = num(v, 10, key)?,
        "SigQ" => {
            let bad = || format!("bad SigQ '{}'", snippet(v));
            let (a, b) = v.split_once('/').ok_or_else(bad)?;
            st.sig_q = (
                num(a, 10, key).map_err(|_| bad())?,
                num(b, 10, key).map_err(|_| bad())?,
            );
        }
        "SigPnd" => st.sig_pnd = num(v, 16, key)?,
        "ShdPnd" => st.shd_pnd = num(v, 16, key)?,
        "SigBlk" => st.sig_blk = num(v, 16, key)?,
        "SigIgn" => st.sig_ign = num(v, 16, key)?,
        "SigCgt" => st.sig_cgt = num(v, 16, key)?,
        "CapInh" => st.cap_inh = num(v, 16, key)?,
        "CapPrm" => st.cap_prm = num(v, 16, key)?,
        "CapEff" => st.cap_eff = num(v, 16, key)?,
        "CapBnd" => st.cap_bnd = num(v, 16, key)?,
        "CapAmb" => st.cap_amb = num(v, 16, key)?,
        "NoNewPrivs" => st.no_new_privs = num(v, 10, key)?,
        "Seccomp" => st.seccomp = num(v, 10, key)?,
        "Seccomp_filters" => st.seccomp_filters = num(v, 10, key)?,
        _ => {}
    }
    Ok(())
}

fn four(v: &str, key: &str) -> Res<[u32; 4]> {
    let mut out = [0u32; 4];
    let mut it = v.split_ascii_whitespace();
    for slot in &mut out {
        let s = it
            .next()
            .ok_or_else(|| format!("{key} has fewer than 4 ids: '{}'", snippet(v)))?;
        *slot = num(s, 10, key)?;
    }
    if it.next().is_some() {
        return Err(format!("{key} has more than 4 ids: '{}'", snippet(v)));
    }
    Ok(out)
}

fn list<T: FromStrRadix>(v: &str, key: &str) -> Res<Vec<T>> {
    v.split_ascii_whitespace()
        .map(|s| num(s, 10, key))
        .collect()
}

/// Undoes the kernel's escaping of the task name (`\n` and `\\`); other
/// backslashes are left as they are.
fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.clone().next() {
            Some('n') => {
                chars.next();
                out.push('\n');
            }
            Some('\\') => {
                chars.next();
                out.push('\\');
            }
            _ => out.push('\\'),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    #[test]
    fn fixture_fields() {
        let s = parse_status(&fixture("status_cap.txt")).unwrap();
        assert_eq!(s.name, "we) ird (na me");
        assert_eq!(s.umask, Some(0o022));
        assert_eq!(s.state, 'R');
        assert_eq!(
            (s.tgid, s.ngid, s.pid, s.ppid, s.tracer_pid),
            (3950, 0, 3950, 3939, 0)
        );
        assert_eq!(s.uid, [0; 4]);
        assert_eq!(s.gid, [0; 4]);
        assert_eq!(s.fd_size, 256);
        assert!(s.groups.is_empty());
        assert_eq!(s.ns_tgid, [3950]);
        assert_eq!(s.ns_pid, [3950]);
        assert_eq!(s.ns_pgid, [3939]);
        assert_eq!(s.ns_sid, [2524]);
        assert_eq!(s.threads, 2);
        assert_eq!(s.sig_q, (0, 96365));
        assert_eq!(s.sig_pnd, 0);
        assert_eq!(s.shd_pnd, 0);
        assert_eq!(s.sig_blk, 0x4200);
        assert_eq!(s.sig_ign, 0);
        assert_eq!(s.sig_cgt, 0x100000000);
        assert_eq!(s.cap_inh, 0);
        assert_eq!(s.cap_prm, 0x1fffeffffff);
        assert_eq!(s.cap_eff, 0x1fffeffffff);
        assert_eq!(s.cap_bnd, 0x1fffeffffff);
        assert_eq!(s.cap_amb, 0);
        assert_eq!((s.no_new_privs, s.seccomp, s.seccomp_filters), (0, 0, 0));

        let b = parse_status(&fixture("status_bash.txt")).unwrap();
        assert_eq!(b.name, "bash");
        assert_eq!(b.threads, 1);
    }

    #[test]
    fn minimal_and_nested() {
        let text = "Name:\t a\\nb\\\\c\\t \nState:\tS (sleeping)\nTgid:\t5\nPid:\t6\nPPid:\t1\n\
                    Uid:\t1\t2\t3\t4\nGid:\t5\t6\t7\t8\nGroups:\t10 20 30 \n\
                    NSpid:\t6\t1\nNStgid:\t5\t1\nSomethingNew:\tx y z\n";
        let s = parse_status(text).unwrap();
        assert_eq!(s.name, " a\nb\\c\\t ");
        assert_eq!(s.state, 'S');
        assert_eq!((s.tgid, s.pid, s.ppid), (5, 6, 1));
        assert_eq!(s.uid, [1, 2, 3, 4]);
        assert_eq!(s.gid, [5, 6, 7, 8]);
        assert_eq!(s.groups, [10, 20, 30]);
        assert_eq!(s.ns_pid, [6, 1]);
        assert_eq!(s.ns_tgid, [5, 1]);
        assert_eq!(s.umask, None);
        assert_eq!(s.cap_eff, 0);
        assert_eq!(s.seccomp_filters, 0);
    }

    #[test]
    fn read_self_and_thread() {
        let pid = std::process::id() as i32;
        let s = read_status(pid).unwrap();
        assert_eq!(s.pid, pid);
        assert_eq!(s.tgid, pid);
        assert!(s.umask.is_some());
        let t = read_task_status(pid, pid).unwrap();
        assert_eq!(t.pid, pid);
        let err = read_task_status(pid, -3).unwrap_err().to_string();
        assert!(err.contains("/task/-3/status"), "{err}");
    }

    #[test]
    fn garbage_is_an_error() {
        let full = fixture("status_cap.txt");
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "missing Name line"),
            ("garbage".into(), "line 1: no ':' in 'garbage'"),
            (full.replace("Pid:\t3950\n", ""), "missing Pid line"),
            (
                full.replace("Uid:\t0\t0\t0\t0", "Uid:\t0\t0\t0"),
                "Uid has fewer than 4",
            ),
            (
                full.replace("Gid:\t0\t0\t0\t0", "Gid:\t0\t0\t0\t0\t0"),
                "Gid has more than 4",
            ),
            (
                full.replace("Umask:\t0022", "Umask:\t0099"),
                "line 2: bad Umask '0099'",
            ),
            (full.replace("SigQ:\t0/96365", "SigQ:\t0-96365"), "bad SigQ"),
            (
                full.replace("CapEff:\t000001fffeffffff", "CapEff:\tzz"),
                "bad CapEff 'zz'",
            ),
            (
                full.replace("CapEff:\t000001fffeffffff", "CapEff:\t10000000000000000"),
                "bad CapEff",
            ),
            (
                full.replace("State:\tR (running)", "State:\t"),
                "empty State",
            ),
            (
                full.replace("NSpid:\t3950", "NSpid:\t3950 x"),
                "bad NSpid 'x'",
            ),
            (full.replace("Threads:\t2", "Threads:\t-2"), "bad Threads"),
        ];
        for (text, want) in cases {
            let err = parse_status(&text).unwrap_err().to_string();
            assert!(err.starts_with("status: "), "{err}");
            assert!(err.contains(want), "{want}: {err}");
        }
    }
}
