//! Network namespaces: the links (loopback, veth), their addresses, the
//! main routing table and the main sysctls of a namespace the tree uses,
//! and how restore makes it again.
//!
//! Dump reads the namespace from a thread of crest's that joins it
//! (setns on one thread leaves crest's others where they are): the
//! links, addresses and routes from `ip -json` (iproute2's own rtnetlink
//! client: crest parses its JSON instead of packing netlink messages),
//! the sysctls from /proc/sys/net, which shows the namespace of the
//! thread that opens it.  A device crest cannot make again (a bridge, a
//! tun, a physical device moved in, a veth whose two ends are both
//! inside) is refused by name.
//!
//! Restore makes the namespace before any socket of the tree exists: a
//! thread unshares a new one and crest keeps a descriptor on it.  The
//! tree's sockets are then created by crest's thread while it is inside
//! ([`enter`]), since a socket lives in the namespace it was made in, and
//! the process that first entered the namespace at the dump joins it
//! (setns) as its stub starts; its descendants inherit it.  Each veth is
//! made as a pair in crest's namespace whose inner end is created inside
//! the new one with the recorded name, MAC and MTU; the outer end gets
//! the name the user gives (`--veth INSIDE=OUTSIDE`); without one the
//! restore is refused, naming the device.  Then, inside: sysctls,
//! addresses (IPv6 ones without duplicate address detection, so that a
//! socket bound to one binds at once), links up, routes.  IPv6 link-local
//! addresses and the routes the kernel derives from addresses are not
//! recorded: the kernel makes them again (the MAC is the recorded one).
//!
//! Instead, [`crate::RestoreOptions::existing_ns`] names an existing
//! namespace (a path such as /run/netns/NAME) to restore into, as
//! container runtimes do: it is used as it is, nothing is configured.
//!
//! A restore that fails removes the veths it made (deleting one end of a
//! pair deletes both) and drops its descriptor on the namespace, which
//! goes with the last process in it.

use crate::error::{Error, Result};
use crate::model::{NetLink, NetRoute, NetState, NsState};
use crate::Obstacle;

fn io_err(what: impl std::fmt::Display, e: std::io::Error) -> Error {
    Error::msg(format!("{what}: {e}"))
}
use serde_json::Value;
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::process::Command;

/// Runs `ip ARGS` in the calling thread's network namespace; its stdout.
fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .map_err(|e| Error::msg(format!("running ip (iproute2): {e}")))?;
    if !out.status.success() {
        return Err(Error::msg(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        )));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json(args: &[&str]) -> Result<Vec<Value>> {
    let t = ip(args)?;
    if t.trim().is_empty() {
        return Ok(Vec::new());
    }
    serde_json::from_str(&t)
        .map_err(|e| Error::msg(format!("ip {}: unexpected output: {e}", args.join(" "))))
}

/// The per-device sysctls recorded, below ipv4/conf/DEV and ipv6/conf/DEV.
const CONF4: [&str; 9] = [
    "forwarding",
    "rp_filter",
    "accept_redirects",
    "send_redirects",
    "accept_source_route",
    "proxy_arp",
    "arp_ignore",
    "arp_announce",
    "route_localnet",
];
const CONF6: [&str; 6] = [
    "disable_ipv6",
    "forwarding",
    "accept_ra",
    "accept_redirects",
    "autoconf",
    "accept_dad",
];
/// Namespace-wide sysctls recorded.
const GLOBAL: [&str; 3] = [
    "ipv4/ip_forward",
    "ipv4/ip_local_port_range",
    "ipv4/ping_group_range",
];

/// The sysctl paths (below /proc/sys/net) recorded for devices `devs`,
/// in the order restore writes them (namespace-wide, all, default, each
/// device).
fn sysctl_paths(devs: &[String]) -> Vec<String> {
    let mut v: Vec<String> = GLOBAL.iter().map(|s| s.to_string()).collect();
    let mut names = vec!["all".to_string(), "default".to_string()];
    names.extend(devs.iter().cloned());
    for d in &names {
        v.extend(CONF4.iter().map(|k| format!("ipv4/conf/{d}/{k}")));
        v.extend(CONF6.iter().map(|k| format!("ipv6/conf/{d}/{k}")));
    }
    v
}

