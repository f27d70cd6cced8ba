//! What the options of a request mean for crest.
//!
//! Every field of `criu_opts` is in exactly one of three groups:
//!
//! - **implemented**: `images_dir_fd`/`images_dir`, `work_dir_fd`,
//!   `inherit_fd` for external pipes (`pipe:[INODE]`: a pipe end of the
//!   tree whose other end was outside — a runtime's stdio pipe — is
//!   recorded by that key on dump and becomes the given descriptor on
//!   restore),
//!   `log_file`, `log_level`, `log_to_stderr`, `pid`, `leave_running`,
//!   `notify_scripts`, `rst_sibling`, `display_stats`; `root` when it is
//!   `/` (or, on dump, the process's own root directory); `manage_cgroups`
//!   with the modes that do not ask for cgroup properties (crest records no
//!   cgroups: restored processes start in the checkpointer's cgroups, where
//!   the runtime puts it); `cg_root` when it names those very cgroups;
//!   `freeze_cgroup` (every process in it must be in the dumped tree);
//!   `config_file` when no such file exists (as CRIU, a missing one is
//!   ignored).
//! - **permissions** that let CRIU dump more than by default:
//!   `ext_unix_sk`, `tcp_established`, `shell_job`, `file_locks`,
//!   `orphan_pts_master`, `evasive_devices`, `link_remap`, `tcp_close`,
//!   `tcp_skip_in_flight`, `weak_sysctls`, `force_irmap`,
//!   `irmap_scan_paths`, `ghost_limit`, `cpu_cap`, `network_lock`,
//!   `pre_dump_mode`.  Accepted: crest's own checks still refuse, by name,
//!   every object it cannot checkpoint (a UNIX socket with a peer outside
//!   the tree, a TCP socket, a terminal whose master is outside…).
//! - **not implemented**: everything else, refused when set to anything
//!   but its default, naming the option: page server, parent images and
//!   memory tracking (pre-dumps), external mounts and resources
//!   (`ext_mnt`, `external`, `inherit_fd` other than pipes, `join_ns`,
//!   `empty_ns`, …), LSM
//!   profiles, lazy pages, TLS, cgroup properties and more.  Fields this
//!   schema does not know are refused by number.

use crate::log::{self, Log};
use crate::rpc::{CriuCgMode, CriuOpts, CriuReqType, OPTS_FIELDS, OPTS_FIELD_GAP};
use crate::wire;
use std::ffi::CString;
use std::fs::File;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

/// A request's directories, log and the options crest acts on.
pub struct Prepared {
    /// Where the image goes (`images_dir_fd`, or `images_dir`).
    pub images: OwnedFd,
    /// Where the log and statistics go (`work_dir_fd`, else the images
    /// directory).
    pub work: OwnedFd,
    pub log: Log,
    pub pid: Option<i32>,
    pub leave_running: bool,
    pub notify: bool,
    pub sibling: bool,
    pub display_stats: bool,
}

/// Opens directory descriptor `fd` of process `peer` (the runtime: the
/// protocol's descriptor numbers are the runtime's); `what` names the
/// option.
fn dir_fd(peer: i32, fd: i32, what: &str) -> Result<OwnedFd, String> {
    let path = format!("/proc/{peer}/fd/{fd}");
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_dir()
        .open(&path)
        .map_err(|e| format!("{what} {fd} (of the runtime, pid {peer}): {e}"))?;
    Ok(f.into())
}

fn open_dir(path: &str, what: &str) -> Result<OwnedFd, String> {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags_dir()
        .open(path)
        .map_err(|e| format!("{what} {path}: {e}"))?;
    Ok(f.into())
}

trait DirFlags {
    fn custom_flags_dir(&mut self) -> &mut Self;
}

impl DirFlags for std::fs::OpenOptions {
    fn custom_flags_dir(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_DIRECTORY | libc::O_CLOEXEC)
    }
}

