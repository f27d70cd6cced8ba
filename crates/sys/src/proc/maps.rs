//! `/proc/PID/maps` and `/proc/PID/smaps`.

use super::{num, pid_path, read_parsed, snippet};
use crate::{Error, Result};

/// The two-letter codes of the smaps `VmFlags:` line, as bits.
///
/// The bit values are crest's own (they are not the kernel's `VM_*`
/// values, which differ between architectures and kernel versions).  Codes
/// this version does not know are kept, in order, in [`VmFlags::unknown`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct VmFlags {
    /// Known flags, an OR of the associated constants.
    pub bits: u64,
    /// Codes that are not in [`VmFlags::CODES`], in the order printed.
    pub unknown: Vec<String>,
}

impl VmFlags {
    /// `rd`: readable.
    pub const READ: u64 = 1 << 0;
    /// `wr`: writable.
    pub const WRITE: u64 = 1 << 1;
    /// `ex`: executable.
    pub const EXEC: u64 = 1 << 2;
    /// `sh`: shared.
    pub const SHARED: u64 = 1 << 3;
    /// `mr`: may read.
    pub const MAY_READ: u64 = 1 << 4;
    /// `mw`: may write.
    pub const MAY_WRITE: u64 = 1 << 5;
    /// `me`: may execute.
    pub const MAY_EXEC: u64 = 1 << 6;
    /// `ms`: may share.
    pub const MAY_SHARE: u64 = 1 << 7;
    /// `gd`: stack segment grows down.
    pub const GROWS_DOWN: u64 = 1 << 8;
    /// `pf`: pure PFN range.
    pub const PFN_MAP: u64 = 1 << 9;
    /// `lf`: lock pages on fault (`mlock2(MLOCK_ONFAULT)`).
    pub const LOCK_ON_FAULT: u64 = 1 << 10;
    /// `dw`: writes to the mapped file denied (old kernels).
    pub const DENY_WRITE: u64 = 1 << 11;
    /// `lo`: pages are locked in memory.
    pub const LOCKED: u64 = 1 << 12;
    /// `io`: memory-mapped I/O area.
    pub const IO: u64 = 1 << 13;
    /// `sr`: sequential read advised.
    pub const SEQ_READ: u64 = 1 << 14;
    /// `rr`: random read advised.
    pub const RAND_READ: u64 = 1 << 15;
    /// `dc`: do not copy on fork (`MADV_DONTFORK`).
    pub const DONT_COPY: u64 = 1 << 16;
    /// `de`: do not expand on mremap.
    pub const DONT_EXPAND: u64 = 1 << 17;
    /// `ac`: accountable area.
    pub const ACCOUNT: u64 = 1 << 18;
    /// `nr`: swap space not reserved (`MAP_NORESERVE`).
    pub const NO_RESERVE: u64 = 1 << 19;
    /// `ht`: hugetlb pages.
    pub const HUGETLB: u64 = 1 << 20;
    /// `sf`: synchronous page faults (`MAP_SYNC`).
    pub const SYNC: u64 = 1 << 21;
    /// `nl`: non-linear mapping (old kernels).
    pub const NONLINEAR: u64 = 1 << 22;
    /// `ar`: architecture-specific flag.
    pub const ARCH_1: u64 = 1 << 23;
    /// `wf`: wipe on fork (`MADV_WIPEONFORK`).
    pub const WIPE_ON_FORK: u64 = 1 << 24;
    /// `dd`: not included in core dumps (`MADV_DONTDUMP`).
    pub const DONT_DUMP: u64 = 1 << 25;
    /// `sd`: soft-dirty.
    pub const SOFT_DIRTY: u64 = 1 << 26;
    /// `mm`: mixed map.
    pub const MIXED_MAP: u64 = 1 << 27;
    /// `hg`: `MADV_HUGEPAGE`.
    pub const HUGEPAGE: u64 = 1 << 28;
    /// `nh`: `MADV_NOHUGEPAGE`.
    pub const NO_HUGEPAGE: u64 = 1 << 29;
    /// `mg`: `MADV_MERGEABLE` (KSM).
    pub const MERGEABLE: u64 = 1 << 30;
    /// `bt`: arm64 BTI guarded page.
    pub const ARM64_BTI: u64 = 1 << 31;
    /// `mt`: arm64 MTE tags enabled.
    pub const ARM64_MTE: u64 = 1 << 32;
    /// `um`: userfaultfd missing-page tracking.
    pub const UFFD_MISSING: u64 = 1 << 33;
    /// `uw`: userfaultfd write-protect tracking.
    pub const UFFD_WP: u64 = 1 << 34;
    /// `ui`: userfaultfd minor-fault tracking.
    pub const UFFD_MINOR: u64 = 1 << 35;
    /// `ss`: shadow stack.
    pub const SHADOW_STACK: u64 = 1 << 36;
    /// `sl`: sealed (`mseal`).
    pub const SEALED: u64 = 1 << 37;
    /// `dp`: droppable (always lazily freeable).
    pub const DROPPABLE: u64 = 1 << 38;
    /// `gu`: may contain guard regions.
    pub const MAYBE_GUARD: u64 = 1 << 39;