/// Reads the namespace the calling thread is in.
fn read_here(obstacles: &mut Vec<Obstacle>, pid: i32) -> Result<NetState> {
    let mut st = NetState::default();
    for l in json(&["-j", "-d", "addr", "show"])? {
        let name = l["ifname"].as_str().unwrap_or("?").to_string();
        let info = l["linkinfo"]["info_kind"].as_str();
        let kind = match (info, l["link_type"].as_str()) {
            (None, Some("loopback")) => "loopback",
            (Some("veth"), _) if l.get("link_netnsid").is_some() => "veth",
            (Some("veth"), _) => {
                obstacles.push(Obstacle {
                    pid,
                    object: format!("net device {name}"),
                    reason: "a veth whose peer is in the same network namespace (or gone); \
                             crest recreates only veths whose other end is outside"
                        .into(),
                });
                continue;
            }
            (k, t) => {
                obstacles.push(Obstacle {
                    pid,
                    object: format!("net device {name}"),
                    reason: format!(
                        "a {} device cannot be recreated by crest (only loopback and veth \
                         devices are)",
                        k.or(t).unwrap_or("unknown")
                    ),
                });
                continue;
            }
        };
        let mut addrs = Vec::new();
        for a in l["addr_info"].as_array().into_iter().flatten() {
            let (Some(ip), Some(len)) = (
                a["local"].as_str().and_then(|s| s.parse::<IpAddr>().ok()),
                a["prefixlen"].as_u64(),
            ) else {
                continue;
            };
            // The kernel makes these again from the MAC.
            if matches!(ip, IpAddr::V6(v) if v.segments()[0] & 0xffc0 == 0xfe80) {
                continue;
            }
            addrs.push((ip, len as u8));
        }
        let flags: Vec<&str> = l["flags"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|f| f.as_str())
            .collect();
        st.links.push(NetLink {
            name,
            kind: kind.into(),
            mtu: l["mtu"].as_u64().unwrap_or(0) as u32,
            mac: l["address"].as_str().unwrap_or("").into(),
            up: flags.contains(&"UP"),
            addrs,
        });
    }
    for (family, flag) in [(4u8, "-4"), (6, "-6")] {
        for r in json(&["-j", flag, "route", "show", "table", "main"])? {
            if r["protocol"].as_str() == Some("kernel") {
                continue;
            }
            let s = |k: &str| r[k].as_str().map(|x| x.to_string());
            let a = |k: &str| r[k].as_str().and_then(|x| x.parse::<IpAddr>().ok());
            st.routes.push(NetRoute {
                family,
                dst: s("dst").unwrap_or_else(|| "default".into()),
                gateway: a("gateway"),
                dev: s("dev"),
                protocol: s("protocol"),
                scope: s("scope"),
                prefsrc: a("prefsrc"),
                metric: r["metric"].as_u64().map(|m| m as u32),
            });
        }
    }
    let devs: Vec<String> = st.links.iter().map(|l| l.name.clone()).collect();
    for p in sysctl_paths(&devs) {
        if let Ok(v) = std::fs::read_to_string(format!("/proc/sys/net/{p}")) {
            st.sysctls.push((p, v.trim().to_string()));
        }
    }
    Ok(st)
}

/// The state of the network namespace of `pid`; devices crest cannot
/// recreate are pushed as obstacles.
pub fn collect(pid: i32, obstacles: &mut Vec<Obstacle>) -> Result<NsState> {
    let mut obs = Vec::new();
    let st = crest_sys::ns::run_in(pid, "net", libc::CLONE_NEWNET, || read_here(&mut obs, pid))?
        .map_err(|e| Error::msg(format!("reading the network namespace of pid {pid}: {e}")))?;
    obstacles.extend(obs);
    Ok(NsState::Net(st))
}

/// A namespace whoever restores supplies (see
/// [`crate::DumpOptions::external_net`]): nothing of it is recorded.
pub fn external() -> NsState {
    NsState::Net(NetState {
        external: true,
        ..Default::default()
    })
}

// ----------------------------------------------------------- entering

/// The calling thread is in another network namespace until this drops.
pub struct Entered {
    back: OwnedFd,
    home: Option<u64>,
}