/// Opens `name` for writing in directory `dir` (created, truncated, 0600).
pub fn create_in(dir: &OwnedFd, name: &str, exclusive: bool) -> std::io::Result<File> {
    let c = CString::new(name).map_err(std::io::Error::other)?;
    let mut flags = libc::O_WRONLY | libc::O_CREAT | libc::O_CLOEXEC;
    flags |= if exclusive {
        libc::O_EXCL
    } else {
        libc::O_TRUNC
    };
    // SAFETY: openat with a valid directory descriptor and a C string.
    let fd = unsafe { libc::openat(dir.as_raw_fd(), c.as_ptr(), flags, 0o600) };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens `name` in directory `dir` for reading.
pub fn open_in(dir: &OwnedFd, name: &str) -> std::io::Result<File> {
    let c = CString::new(name).map_err(std::io::Error::other)?;
    // SAFETY: openat with a valid directory descriptor and a C string.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: fd was just opened and is owned by nothing else.
    Ok(unsafe { File::from_raw_fd(fd) })
}

/// Opens the directories and the log of a request.  Errors here are the
/// runtime's (a bad descriptor, a log name with a slash).
/// `peer` is the runtime's pid.
pub fn prepare(opts: &CriuOpts, peer: i32) -> Result<Prepared, String> {
    let images = if opts.images_dir_fd >= 0 {
        dir_fd(peer, opts.images_dir_fd, "images_dir_fd")?
    } else if let Some(p) = opts.images_dir.as_deref().filter(|p| !p.is_empty()) {
        open_dir(p, "images_dir")?
    } else {
        return Err("no images directory: set images_dir_fd or images_dir".into());
    };
    let work = match opts.work_dir_fd {
        Some(fd) if fd >= 0 => dir_fd(peer, fd, "work_dir_fd")?,
        _ => File::from(images.try_clone().map_err(|e| e.to_string())?).into(),
    };
    let level = opts.log_level();
    let file = match opts.log_file.as_deref().filter(|f| !f.is_empty()) {
        Some(name) if name.contains('/') => {
            return Err(format!(
                "log_file {name:?}: a name in the work directory, without '/'"
            ))
        }
        Some(name) => {
            Some(create_in(&work, name, false).map_err(|e| format!("log_file {name}: {e}"))?)
        }
        None => None,
    };
    Ok(Prepared {
        images,
        work,
        log: Log::new(file, opts.log_to_stderr(), level),
        pid: opts.pid,
        leave_running: opts.leave_running(),
        notify: opts.notify_scripts(),
        sibling: opts.rst_sibling(),
        display_stats: opts.display_stats(),
    })
}

/// The options of a `kind` request that crest does not implement, each
/// as "name: why" (empty when the request can be served).  `raw` are the
/// options messages as received, for fields unknown to this schema.
pub fn unsupported(kind: CriuReqType, opts: &CriuOpts, raw: &[&[u8]]) -> Vec<String> {
    let mut out = Vec::new();
    let mut refuse = |name: &str, why: &str| out.push(format!("{name}: {why}"));
    let on = |b: Option<bool>| b == Some(true);
    let set = |s: &Option<String>| s.as_deref().is_some_and(|s| !s.is_empty());
    const NS: &str = "needs namespace support, not in this crest yet";
    const PREDUMP: &str = "iterative pre-dumps are not implemented (crest pre-copies memory inside one dump with leave_running)";

    if opts.ps.is_some() {
        refuse("ps", "the page server is not implemented");
    }
    if set(&opts.parent_img) {
        refuse("parent_img", PREDUMP);
    }
    if on(opts.track_mem) {
        refuse("track_mem", PREDUMP);
    }
    if on(opts.auto_dedup) {
        refuse(
            "auto_dedup",
            "deduplication against parent images is not implemented",
        );
    }
    if !opts.veths.is_empty() {
        refuse("veths", NS);
    }
    if !opts.exec_cmd.is_empty() {
        refuse(
            "exec_cmd",
            "running a command after restore is not implemented",
        );
    }
    for m in &opts.ext_mnt {
        if kind == CriuReqType::Dump && !m.key.starts_with('/') {
            refuse(
                "ext_mnt",
                &format!(
                    "{} → {}: crest names external mounts by their mount point in the container",
                    m.key, m.val
                ),
            );
        } else if kind == CriuReqType::Restore && !m.val.starts_with('/') {
            refuse(
                "ext_mnt",
                &format!(
                    "{} → {}: the mount's source must be an absolute path here",
                    m.key, m.val
                ),
            );
        }
    }
    for i in &opts.inherit_fd {
        if kind != CriuReqType::Restore {
            refuse("inherit_fd", "only a restore takes inherited descriptors");
        } else if !is_pipe_key(&i.key) && i.key != NETNS_KEY {
            refuse(
                "inherit_fd",
                &format!("{} → fd {}: only external pipes (pipe:[INODE]) and the network namespace ({NETNS_KEY}) are implemented", i.key, i.fd),
            );
        } else if !fd_open(i.fd) {
            refuse(
                "inherit_fd",
                &format!("{} → fd {}: that descriptor is not open", i.key, i.fd),
            );
        }
    }
    if on(opts.auto_ext_mnt) {
        refuse("auto_ext_mnt", NS);
    }
    if on(opts.ext_sharing) {
        refuse("ext_sharing", NS);
    }
    if on(opts.ext_masters) {
        refuse("ext_masters", NS);
    }
    if !opts.skip_mnt.is_empty() {
        refuse("skip_mnt", NS);
    }
    if !opts.enable_fs.is_empty() {
        refuse("enable_fs", NS);
    }
    if !opts.unix_sk_ino.is_empty() {
        refuse(
            "unix_sk_ino",
            "external UNIX sockets are not implemented (peers must be in the tree)",
        );
    }
    if opts.manage_cgroups() || opts.manage_cgroups_mode.is_some() {
        match opts.manage_cgroups_mode() {
            CriuCgMode::Props | CriuCgMode::Full | CriuCgMode::Strict => refuse(
                "manage_cgroups_mode",
                "crest does not save or restore cgroup properties; use SOFT, IGNORE or CG_NONE",
            ),
            _ => {}
        }
    }
    for cg in &opts.cg_root {
        let ctrl = cg.ctrl.as_deref().filter(|c| !c.is_empty());
        match crate::cgroup::in_cgroup(ctrl, &cg.path) {
            Ok(true) => {}
            Ok(false) => refuse(
                "cg_root",
                &format!(
                    "{}:{}: crest restores processes into its own cgroups and does not move them elsewhere",
                    ctrl.unwrap_or("unified"),
                    cg.path
                ),
            ),
            Err(e) => refuse("cg_root", &e),
        }
    }
    for e in &opts.external {
        if external_net_key(e).is_none() {
            refuse(
                "external",
                &format!("{e}: only an external network namespace (net[INODE]:KEY) is implemented"),
            );
        }
    }
    let empty = opts.empty_ns.unwrap_or(0);
    if empty & !(libc::CLONE_NEWNET as u32) != 0 {
        refuse(
            "empty_ns",
            &format!(
                "{empty:#x}: only the network namespace (CLONE_NEWNET) can be left to the runtime"
            ),
        );
    }
    if !opts.join_ns.is_empty() {
        let ns: Vec<&str> = opts.join_ns.iter().map(|j| j.ns.as_str()).collect();
        refuse(
            "join_ns",
            &format!("joining namespaces ({}) {NS}", ns.join(", ")),
        );
    }
    if set(&opts.cgroup_props) || set(&opts.cgroup_props_file) {
        refuse("cgroup_props", "crest does not restore cgroup properties");
    }
    if !opts.cgroup_dump_controller.is_empty() {
        refuse("cgroup_dump_controller", "crest does not save cgroups");
    }
    if opts.timeout.unwrap_or(0) != 0 {
        refuse("timeout", "crest has no dump timeout");
    }
    if on(opts.lazy_pages) {
        refuse("lazy_pages", "lazy restore is not implemented");
    }
    if opts.status_fd.is_some() {
        refuse("status_fd", "lazy restore is not implemented");
    }
    if let Some(f) = opts.config_file.as_deref().filter(|f| !f.is_empty()) {
        if std::path::Path::new(f).exists() {
            refuse(
                "config_file",
                &format!("{f} exists; crest does not read CRIU configuration files"),
            );
        }
    }
    if set(&opts.lsm_profile) {
        refuse(
            "lsm_profile",
            "crest does not set LSM (AppArmor/SELinux) profiles",
        );
    }
    if set(&opts.lsm_mount_context) {
        refuse("lsm_mount_context", "crest does not set LSM mount contexts");
    }
    if on(opts.tls)
        || on(opts.tls_no_cn_verify)
        || set(&opts.tls_cacert)
        || set(&opts.tls_cacrl)
        || set(&opts.tls_cert)
        || set(&opts.tls_key)
    {
        refuse("tls", "TLS for the page server is not implemented");
    }
    if set(&opts.cgroup_yard) {
        refuse("cgroup_yard", "crest does not mount cgroups");
    }
    if opts.pidfd_store_sk.is_some() {
        refuse(
            "pidfd_store_sk",
            "pidfd stores are used by pre-dumps, not implemented",
        );
    }
    if on(opts.mntns_compat_mode) {
        refuse("mntns_compat_mode", NS);
    }
    if on(opts.skip_file_rwx_check) {
        refuse(
            "skip_file_rwx_check",
            "crest always checks file access on restore",
        );
    }
    if on(opts.unprivileged) {
        refuse("unprivileged", "crest decides what it may do from the kernel's checks; the unprivileged mode is not implemented");
    }
    if on(opts.leave_stopped) {
        refuse(
            "leave_stopped",
            "leaving the tree stopped is not implemented",
        );
    }
    if let Some(r) = opts.root.as_deref().filter(|r| !r.is_empty() && *r != "/") {
        if !std::path::Path::new(r).is_dir() {
            refuse("root", &format!("{r}: not a directory"));
        }
    }
    if kind == CriuReqType::Dump {
        if let (Some(cg), Some(pid)) = (opts.freeze_cgroup.as_deref(), opts.pid) {
            match crate::cgroup::outside_tree(cg, pid) {
                Ok(v) if v.is_empty() => {}
                Ok(v) => refuse(
                    "freeze_cgroup",
                    &format!(
                        "processes {v:?} are in {cg} but not in the tree of pid {pid}: they would escape the checkpoint"
                    ),
                ),
                Err(e) => refuse("freeze_cgroup", &e),
            }
        }
    }
    for raw in raw {
        match wire::fields(raw) {
            Ok(fields) => {
                let mut unknown: Vec<u32> = fields
                    .iter()
                    .map(|f| f.number)
                    .filter(|n| !OPTS_FIELDS.contains(n) || *n == OPTS_FIELD_GAP)
                    .collect();
                unknown.dedup();
                for n in unknown {
                    refuse(
                        &format!("criu_opts field {n}"),
                        "an option unknown to crest's protocol schema",
                    );
                }
            }
            Err(e) => refuse("criu_opts", &format!("malformed: {e}")),
        }
    }
    out
}

/// The key runc gives the container's network namespace, supplied by the
/// runtime (`external net[INODE]:KEY` on dump, `inherit_fd KEY` on
/// restore).
pub const NETNS_KEY: &str = "extRootNetNS";

/// `net[INODE]:KEY` → (INODE, KEY).
pub fn external_net_key(e: &str) -> Option<(u64, &str)> {
    let rest = e.strip_prefix("net[")?;
    let (ino, key) = rest.split_once("]:")?;
    Some((ino.parse().ok()?, key))
}

/// `pipe:[INODE]`, the key of an external pipe.
fn is_pipe_key(k: &str) -> bool {
    k.strip_prefix("pipe:[")
        .and_then(|r| r.strip_suffix(']'))
        .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
}

fn fd_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only queries the descriptor.
    fd >= 0 && unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0
}

