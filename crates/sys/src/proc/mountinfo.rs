//! `/proc/PID/mountinfo`.

use super::{num, pid_path, read_parsed, snippet};
use crate::{Error, Result};

/// One line of `/proc/PID/mountinfo` (see proc_pid_mountinfo(5)).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MountInfo {
    /// (1) Mount id.
    pub mnt_id: u64,
    /// (2) Parent mount id (the mount's own id for the namespace root).
    pub parent_id: u64,
    /// (3) Device major of the filesystem.
    pub major: u32,
    /// (3) Device minor.
    pub minor: u32,
    /// (4) Root of the mount within its filesystem; octal escapes decoded.
    pub root: String,
    /// (5) Mount point relative to the reader's root; escapes decoded.
    pub mount_point: String,
    /// (6) Per-mount options, verbatim (`rw,nosuid,relatime`).
    pub options: String,
    /// (7) Optional fields, verbatim (`shared:1`, `master:2`,
    /// `propagate_from:3`, `unbindable`).
    pub optional_fields: Vec<String>,
    /// (9) Filesystem type (`ext4`, `fuse.sshfs`); escapes decoded.
    pub fs_type: String,
    /// (10) Source; escapes decoded.
    pub source: String,
    /// (11) Per-superblock options, verbatim.
    pub super_options: String,
}

impl MountInfo {
    fn tagged(&self, tag: &str) -> Option<u64> {
        self.optional_fields
            .iter()
            .find_map(|f| f.strip_prefix(tag)?.parse().ok())
    }

    /// The peer group of a shared mount (`shared:N`).
    pub fn shared(&self) -> Option<u64> {
        self.tagged("shared:")
    }

    /// The peer group this slave mount receives from (`master:N`).
    pub fn master(&self) -> Option<u64> {
        self.tagged("master:")
    }

    /// The nearest dominant peer group visible here (`propagate_from:N`).
    pub fn propagate_from(&self) -> Option<u64> {
        self.tagged("propagate_from:")
    }

    /// True for an unbindable mount.
    pub fn unbindable(&self) -> bool {
        self.optional_fields.iter().any(|f| f == "unbindable")
    }
}

/// Parses `/proc/PID/mountinfo` text.
pub fn parse_mountinfo(text: &str) -> Result<Vec<MountInfo>> {
    text.lines()
        .enumerate()
        .map(|(i, line)| {
            parse_line(line)
                .map_err(|msg| Error::parse("mountinfo", format!("line {}: {msg}", i + 1)))
        })
        .collect()
}

/// Reads and parses `/proc/PID/mountinfo`.
pub fn read_mountinfo(pid: i32) -> Result<Vec<MountInfo>> {
    read_parsed(&pid_path(pid, "mountinfo"), parse_mountinfo)
}

type Res<T> = std::result::Result<T, String>;

fn parse_line(line: &str) -> Res<MountInfo> {
    // Fields are separated by single spaces; escaped strings never contain
    // spaces, but a source may be empty, so empty fields are kept.
    let mut it = line.split(' ');
    let mut next = |what: &str| it.next().ok_or_else(|| format!("missing {what}"));
    let mnt_id = num(next("mount id")?, 10, "mount id")?;
    let parent_id = num(next("parent id")?, 10, "parent id")?;
    let dev = next("device")?;
    let bad_dev = || format!("bad device '{}'", snippet(dev));
    let (ma, mi) = dev.split_once(':').ok_or_else(bad_dev)?;
    let major = num(ma, 10, "device").map_err(|_| bad_dev())?;
    let minor = num(mi, 10, "device").map_err(|_| bad_dev())?;
    let root = unescape(next("root")?, "root")?;
    let mount_point = unescape(next("mount point")?, "mount point")?;
    let options = next("mount options")?.to_string();
    let mut optional_fields = Vec::new();
    loop {
        let f = next("'-' separator")?;
        if f == "-" {
            break;
        }
        optional_fields.push(f.to_string());
    }
    let fs_type = unescape(next("filesystem type")?, "filesystem type")?;
    let source = unescape(next("source")?, "source")?;
    let super_options = next("superblock options")?.to_string();
    if let Some(extra) = it.next() {
        return Err(format!(
            "unexpected text after superblock options: '{}'",
            snippet(extra)
        ));
    }
    if fs_type.is_empty() {
        return Err("empty filesystem type".into());
    }
    Ok(MountInfo {
        mnt_id,
        parent_id,
        major,
        minor,
        root,
        mount_point,
        options,
        optional_fields,
        fs_type,
        source,
        super_options,
    })
}

/// Decodes the kernel's `\ooo` octal escapes (used for space, tab,
/// newline and backslash).
fn unescape(s: &str, what: &str) -> Res<String> {
    if !s.contains('\\') {
        return Ok(s.to_string());
    }
    let bad = || format!("bad escape in {what} '{}'", snippet(s));
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] != b'\\' {
            out.push(b[i]);
            i += 1;
            continue;
        }
        let digits = b.get(i + 1..i + 4).ok_or_else(bad)?;
        let mut v: u32 = 0;
        for &d in digits {
            if !(b'0'..=b'7').contains(&d) {
                return Err(bad());
            }
            v = v * 8 + u32::from(d - b'0');
        }
        out.push(u8::try_from(v).map_err(|_| bad())?);
        i += 4;
    }
    String::from_utf8(out).map_err(|_| format!("{what} is not valid UTF-8: '{}'", snippet(s)))
}