thread_local! {
    /// While this thread is [`enter`]ed: the inode of the network
    /// namespace it came from (crest's own; /proc/PID/ns/net shows the
    /// one it is in).
    static HOME: std::cell::Cell<Option<u64>> = const { std::cell::Cell::new(None) };
}

/// Replaces the "net" entry of `mine` (crest's namespaces as read from
/// /proc) with crest's own while the calling thread is in the tree's.
pub fn fix_home(mine: &mut [(String, u64)]) {
    if let Some(h) = HOME.with(|c| c.get()) {
        for (_, ino) in mine.iter_mut().filter(|(n, _)| n == "net") {
            *ino = h;
        }
    }
}

impl Drop for Entered {
    fn drop(&mut self) {
        HOME.with(|c| c.set(self.home));
        // Back to where the thread was; failing that crest would go on in
        // the tree's namespace.
        if let Err(e) = crest_sys::ns::setns(&self.back, libc::CLONE_NEWNET) {
            panic!("leaving a network namespace: {e}");
        }
    }
}

fn thread_ns() -> Result<OwnedFd> {
    open_path("/proc/thread-self/ns/net")
}

fn open_path(path: &str) -> Result<OwnedFd> {
    let f = std::fs::File::open(path).map_err(|e| io_err(format!("opening {path}"), e))?;
    Ok(OwnedFd::from(f))
}

/// Moves the calling thread into namespace `ns` until the result drops.
pub fn enter(ns: &OwnedFd) -> Result<Entered> {
    use std::os::unix::fs::MetadataExt;
    let back = thread_ns()?;
    let home = HOME.with(|c| c.get());
    let ino = std::fs::metadata("/proc/thread-self/ns/net")
        .map_err(|e| io_err("reading /proc/thread-self/ns/net", e))?
        .ino();
    crest_sys::ns::setns(ns, libc::CLONE_NEWNET)
        .map_err(|e| Error::msg(format!("joining the tree's network namespace: {e}")))?;
    HOME.with(|c| c.set(Some(home.unwrap_or(ino))));
    Ok(Entered { back, home })
}

/// At the dump: enters the network namespace of the first process of
/// `procs` that is not in crest's (the tree's sockets are read, and the
/// connection lock made, in it); `None` when all are in crest's.
pub fn enter_tree(procs: &[(i32, Vec<i32>)]) -> Result<Option<Entered>> {
    let mine = crest_sys::proc::read_ns(std::process::id() as i32)?;
    let ino = |l: &[(String, u64)]| l.iter().find(|(n, _)| n == "net").map(|x| x.1);
    for (pid, _) in procs {
        let theirs = crest_sys::proc::read_ns(*pid)?;
        if ino(&theirs) != ino(&mine) {
            let fd = crest_sys::ns::open(*pid, "net")?;
            return enter(&fd).map(Some);
        }
    }
    Ok(None)
}

/// Whether process `pid` holds a socket (of any family).
fn holds_socket(pid: i32) -> bool {
    std::fs::read_dir(format!("/proc/{pid}/fd"))
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            std::fs::read_link(e.path()).is_ok_and(|l| l.to_string_lossy().starts_with("socket:["))
        })
}

/// The dump's shape rules for network namespaces: one at most besides
/// crest's, and no process outside it holding a socket (its sockets are
/// made inside at restore).
pub fn check_shape(
    procs: &[(i32, Vec<i32>)],
    table: &crate::model::Namespaces,
    out: &[crate::model::ProcNs],
    obstacles: &mut Vec<Obstacle>,
) {
    let nets: Vec<u32> = table
        .table
        .iter()
        .filter(|n| matches!(n.state, NsState::Net(_)))
        .map(|n| n.id)
        .collect();
    if nets.is_empty() {
        return;
    }
    if nets.len() > 1 {
        obstacles.push(Obstacle {
            pid: procs[0].0,
            object: "net namespace".into(),
            reason: format!(
                "the tree uses {} network namespaces besides crest's; crest restores one",
                nets.len()
            ),
        });
    }
    for ((pid, _), ns) in procs.iter().zip(out) {
        if ns.net.is_none() && holds_socket(*pid) {
            obstacles.push(Obstacle {
                pid: *pid,
                object: "net namespace".into(),
                reason: "the process holds sockets in crest's network namespace while \
                         others of the tree are in their own; the tree's sockets are \
                         restored in the tree's network namespace"
                    .into(),
            });
        }
    }
}