    /// Every known code with its bit, in the kernel's printing order.
    pub const CODES: &'static [(&'static str, u64)] = &[
        ("rd", Self::READ),
        ("wr", Self::WRITE),
        ("ex", Self::EXEC),
        ("sh", Self::SHARED),
        ("mr", Self::MAY_READ),
        ("mw", Self::MAY_WRITE),
        ("me", Self::MAY_EXEC),
        ("ms", Self::MAY_SHARE),
        ("gd", Self::GROWS_DOWN),
        ("pf", Self::PFN_MAP),
        ("lf", Self::LOCK_ON_FAULT),
        ("dw", Self::DENY_WRITE),
        ("lo", Self::LOCKED),
        ("io", Self::IO),
        ("sr", Self::SEQ_READ),
        ("rr", Self::RAND_READ),
        ("dc", Self::DONT_COPY),
        ("de", Self::DONT_EXPAND),
        ("ac", Self::ACCOUNT),
        ("nr", Self::NO_RESERVE),
        ("ht", Self::HUGETLB),
        ("sf", Self::SYNC),
        ("nl", Self::NONLINEAR),
        ("ar", Self::ARCH_1),
        ("wf", Self::WIPE_ON_FORK),
        ("dd", Self::DONT_DUMP),
        ("bt", Self::ARM64_BTI),
        ("mt", Self::ARM64_MTE),
        ("sd", Self::SOFT_DIRTY),
        ("mm", Self::MIXED_MAP),
        ("hg", Self::HUGEPAGE),
        ("nh", Self::NO_HUGEPAGE),
        ("mg", Self::MERGEABLE),
        ("um", Self::UFFD_MISSING),
        ("uw", Self::UFFD_WP),
        ("ui", Self::UFFD_MINOR),
        ("ss", Self::SHADOW_STACK),
        ("sl", Self::SEALED),
        ("dp", Self::DROPPABLE),
        ("gu", Self::MAYBE_GUARD),
    ];

    /// The bit for a two-letter code, if known.
    pub fn from_code(code: &str) -> Option<u64> {
        Self::CODES
            .iter()
            .find(|(c, _)| *c == code)
            .map(|&(_, bit)| bit)
    }

    /// Parses the value of a `VmFlags:` line (space-separated codes).
    /// Unknown codes are kept in `unknown`; this never fails.
    pub fn parse(text: &str) -> VmFlags {
        let mut flags = VmFlags::default();
        for code in text.split_ascii_whitespace() {
            match Self::from_code(code) {
                Some(bit) => flags.bits |= bit,
                None => flags.unknown.push(code.to_string()),
            }
        }
        flags
    }

    /// True if every bit of `mask` is set.
    pub fn contains(&self, mask: u64) -> bool {
        self.bits & mask == mask
    }

    /// The known codes that are set, in the kernel's printing order.
    pub fn codes(&self) -> Vec<&'static str> {
        Self::CODES
            .iter()
            .filter(|&&(_, bit)| self.bits & bit != 0)
            .map(|&(c, _)| c)
            .collect()
    }
}

/// One line of `/proc/PID/maps`, or one entry of `/proc/PID/smaps`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MapEntry {
    /// First address of the mapping.
    pub start: u64,
    /// One past the last address.
    pub end: u64,
    pub read: bool,
    pub write: bool,
    pub exec: bool,
    /// `s` (`VM_MAYSHARE`) rather than `p` in the permissions column.
    pub shared: bool,
    /// File offset in bytes.
    pub offset: u64,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub inode: u64,
    /// The sixth column verbatim, without the column padding: empty for
    /// anonymous memory, a pseudo name like `[heap]`, `[anon:NAME]`, or a
    /// path as the kernel prints it (newlines appear as `\012`, other bytes
    /// are not escaped), possibly ending in ` (deleted)`.
    pub path: String,
    /// From smaps only; empty for maps.
    pub vm_flags: VmFlags,
    /// smaps `Rss:` in kB (None for maps or if missing).
    pub rss_kb: Option<u64>,
    /// smaps `Swap:` in kB.
    pub swap_kb: Option<u64>,
    /// smaps `Anonymous:` in kB (anonymous pages, including COWed pages
    /// of private file mappings).
    pub anonymous_kb: Option<u64>,
}

