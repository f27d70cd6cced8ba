//! Live migration: `crest migrate` sends a running tree to a `crest
//! restore --listen` on another host, which restores it; the source tree
//! is killed only once the destination says the restored one runs.
//!
//! [`transport`] frames and authenticates the connection, [`proto`] says
//! what is sent when, [`source`] and [`dest`] are the two sides;
//! [`precopied`] sends memory while the tree runs, [`postcopy`] and
//! [`postcopy_dest`] after the destination's tree runs (`--lazy`).

pub mod dest;
pub mod image;
pub mod postcopy;
pub mod postcopy_dest;
pub mod prebuild;
pub mod precopied;
pub mod proto;
pub mod source;
pub mod transport;

pub use dest::{receive, ListenOptions, ReceiveReport};
pub use source::{migrate, MigrateOptions, MigrateReport};
pub use transport::Psk;

use crate::error::{Error, Result};
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

/// Both directions of a migration connection.
pub struct Channel {
    pub read: Box<dyn Read + Send>,
    pub write: Box<dyn Write + Send>,
    /// The socket, when it is one (for timeouts).
    pub tcp: Option<TcpStream>,
}

impl Channel {
    /// Standard input and output (`-`), used straight (std's stdout
    /// would look for line ends in every byte).
    pub fn stdio() -> Result<Channel> {
        use std::os::fd::AsFd;
        let r = std::fs::File::from(std::io::stdin().as_fd().try_clone_to_owned()?);
        let w = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
        Ok(Channel {
            read: Box::new(r),
            write: Box::new(std::io::BufWriter::with_capacity(256 << 10, w)),
            tcp: None,
        })
    }

    fn from_tcp(s: TcpStream) -> Result<Channel> {
        let _ = s.set_nodelay(true);
        let r = s.try_clone()?;
        let w = s.try_clone()?;
        Ok(Channel {
            read: Box::new(r),
            write: Box::new(std::io::BufWriter::with_capacity(256 << 10, w)),
            tcp: Some(s),
        })
    }

    /// Connects to `addr`, trying again for up to `wait` while nothing
    /// listens there yet.
    pub fn connect(addr: &str, wait: Duration) -> Result<Channel> {
        let t0 = Instant::now();
        let addrs: Vec<_> = addr
            .to_socket_addrs()
            .map_err(|e| Error::msg(format!("{addr}: {e}")))?
            .collect();
        loop {
            let mut last = None;
            for a in &addrs {
                match TcpStream::connect_timeout(a, Duration::from_secs(10)) {
                    Ok(s) => return Channel::from_tcp(s),
                    Err(e) => last = Some(e),
                }
            }
            let e = last.map(|e| e.to_string()).unwrap_or("no address".into());
            if t0.elapsed() >= wait {
                return Err(Error::msg(format!("connecting to {addr}: {e}")));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Listens on `addr` and accepts one connection; `listening` is
    /// called with the bound address once connections are accepted.
    pub fn accept(addr: &str, listening: &mut dyn FnMut(std::net::SocketAddr)) -> Result<Channel> {
        let l =
            TcpListener::bind(addr).map_err(|e| Error::msg(format!("listening on {addr}: {e}")))?;
        listening(l.local_addr()?);
        let (s, _) = l
            .accept()
            .map_err(|e| Error::msg(format!("accepting on {addr}: {e}")))?;
        Channel::from_tcp(s)
    }

    /// Replies must come within `t` (TCP only).
    pub fn set_timeout(&self, t: Option<Duration>) {
        if let Some(s) = &self.tcp {
            let _ = s.set_read_timeout(t);
            let _ = s.set_write_timeout(t);
        }
    }
}