// ------------------------------------------------------------ restore

/// The network namespace a restore made or joined, and the veths it made
/// in crest's namespace: removed when dropped unless [`Made::commit`]ted.
pub struct Made {
    /// A descriptor on the namespace (kept until the tree runs in it).
    pub ns: OwnedFd,
    outside: Vec<String>,
}

impl Made {
    /// The tree runs: what was made stays.
    pub fn commit(mut self) {
        self.outside.clear();
    }
}

impl Drop for Made {
    fn drop(&mut self) {
        for o in self.outside.drain(..) {
            if let Err(e) = ip(&["link", "del", "dev", &o]) {
                eprintln!("crest: warning: removing veth {o}: {e}");
            }
        }
    }
}

/// A new, empty network namespace (the calling thread stays where it is).
fn new_ns() -> Result<OwnedFd> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<OwnedFd> {
            // SAFETY: plain syscall; it changes only this thread, which
            // ends right after.
            if unsafe { libc::unshare(libc::CLONE_NEWNET) } != 0 {
                return Err(io_err(
                    "creating a network namespace (unshare CLONE_NEWNET)",
                    std::io::Error::last_os_error(),
                ));
            }
            thread_ns()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::msg("a namespace thread panicked")))
    })
}

/// Runs `f` on a thread inside namespace `ns`.
fn run_inside<T: Send>(ns: &OwnedFd, f: impl FnOnce() -> Result<T> + Send) -> Result<T> {
    std::thread::scope(|s| {
        s.spawn(|| -> Result<T> {
            crest_sys::ns::setns(ns, libc::CLONE_NEWNET)?;
            f()
        })
        .join()
        .unwrap_or_else(|_| Err(Error::msg("a namespace thread panicked")))
    })
}

/// The network namespace of the image's tree, made or opened as `opts`
/// say (`None`: the tree is in crest's).  `early`: the namespace made
/// already, owned by the tree's user namespace (see
/// [`super::owned_net`]), to configure instead of a new one.
pub fn prepare(
    ckpt: &crate::model::Checkpoint,
    opts: &crate::RestoreOptions,
    early: Option<OwnedFd>,
) -> Result<Option<Made>> {
    let Some(n) = ckpt
        .namespaces
        .table
        .iter()
        .find(|n| matches!(n.state, NsState::Net(_)))
    else {
        return Ok(None);
    };
    let NsState::Net(st) = &n.state else {
        unreachable!("matched above")
    };
    let existing = opts
        .existing_ns
        .iter()
        .find(|e| e.kind == "net" && e.ino.is_none_or(|i| i == n.ino))
        .map(|e| e.path.as_path());
    crate::fault::point("restore: network namespace")?;
    restore(st, existing, &opts.veth, early).map(Some)
}

/// Makes (or, with `existing`, opens) the network namespace of `st`
/// before the tree's sockets are made.  `veth` maps inner veth names to
/// the names of their outer ends in crest's namespace.
pub fn restore(
    st: &NetState,
    existing: Option<&std::path::Path>,
    veth: &[(String, String)],
    early: Option<OwnedFd>,
) -> Result<Made> {
    let fresh = || match early {
        Some(fd) => Ok(fd),
        None => new_ns(),
    };
    if existing.is_none() && st.external {
        // The runtime's own namespace at the dump: a new, empty one.
        return Ok(Made {
            ns: fresh()?,
            outside: Vec::new(),
        });
    }
    if let Some(p) = existing {
        let f = std::fs::File::open(p)
            .map_err(|e| io_err(format!("opening network namespace {}", p.display()), e))?;
        let fd = OwnedFd::from(f);
        // Check that it is one.
        run_inside(&fd, || Ok(()))
            .map_err(|e| Error::msg(format!("{} is not a network namespace: {e}", p.display())))?;
        return Ok(Made {
            ns: fd,
            outside: Vec::new(),
        });
    }
    for l in st.links.iter().filter(|l| l.kind == "veth") {
        if !veth.iter().any(|(i, _)| *i == l.name) {
            return Err(Error::msg(format!(
                "veth {}: name its outer end in crest's namespace with --veth {}=NAME \
                 (or restore into an existing namespace with --netns PATH)",
                l.name, l.name
            )));
        }
    }
    let mut made = Made {
        ns: fresh()?,
        outside: Vec::new(),
    };
    let target = format!("/proc/{}/fd/{}", std::process::id(), made.ns.as_raw_fd());
    for l in st.links.iter().filter(|l| l.kind == "veth") {
        let out = &veth.iter().find(|(i, _)| *i == l.name).expect("checked").1;
        let mtu = l.mtu.to_string();
        let mut args = vec!["link", "add", "name", out, "mtu", &mtu, "type", "veth"];
        args.extend(["peer", "name", &l.name, "mtu", &mtu, "netns", &target]);
        if !l.mac.is_empty() {
            args.extend(["address", &l.mac]);
        }
        ip(&args).map_err(|e| Error::msg(format!("creating veth {}={out}: {e}", l.name)))?;
        made.outside.push(out.clone());
    }
    run_inside(&made.ns, || configure(st))?;
    Ok(made)
}