const DELETED: &str = " (deleted)";

impl MapEntry {
    /// Size in bytes.
    pub fn len(&self) -> u64 {
        self.end.saturating_sub(self.start)
    }

    /// True if the mapping is empty (never for kernel output).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// True if the path ends with ` (deleted)` (unlinked files, memfds,
    /// SysV shm and shared anonymous memory).
    pub fn deleted(&self) -> bool {
        self.path.ends_with(DELETED)
    }

    /// True for bracketed pseudo names: `[heap]`, `[stack]`, `[vdso]`,
    /// `[vvar]`, `[vvar_vclock]`, `[vsyscall]`, `[anon:NAME]`,
    /// `[anon_shmem:NAME]`, ...
    pub fn is_pseudo(&self) -> bool {
        self.path.starts_with('[')
    }

    /// The file path without a ` (deleted)` suffix; None for anonymous
    /// memory and pseudo names.  Note that memfds (`/memfd:NAME`), SysV shm
    /// (`/SYSV0000002a`) and shared anonymous memory (`/dev/zero`) also
    /// have paths here; see [`is_memfd`](Self::is_memfd) and
    /// [`is_sysv_shm`](Self::is_sysv_shm).
    pub fn file_path(&self) -> Option<&str> {
        if self.path.is_empty() || self.is_pseudo() {
            return None;
        }
        Some(self.path.strip_suffix(DELETED).unwrap_or(&self.path))
    }

    /// True if this maps a memfd (`/memfd:NAME (deleted)`).
    pub fn is_memfd(&self) -> bool {
        self.path.starts_with("/memfd:") && self.deleted()
    }

    /// True if this is a SysV shared memory segment (`/SYSVxxxxxxxx (deleted)`).
    pub fn is_sysv_shm(&self) -> bool {
        self.path.starts_with("/SYSV") && self.deleted()
    }

    /// The name given with `PR_SET_VMA_ANON_NAME`, for `[anon:NAME]` and
    /// `[anon_shmem:NAME]`.
    pub fn anon_name(&self) -> Option<&str> {
        let inner = self.path.strip_prefix('[')?.strip_suffix(']')?;
        inner
            .strip_prefix("anon:")
            .or_else(|| inner.strip_prefix("anon_shmem:"))
    }
}

/// Parses `/proc/PID/maps` text.
pub fn parse_maps(text: &str) -> Result<Vec<MapEntry>> {
    parse(text, "maps", false)
}

/// Parses `/proc/PID/smaps` text: each mapping line followed by
/// `Key: value` lines.  `VmFlags`, `Rss`, `Swap` and `Anonymous` are
/// kept; other keys are skipped.
pub fn parse_smaps(text: &str) -> Result<Vec<MapEntry>> {
    parse(text, "smaps", true)
}

/// Reads and parses `/proc/PID/maps`.
pub fn read_maps(pid: i32) -> Result<Vec<MapEntry>> {
    read_parsed(&pid_path(pid, "maps"), parse_maps)
}

/// Reads and parses `/proc/PID/smaps`.
pub fn read_smaps(pid: i32) -> Result<Vec<MapEntry>> {
    read_parsed(&pid_path(pid, "smaps"), parse_smaps)
}

fn parse(text: &str, src: &str, smaps: bool) -> Result<Vec<MapEntry>> {
    let mut out: Vec<MapEntry> = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fail = |msg: String| Error::parse(src, format!("line {}: {msg}", i + 1));
        let first = line.split(' ').next().unwrap_or("");
        if smaps && first.ends_with(':') {
            let entry = out
                .last_mut()
                .ok_or_else(|| fail("attribute line before any mapping".into()))?;
            smaps_attr(entry, line).map_err(fail)?;
        } else {
            out.push(map_line(line).map_err(fail)?);
        }
    }
    Ok(out)
}