#[cfg(test)]
mod tests {
    use super::super::fixture;
    use super::*;

    #[test]
    fn fixture_with_escapes_and_propagation() {
        let mi = parse_mountinfo(&fixture("mountinfo_ns.txt")).unwrap();
        assert_eq!(mi.len(), 22);
        let spaced = mi
            .iter()
            .find(|m| m.mount_point == "/tmp/fx/mnt with space")
            .unwrap();
        assert_eq!(spaced.mnt_id, 63);
        assert_eq!(spaced.parent_id, 43);
        assert_eq!((spaced.major, spaced.minor), (0, 39));
        assert_eq!(spaced.root, "/");
        assert_eq!(spaced.options, "rw,relatime");
        assert_eq!(spaced.optional_fields, ["shared:1"]);
        assert_eq!(spaced.shared(), Some(1));
        assert_eq!(spaced.master(), None);
        assert_eq!(spaced.fs_type, "tmpfs");
        assert_eq!(spaced.source, "my src");
        assert_eq!(spaced.super_options, "rw,size=1024k");
        let slave = mi.iter().find(|m| m.mount_point == "/tmp/fx/mnt2").unwrap();
        assert_eq!(slave.master(), Some(1));
        assert_eq!(slave.shared(), None);
        assert!(!slave.unbindable());
        let root = mi.iter().find(|m| m.mount_point == "/").unwrap();
        assert_eq!(root.fs_type, "ext4");
        assert_eq!((root.major, root.minor), (254, 0));
        assert!(root.optional_fields.is_empty());
    }

    #[test]
    fn hand_made_lines() {
        let text = "\
36 35 98:0 /mnt1 /mnt/parent rw,noatime master:1 propagate_from:2 unbindable - ext3 /dev/root rw,errors=continue
37 36 0:50 /a\\134b /tab\\011nl\\012 ro - fuse.sshfs  rw
";
        let mi = parse_mountinfo(text).unwrap();
        assert_eq!(mi[0].master(), Some(1));
        assert_eq!(mi[0].propagate_from(), Some(2));
        assert!(mi[0].unbindable());
        assert_eq!(mi[0].super_options, "rw,errors=continue");
        assert_eq!(mi[1].root, "/a\\b");
        assert_eq!(mi[1].mount_point, "/tab\tnl\n");
        assert_eq!(mi[1].fs_type, "fuse.sshfs");
        assert_eq!(mi[1].source, "");
        assert_eq!(mi[1].super_options, "rw");
    }

    #[test]
    fn read_self() {
        let mi = read_mountinfo(std::process::id() as i32).unwrap();
        assert!(mi.iter().any(|m| m.mount_point == "/"));
        assert!(mi.iter().any(|m| m.fs_type == "proc"));
    }

    #[test]
    fn garbage_is_an_error() {
        let good = "36 35 98:0 / /m rw - ext3 /dev/root rw";
        assert!(parse_mountinfo(good).is_ok());
        let cases = [
            ("x 35 98:0 / /m rw - ext3 /dev/root rw", "bad mount id 'x'"),
            (
                "36 35 98-0 / /m rw - ext3 /dev/root rw",
                "bad device '98-0'",
            ),
            ("36 35 98:x / /m rw - ext3 /dev/root rw", "bad device"),
            (
                "36 35 98:0 / /m rw ext3 /dev/root rw",
                "missing '-' separator",
            ),
            ("36 35 98:0 / /m rw shared:1", "missing '-' separator"),
            (
                "36 35 98:0 / /m rw - ext3 /dev/root",
                "missing superblock options",
            ),
            (
                "36 35 98:0 / /m rw - ext3 /dev/root rw x",
                "unexpected text",
            ),
            (
                "36 35 98:0 / /m\\04 rw - ext3 /dev/root rw",
                "bad escape in mount point",
            ),
            ("36 35 98:0 / /m\\9999 rw - ext3 /dev/root rw", "bad escape"),
            ("36 35 98:0 / /m\\777 rw - ext3 /dev/root rw", "bad escape"),
            (
                "36 35 98:0 / /m\\377 rw - ext3 /dev/root rw",
                "not valid UTF-8",
            ),
            (
                "36 35 98:0 /\\ /m rw - ext3 /dev/root rw",
                "bad escape in root",
            ),
            (
                "36 35 98:0 / /m rw -  /dev/root rw",
                "empty filesystem type",
            ),
            (" ", "bad mount id ''"),
            ("36", "missing parent id"),
        ];
        for (text, want) in cases {
            let err = parse_mountinfo(text).unwrap_err().to_string();
            assert!(err.starts_with("mountinfo: line 1: "), "{err}");
            assert!(err.contains(want), "{want}: {err}");
        }
        let err = parse_mountinfo(&format!("{good}\n\n"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2: bad mount id"), "{err}");
    }
}
