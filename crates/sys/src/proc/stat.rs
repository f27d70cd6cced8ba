//! `/proc/PID/stat` and `/proc/PID/task/TID/stat`.

use super::{num, pid_path, read_parsed_lossy, snippet, task_path, FromStrRadix};
use crate::{Error, Result};

/// The fields of `/proc/PID/stat`, numbered as in proc_pid_stat(5).
///
/// Addresses and other fields the kernel hides from unprivileged readers
/// read as 0.  Fields after 52 (none as of Linux 6.18) are ignored.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stat {
    /// (1)
    pub pid: i32,
    /// (2) The command name, verbatim (may contain spaces and parentheses).
    pub comm: String,
    /// (3) R, S, D, T, t, Z, X, I, ...
    pub state: char,
    /// (4)
    pub ppid: i32,
    /// (5)
    pub pgrp: i32,
    /// (6)
    pub session: i32,
    /// (7)
    pub tty_nr: i32,
    /// (8)
    pub tpgid: i32,
    /// (9) `PF_*` flags.
    pub flags: u64,
    /// (10)
    pub minflt: u64,
    /// (11)
    pub cminflt: u64,
    /// (12)
    pub majflt: u64,
    /// (13)
    pub cmajflt: u64,
    /// (14) Clock ticks.
    pub utime: u64,
    /// (15) Clock ticks.
    pub stime: u64,
    /// (16)
    pub cutime: i64,
    /// (17)
    pub cstime: i64,
    /// (18)
    pub priority: i64,
    /// (19)
    pub nice: i64,
    /// (20)
    pub num_threads: i64,
    /// (21) Always 0.
    pub itrealvalue: i64,
    /// (22) Clock ticks after boot.
    pub starttime: u64,
    /// (23) Bytes.
    pub vsize: u64,
    /// (24) Pages.
    pub rss: i64,
    /// (25) Bytes.
    pub rsslim: u64,
    /// (26)
    pub start_code: u64,
    /// (27)
    pub end_code: u64,
    /// (28)
    pub start_stack: u64,
    /// (29)
    pub kstkesp: u64,
    /// (30)
    pub kstkeip: u64,
    /// (31) Obsolete, use /proc/PID/status.
    pub signal: u64,
    /// (32) Obsolete.
    pub blocked: u64,
    /// (33) Obsolete.
    pub sigignore: u64,
    /// (34) Obsolete.
    pub sigcatch: u64,
    /// (35) 0 or 1.
    pub wchan: u64,
    /// (36)
    pub nswap: u64,
    /// (37)
    pub cnswap: u64,
    /// (38)
    pub exit_signal: i32,
    /// (39)
    pub processor: i32,
    /// (40)
    pub rt_priority: u64,
    /// (41) `SCHED_*`.
    pub policy: u64,
    /// (42)
    pub delayacct_blkio_ticks: u64,
    /// (43)
    pub guest_time: u64,
    /// (44)
    pub cguest_time: i64,
    /// (45)
    pub start_data: u64,
    /// (46)
    pub end_data: u64,
    /// (47)
    pub start_brk: u64,
    /// (48)
    pub arg_start: u64,
    /// (49)
    pub arg_end: u64,
    /// (50)
    pub env_start: u64,
    /// (51)
    pub env_end: u64,
    /// (52) As for waitpid(2).
    pub exit_code: i32,
}

/// Walks the space-separated fields after the comm, numbering them.
struct Fields<'a> {
    it: std::str::SplitAsciiWhitespace<'a>,
    n: usize,
}

impl Fields<'_> {
    fn next<T: FromStrRadix>(&mut self, name: &str) -> std::result::Result<T, String> {
        self.n += 1;
        let s = self
            .it
            .next()
            .ok_or_else(|| format!("missing field {} ({name})", self.n))?;
        num(s, 10, name).map_err(|e| format!("field {}: {e}", self.n))
    }
}

/// Parses `/proc/PID/stat` text.  The comm runs from the first `(` to the
/// last `)`.
pub fn parse_stat(text: &str) -> Result<Stat> {
    parse(text).map_err(|msg| Error::parse("stat", msg))
}