/// Takes the next space-separated field, skipping leading spaces.
fn field<'a>(rest: &mut &'a str, what: &str) -> std::result::Result<&'a str, String> {
    let s = rest.trim_start_matches(' ');
    let end = s.find(' ').unwrap_or(s.len());
    let (f, r) = s.split_at(end);
    *rest = r;
    if f.is_empty() {
        return Err(format!("missing {what}"));
    }
    Ok(f)
}

fn map_line(line: &str) -> std::result::Result<MapEntry, String> {
    let mut rest = line;
    let range = field(&mut rest, "address range")?;
    let bad_range = || format!("bad address range '{}'", snippet(range));
    let (a, b) = range.split_once('-').ok_or_else(bad_range)?;
    let start: u64 = num(a, 16, "start address").map_err(|_| bad_range())?;
    let end: u64 = num(b, 16, "end address").map_err(|_| bad_range())?;
    if start >= end {
        return Err(bad_range());
    }

    let perms = field(&mut rest, "permissions")?;
    let p = perms.as_bytes();
    let bad_perms = || format!("bad permissions '{}'", snippet(perms));
    if p.len() != 4 {
        return Err(bad_perms());
    }
    let flag = |c: u8, yes: u8, no: u8| match c {
        c if c == yes => Ok(true),
        c if c == no => Ok(false),
        _ => Err(bad_perms()),
    };
    let read = flag(p[0], b'r', b'-')?;
    let write = flag(p[1], b'w', b'-')?;
    let exec = flag(p[2], b'x', b'-')?;
    let shared = flag(p[3], b's', b'p')?;

    let offset = num(field(&mut rest, "offset")?, 16, "offset")?;
    let dev = field(&mut rest, "device")?;
    let bad_dev = || format!("bad device '{}'", snippet(dev));
    let (ma, mi) = dev.split_once(':').ok_or_else(bad_dev)?;
    let dev_major = num(ma, 16, "device").map_err(|_| bad_dev())?;
    let dev_minor = num(mi, 16, "device").map_err(|_| bad_dev())?;
    let inode = num(field(&mut rest, "inode")?, 10, "inode")?;
    // The path follows padding spaces; it is kept verbatim to the end of
    // the line (a path may itself contain or end in spaces).
    let path = rest.trim_start_matches(' ').to_string();

    Ok(MapEntry {
        start,
        end,
        read,
        write,
        exec,
        shared,
        offset,
        dev_major,
        dev_minor,
        inode,
        path,
        ..MapEntry::default()
    })
}