/// The inherited descriptors of a restore, by key (checked by
/// [`unsupported`] first).
pub fn inherited(opts: &CriuOpts) -> std::collections::HashMap<String, i32> {
    opts.inherit_fd
        .iter()
        .filter(|i| is_pipe_key(&i.key))
        .map(|i| (i.key.clone(), i.fd))
        .collect()
}

/// The network namespace of the tree is the runtime's (`empty_ns`
/// CLONE_NEWNET or an `external net[…]`): not recorded on dump.
pub fn external_net(opts: &CriuOpts) -> bool {
    opts.empty_ns.unwrap_or(0) & libc::CLONE_NEWNET as u32 != 0
        || opts.external.iter().any(|e| external_net_key(e).is_some())
}

/// The mounts from outside of a dump: `ext_mnt` key = mount point in
/// the container, val = the name a restore maps it by (its `ext_mnt`
/// key then, the val being the source here).
pub fn external_mounts(opts: &CriuOpts) -> Vec<(String, String)> {
    opts.ext_mnt
        .iter()
        .map(|m| (m.key.clone(), m.val.clone()))
        .collect()
}

/// What a restore maps from outside: the root (`root`), the mounts by
/// mount point (`ext_mnt`), the network namespace (`inherit_fd
/// extRootNetNS`, as a /proc/self/fd path).
pub fn restore_mapping(opts: &CriuOpts) -> (crest::ns::mnt::Mapping, Option<std::path::PathBuf>) {
    let root = opts
        .root
        .as_deref()
        .filter(|r| !r.is_empty() && *r != "/")
        .map(str::to_string);
    let ext = opts
        .ext_mnt
        .iter()
        .map(|m| (m.key.clone(), m.val.clone()))
        .collect();
    let net = opts
        .inherit_fd
        .iter()
        .find(|i| i.key == NETNS_KEY)
        .map(|i| std::path::PathBuf::from(format!("/proc/self/fd/{}", i.fd)));
    (crest::ns::mnt::Mapping { root, ext }, net)
}

/// Logs what crest does with the options it acts on.
pub fn describe(p: &mut Prepared, opts: &CriuOpts) {
    let m = format!(
        "options: pid {:?}, leave_running {}, notify_scripts {}, rst_sibling {}, manage_cgroups {} (restored processes stay in crest's cgroups), freeze_cgroup {:?} (crest freezes with ptrace)",
        p.pid,
        p.leave_running,
        p.notify,
        p.sibling,
        opts.manage_cgroups(),
        opts.freeze_cgroup
    );
    p.log.at(log::DEBUG, &m);
    let ext: Vec<String> = opts
        .ext_mnt
        .iter()
        .map(|m| format!("{}={}", m.key, m.val))
        .collect();
    let inherit: Vec<String> = opts
        .inherit_fd
        .iter()
        .map(|i| format!("{}={}", i.key, i.fd))
        .collect();
    let m = format!(
        "root {:?}, ext_mnt [{}], external {:?}, empty_ns {:#x}, inherit_fd [{}]",
        opts.root,
        ext.join(" "),
        opts.external,
        opts.empty_ns.unwrap_or(0),
        inherit.join(" ")
    );
    p.log.at(log::DEBUG, &m);
}