/// Configures the namespace the calling thread is in as `st` says.
fn configure(st: &NetState) -> Result<()> {
    for (p, v) in &st.sysctls {
        let path = format!("/proc/sys/net/{p}");
        let now = std::fs::read_to_string(&path).unwrap_or_default();
        if now.trim() == v {
            continue;
        }
        std::fs::write(&path, v).map_err(|e| io_err(format!("setting {path} to {v}"), e))?;
    }
    for l in &st.links {
        if l.kind == "loopback" && l.mtu != 0 {
            let mtu = l.mtu.to_string();
            ip(&["link", "set", "dev", &l.name, "mtu", &mtu])?;
        }
        if l.up {
            ip(&["link", "set", "dev", &l.name, "up"])?;
        }
        for (a, len) in &l.addrs {
            let cidr = format!("{a}/{len}");
            let mut args = vec!["addr", "add", &cidr, "dev", &l.name];
            if a.is_ipv6() {
                args.push("nodad");
            }
            match ip(&args) {
                Ok(_) => {}
                // lo's own addresses come with it being up.
                Err(e)
                    if e.to_string().contains("File exists")
                        || e.to_string().contains("already assigned") => {}
                Err(e) => return Err(Error::msg(format!("net device {}: {e}", l.name))),
            }
        }
    }
    for r in &st.routes {
        let fam = if r.family == 6 { "-6" } else { "-4" };
        let mut args: Vec<String> = vec![fam.into(), "route".into(), "add".into(), r.dst.clone()];
        let mut opt = |k: &str, v: Option<String>| {
            if let Some(v) = v {
                args.push(k.into());
                args.push(v);
            }
        };
        opt("via", r.gateway.map(|g| g.to_string()));
        opt("dev", r.dev.clone());
        opt("proto", r.protocol.clone());
        opt("scope", r.scope.clone());
        opt("src", r.prefsrc.map(|g| g.to_string()));
        opt("metric", r.metric.map(|m| m.to_string()));
        let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
        match ip(&a) {
            Ok(_) => {}
            Err(e) if e.to_string().contains("File exists") => {}
            Err(e) => return Err(Error::msg(format!("restoring route {}: {e}", r.dst))),
        }
    }
    Ok(())
}

/// A descriptor number the stubs inherit, for the process entering `ns`.
pub fn raw(m: &Made) -> i32 {
    m.ns.as_raw_fd()
}

/// A new descriptor on the same namespace.
pub fn dup(m: &Made) -> Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC on a descriptor we own; the result is checked.
    let fd = unsafe { libc::fcntl(m.ns.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if fd < 0 {
        return Err(io_err("dup", std::io::Error::last_os_error()));
    }
    // SAFETY: a new descriptor we own.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sysctls_are_written_namespace_wide_first() {
        let p = sysctl_paths(&["lo".into(), "eth0".into()]);
        assert_eq!(p[0], "ipv4/ip_forward");
        let all = p
            .iter()
            .position(|x| x == "ipv4/conf/all/forwarding")
            .unwrap();
        let dev = p
            .iter()
            .position(|x| x == "ipv4/conf/eth0/forwarding")
            .unwrap();
        assert!(all < dev);
    }
}