/// Reads and parses `/proc/PID/stat`.
pub fn read_stat(pid: i32) -> Result<Stat> {
    read_parsed_lossy(&pid_path(pid, "stat"), parse_stat)
}

/// Reads and parses `/proc/PID/task/TID/stat`.
pub fn read_task_stat(pid: i32, tid: i32) -> Result<Stat> {
    read_parsed_lossy(&task_path(pid, tid, "stat"), parse_stat)
}

fn parse(text: &str) -> std::result::Result<Stat, String> {
    let open = text
        .find(" (")
        .ok_or_else(|| format!("no '(' before the comm in '{}'", snippet(text)))?;
    let close = text
        .rfind(')')
        .filter(|&c| c > open)
        .ok_or_else(|| format!("no ')' after the comm in '{}'", snippet(text)))?;
    let pid = num(&text[..open], 10, "pid")?;
    let comm = text[open + 2..close].to_string();
    let rest = &text[close + 1..];
    if !rest.starts_with(' ') {
        return Err(format!(
            "no space after the comm in '{}'",
            snippet(&text[close..])
        ));
    }
    let mut it = rest.split_ascii_whitespace();
    let st = it.next().ok_or("missing field 3 (state)")?;
    let mut chars = st.chars();
    let state = match (chars.next(), chars.next()) {
        (Some(c), None) => c,
        _ => return Err(format!("field 3: bad state '{}'", snippet(st))),
    };
    let mut f = Fields { it, n: 3 };
    Ok(Stat {
        pid,
        comm,
        state,
        ppid: f.next("ppid")?,
        pgrp: f.next("pgrp")?,
        session: f.next("session")?,
        tty_nr: f.next("tty_nr")?,
        tpgid: f.next("tpgid")?,
        flags: f.next("flags")?,
        minflt: f.next("minflt")?,
        cminflt: f.next("cminflt")?,
        majflt: f.next("majflt")?,
        cmajflt: f.next("cmajflt")?,
        utime: f.next("utime")?,
        stime: f.next("stime")?,
        cutime: f.next("cutime")?,
        cstime: f.next("cstime")?,
        priority: f.next("priority")?,
        nice: f.next("nice")?,
        num_threads: f.next("num_threads")?,
        itrealvalue: f.next("itrealvalue")?,
        starttime: f.next("starttime")?,
        vsize: f.next("vsize")?,
        rss: f.next("rss")?,
        rsslim: f.next("rsslim")?,
        start_code: f.next("start_code")?,
        end_code: f.next("end_code")?,
        start_stack: f.next("start_stack")?,
        kstkesp: f.next("kstkesp")?,
        kstkeip: f.next("kstkeip")?,
        signal: f.next("signal")?,
        blocked: f.next("blocked")?,
        sigignore: f.next("sigignore")?,
        sigcatch: f.next("sigcatch")?,
        wchan: f.next("wchan")?,
        nswap: f.next("nswap")?,
        cnswap: f.next("cnswap")?,
        exit_signal: f.next("exit_signal")?,
        processor: f.next("processor")?,
        rt_priority: f.next("rt_priority")?,
        policy: f.next("policy")?,
        delayacct_blkio_ticks: f.next("delayacct_blkio_ticks")?,
        guest_time: f.next("guest_time")?,
        cguest_time: f.next("cguest_time")?,
        start_data: f.next("start_data")?,
        end_data: f.next("end_data")?,
        start_brk: f.next("start_brk")?,
        arg_start: f.next("arg_start")?,
        arg_end: f.next("arg_end")?,
        env_start: f.next("env_start")?,
        env_end: f.next("env_end")?,
        exit_code: f.next("exit_code")?,
    })
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    #[test]
    fn fixture_with_weird_comm() {
        let s = parse_stat(&fixture("stat_cap.txt")).unwrap();
        assert_eq!(s.pid, 3950);
        assert_eq!(s.comm, "we) ird (na me");
        assert_eq!(s.state, 'R');
        assert_eq!(
            (s.ppid, s.pgrp, s.session, s.tty_nr, s.tpgid),
            (3939, 3939, 2524, 0, -1)
        );
        assert_eq!(s.flags, 4194304);
        assert_eq!(s.minflt, 92);
        assert_eq!(s.priority, 20);
        assert_eq!(s.nice, 0);
        assert_eq!(s.num_threads, 2);
        assert_eq!(s.starttime, 41471);
        assert_eq!(s.vsize, 13082624);
        assert_eq!(s.rss, 350);
        assert_eq!(s.rsslim, u64::MAX);
        assert_eq!(s.start_code, 93905154715648);
        assert_eq!(s.end_code, 93905154718365);
        assert_eq!(s.start_stack, 140722211384928);
        assert_eq!(s.exit_signal, 17);
        assert_eq!(s.start_data, 93905154727376);
        assert_eq!(s.end_data, 93905154728216);
        assert_eq!(s.start_brk, 93905382797312);
        assert_eq!(s.arg_start, 140722211387942);
        assert_eq!(s.arg_end, 140722211387960);
        assert_eq!(s.env_start, 140722211387960);
        assert_eq!(s.env_end, 140722211389426);
        assert_eq!(s.exit_code, 0);

        let b = parse_stat(&fixture("stat_bash.txt")).unwrap();
        assert_eq!(b.comm, "bash");
        assert!(b.arg_start < b.arg_end && b.env_start < b.env_end);
    }

    #[test]
    fn comm_edge_cases() {
        let tail = " S 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26 \
                    27 28 29 30 31 32 33 34 35 36 37 38 39 40 41 42 43 44 45 46 47 48 49\n";
        let s = parse_stat(&format!("7 ()){tail}")).unwrap();
        assert_eq!(s.comm, ")");
        assert_eq!(s.exit_code, 49);
        let s = parse_stat(&format!("7 (){tail}")).unwrap();
        assert_eq!(s.comm, "");
        let s = parse_stat(&format!("7 (a\nb) ){tail}")).unwrap();
        assert_eq!(s.comm, "a\nb) ");
        // Extra trailing fields from a future kernel are ignored.
        let s = parse_stat(&format!("7 (x){} 50 51\n", tail.trim_end())).unwrap();
        assert_eq!(s.exit_code, 49);
    }

    #[test]
    fn read_self_and_thread() {
        let pid = std::process::id() as i32;
        let s = read_stat(pid).unwrap();
        assert_eq!(s.pid, pid);
        assert!(s.num_threads >= 1);
        let t = read_task_stat(pid, pid).unwrap();
        assert_eq!(t.pid, pid);
        let err = read_stat(-1).unwrap_err().to_string();
        assert!(err.contains("/proc/-1/stat"), "{err}");
    }

    #[test]
    fn garbage_is_an_error() {
        let full = fixture("stat_cap.txt");
        let cases: Vec<(String, &str)> = vec![
            (String::new(), "no '('"),
            ("1 (x".into(), "no ')'"),
            (") 1 (x".into(), "no ')'"),
            ("x (a) R".into(), "bad pid"),
            ("1 (a)R 1".into(), "no space after"),
            ("1 (a) ".into(), "missing field 3 (state)"),
            ("1 (a) RR 1".into(), "field 3: bad state"),
            ("1 (a) R 1 2".into(), "missing field 6 (session)"),
            (
                full.replace(" 41471 ", " x "),
                "field 22: bad starttime 'x'",
            ),
            (
                full.replace(" 13082624 ", " -1 "),
                "field 23: bad vsize '-1'",
            ),
            (
                full.rsplit_once(' ').unwrap().0.to_string(),
                "missing field 52 (exit_code)",
            ),
        ];
        for (text, want) in cases {
            let err = parse_stat(&text).unwrap_err().to_string();
            assert!(err.starts_with("stat: "), "{text:?}: {err}");
            assert!(err.contains(want), "{text:?}: {err}");
        }
    }
}