fn smaps_attr(entry: &mut MapEntry, line: &str) -> std::result::Result<(), String> {
    let (key, value) = line
        .split_once(':')
        .ok_or_else(|| format!("bad line '{}'", snippet(line)))?;
    let kb = |v: &str| -> std::result::Result<u64, String> {
        let bad = || format!("bad {key} value '{}'", snippet(v.trim()));
        let n = v.trim().strip_suffix(" kB").ok_or_else(bad)?.trim_end();
        num(n, 10, key).map_err(|_| bad())
    };
    match key {
        "VmFlags" => entry.vm_flags = VmFlags::parse(value),
        "Rss" => entry.rss_kb = Some(kb(value)?),
        "Swap" => entry.swap_kb = Some(kb(value)?),
        "Anonymous" => entry.anonymous_kb = Some(kb(value)?),
        _ => {}
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    #[test]
    fn maps_fixture() {
        let maps = parse_maps(&fixture("maps_cap.txt")).unwrap();
        assert_eq!(maps.len(), 34);
        let first = &maps[0];
        assert_eq!(first.start, 0x5567ff63a000);
        assert_eq!(first.end, 0x5567ff63b000);
        assert!(first.read && !first.write && !first.exec && !first.shared);
        assert_eq!((first.dev_major, first.dev_minor), (0xfe, 0));
        assert_eq!(first.inode, 10010791);
        assert_eq!(first.path, "/tmp/fx/cap");
        assert_eq!(first.file_path(), Some("/tmp/fx/cap"));
        assert_eq!(first.len(), 4096);

        let find = |p: &str| maps.iter().find(|m| m.path == p).unwrap();
        let heap = find("[heap]");
        assert!(heap.is_pseudo() && heap.file_path().is_none() && !heap.deleted());
        for p in ["[stack]", "[vdso]", "[vvar]", "[vvar_vclock]", "[vsyscall]"] {
            assert_eq!(find(p).file_path(), None);
        }
        let vsys = find("[vsyscall]");
        assert_eq!(vsys.start, 0xffffffffff600000);
        assert!(vsys.exec && !vsys.read);

        let memfd = find("/memfd:crest test (deleted)");
        assert!(memfd.deleted() && memfd.is_memfd() && memfd.shared);
        assert_eq!(memfd.file_path(), Some("/memfd:crest test"));

        let sysv = find("/SYSV00000000 (deleted)");
        assert!(sysv.is_sysv_shm() && !sysv.is_memfd());

        let spaced = find("/tmp/fx/dir with space/file (x) name");
        assert!(!spaced.deleted());
        assert_eq!(spaced.file_path(), Some(spaced.path.as_str()));

        let gone = find("/tmp/fx/todelete (deleted)");
        assert_eq!(gone.file_path(), Some("/tmp/fx/todelete"));
        assert!(gone.exec);

        let anon: Vec<_> = maps.iter().filter(|m| m.path.is_empty()).collect();
        assert!(!anon.is_empty());
        assert!(anon.iter().all(|m| m.file_path().is_none() && m.inode == 0));
        assert!(maps.iter().all(|m| m.vm_flags == VmFlags::default()));
    }

    #[test]
    fn smaps_fixtures() {
        let smaps = parse_smaps(&fixture("smaps_cap.txt")).unwrap();
        let maps = parse_maps(&fixture("maps_cap.txt")).unwrap();
        // Captured at the same time, by the same process.
        assert_eq!(smaps.len(), maps.len());
        for (s, m) in smaps.iter().zip(&maps) {
            assert_eq!((s.start, s.end, &s.path), (m.start, m.end, &m.path));
            assert!(s.rss_kb.is_some() && s.swap_kb.is_some() && s.anonymous_kb.is_some());
            assert!(s.vm_flags.unknown.is_empty(), "{:?}", s.vm_flags);
            assert_eq!(s.vm_flags.contains(VmFlags::READ), s.read);
            assert_eq!(s.vm_flags.contains(VmFlags::WRITE), s.write);
            assert_eq!(s.vm_flags.contains(VmFlags::EXEC), s.exec);
            assert_eq!(s.vm_flags.contains(VmFlags::MAY_SHARE), s.shared);
        }
        let first = &smaps[0];
        assert_eq!(first.rss_kb, Some(4));
        assert_eq!(first.vm_flags.codes(), ["rd", "mr", "mw", "me"]);
        // The 2 MiB buffer: MADV_DONTFORK, one page mlocked, MADV_HUGEPAGE.
        let dc: Vec<_> = smaps
            .iter()
            .filter(|m| m.vm_flags.contains(VmFlags::DONT_COPY))
            .collect();
        assert!(!dc.is_empty());
        assert!(dc.iter().any(|m| m.vm_flags.contains(VmFlags::LOCKED)));
        assert!(dc.iter().all(|m| m.vm_flags.contains(VmFlags::HUGEPAGE)));
        let stack = smaps.iter().find(|m| m.path == "[stack]").unwrap();
        assert!(stack
            .vm_flags
            .contains(VmFlags::GROWS_DOWN | VmFlags::ACCOUNT));

        let bash = parse_smaps(&fixture("smaps_bash.txt")).unwrap();
        assert!(bash.len() > 20);
        assert!(bash.iter().any(|m| m.path == "[heap]"));
        assert!(bash.iter().all(|m| m.vm_flags.bits != 0));
    }

    #[test]
    fn tricky_lines() {
        let text = "\
ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]
7f0000000000-7f0000001000 rw-p 00000000 00:00 0                          [anon:my buffer]
7f0000001000-7f0000002000 rw-s 00000000 00:01 77                         [anon_shmem:shm-name]
7f0000002000-7f0000003000 r--p 00001000 103:0a 12345                     /a b/c  d (deleted)
7f0000003000-7f0000004000 r--p 00000000 fe:00 1                          /ends with space 
7f0000004000-7f0000005000 ---p 00000000 00:00 0 
7f0000005000-7f0000006000 ---p 00000000 00:00 0
7f0000006000-7f0000007000 r--p 00000000 fe:00 2 /x\\012y (deleted) (deleted)
";
        let m = parse_maps(text).unwrap();
        assert_eq!(m.len(), 8);
        assert_eq!(m[0].end, 0xffffffffff601000);
        assert_eq!(m[1].anon_name(), Some("my buffer"));
        assert_eq!(m[1].file_path(), None);
        assert_eq!(m[2].anon_name(), Some("shm-name"));
        assert!(m[2].shared);
        assert_eq!(m[3].path, "/a b/c  d (deleted)");
        assert_eq!(m[3].file_path(), Some("/a b/c  d"));
        assert_eq!((m[3].dev_major, m[3].dev_minor), (0x103, 0xa));
        assert_eq!(m[3].offset, 0x1000);
        assert_eq!(m[4].path, "/ends with space ");
        assert_eq!(m[5].path, "");
        assert_eq!(m[6].path, "");
        assert_eq!(m[7].file_path(), Some("/x\\012y (deleted)"));
        assert!(m[7].deleted());
    }

    #[test]
    fn smaps_unknown_flags_kept() {
        let text = "\
00400000-00401000 r--p 00000000 00:00 0
Rss:                   8 kB
VmFlags: rd zz mr qq 
";
        let m = parse_smaps(text).unwrap();
        assert_eq!(m[0].vm_flags.bits, VmFlags::READ | VmFlags::MAY_READ);
        assert_eq!(m[0].vm_flags.unknown, ["zz", "qq"]);
        assert_eq!(m[0].rss_kb, Some(8));
        assert_eq!(m[0].swap_kb, None);
    }

    #[test]
    fn every_code_round_trips() {
        let all: Vec<&str> = VmFlags::CODES.iter().map(|(c, _)| *c).collect();
        let f = VmFlags::parse(&all.join(" "));
        assert_eq!(f.codes(), all);
        assert_eq!(f.bits.count_ones() as usize, all.len());
    }

    #[test]
    fn garbage_is_an_error() {
        let cases = [
            (
                "zz-1000 r--p 00000000 00:00 0",
                "line 1: bad address range 'zz-1000'",
            ),
            ("1000-zz r--p 0 00:00 0", "bad address range"),
            ("2000-1000 r--p 0 00:00 0", "bad address range"),
            ("1000 r--p 0 00:00 0", "bad address range"),
            ("1000-2000 r--q 0 00:00 0", "bad permissions"),
            ("1000-2000 r-- 0 00:00 0", "bad permissions"),
            ("1000-2000 r--p 0g 00:00 0", "bad offset"),
            ("1000-2000 r--p 0 0000 0", "bad device"),
            ("1000-2000 r--p 0 00:zz 0", "bad device"),
            ("1000-2000 r--p 0 00:00 -1", "bad inode"),
            ("1000-2000 r--p 0 00:00 1x /a", "bad inode"),
            ("1000-2000 r--p 0 00:00", "missing inode"),
            (" ", "missing address range"),
            (
                "1000-2000 r--p 0 00:00 0\n\n",
                "line 2: missing address range",
            ),
            ("-", "bad address range"),
            ("\u{e9}\u{e9}-\u{e9}", "bad address range"),
        ];
        for (text, want) in cases {
            let err = parse_maps(text).unwrap_err().to_string();
            assert!(err.starts_with("maps: line "), "{text:?}: {err}");
            assert!(err.contains(want), "{text:?}: {err}");
        }
        let smaps_cases = [
            ("Rss: 4 kB\n", "line 1: attribute line before any mapping"),
            (
                "1000-2000 r--p 0 00:00 0\nRss: x kB\n",
                "line 2: bad Rss value",
            ),
            ("1000-2000 r--p 0 00:00 0\nSwap: 4\n", "bad Swap value"),
            (
                "1000-2000 r--p 0 00:00 0\nAnonymous: -4 kB\n",
                "bad Anonymous",
            ),
        ];
        for (text, want) in smaps_cases {
            let err = parse_smaps(text).unwrap_err().to_string();
            assert!(err.contains(want), "{text:?}: {err}");
        }
        // In maps, a smaps attribute line is just a bad line.
        assert!(parse_maps("Rss: 4 kB\n").is_err());
        assert!(parse_maps("").unwrap().is_empty());
    }

    #[test]
    fn read_self() {
        let pid = std::process::id() as i32;
        let maps = read_maps(pid).unwrap();
        let smaps = read_smaps(pid).unwrap();
        assert!(maps.iter().any(|m| m.path == "[stack]"));
        assert!(smaps.iter().all(|m| m.rss_kb.is_some()));
        let err = read_maps(-5).unwrap_err().to_string();
        assert!(err.contains("/proc/-5/maps"), "{err}");
    }
}
