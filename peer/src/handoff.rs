//! Listening sockets from outside the process, and handing ours on: the
//! seed's graceful reboot.
//!
//! # Starting from sockets passed in
//!
//! A process may be given its listening sockets instead of binding them:
//! by systemd socket activation, or by a predecessor handing off (see
//! below). Both use systemd's protocol: descriptors from 3 on, counted by
//! `LISTEN_FDS` and named by `LISTEN_FDNAMES` (`LISTEN_PID`, when set,
//! must be this process). They are taken (with the `listenfd` crate, which
//! checks each is a socket of the kind asked) the first time a peer
//! listens, and every listener of every runtime looks there before it
//! binds: one of the network's kind that is named for the listener's
//! network and configured address (a hand-off names them so), else one
//! bound to the configured address itself (what systemd's `ListenStream=`
//! gives), is served instead of a new one. A TCP, unix or unixpacket
//! (`ListenSequentialPacket=`) socket can come this way; a unix socket's
//! file is left as it is.
//!
//! # Readiness
//!
//! [`notify_ready`] says the process serves: to a predecessor waiting
//! for it, and to systemd (`READY=1`, with `MAINPID=` when it is a
//! successor, so a unit with `NotifyAccess=all` follows the new process).
//! Each adapter's `grace_signal` calls it when it starts waiting for
//! signals. Sockets passed in that no listener took by then are closed
//! (with a warning): kept, they would take connections nobody accepts.
//!
//! # Handing off
//!
//! [`hand_off`] starts the successor: this program again (the file the
//! running one was started from, so a new binary put in its place runs)
//! with the same arguments and environment, and this process's listening
//! sockets as its descriptors 3 and on, named for the listeners that
//! bound them, plus one more (named [`READY_NAME`]) on which the
//! successor says it is ready. It returns once it has; the caller then
//! shuts its peers down gracefully, which tells clients to move (see
//! `teleport_core::GOING_AWAY_URI`). The listening sockets stay open the
//! whole time, in one process or the other, so no dial is refused.

use std::io::{self, Read, Write};
use std::net::SocketAddr;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock};
use std::time::Duration;

use command_fds::{CommandFdExt, FdMapping};
use socket2::{Domain, Socket, Type};

pub use crate::addr::listener_name;
use crate::config::Network;

/// The name of the descriptor on which a successor says it is ready.
pub const READY_NAME: &str = "teleport-ready";

/// What a successor writes on the ready descriptor.
const READY_BYTE: u8 = b'R';

/// The first descriptor of systemd's protocol.
const FIRST_FD: i32 = 3;

/// The kinds of socket a listener serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tcp,
    Unix,
    SeqPacket,
}

impl Kind {
    fn of(network: Network) -> Kind {
        match network {
            Network::Tcp | Network::Tcp4 | Network::Tcp6 => Kind::Tcp,
            Network::Unix => Kind::Unix,
            Network::Unixpacket => Kind::SeqPacket,
        }
    }
}

/// A socket passed in, not taken yet.
struct Inherited {
    fd: i32,
    name: String,
    kind: Kind,
    socket: Socket,
}

/// What was passed in, taken from the environment once.
#[derive(Default)]
struct Pool {
    sockets: Vec<Inherited>,
    /// This process was started by a predecessor's hand-off.
    successor: bool,
}

static POOL: OnceLock<Mutex<Pool>> = OnceLock::new();

/// Whether [`notify_ready`] was called.
static READY: AtomicBool = AtomicBool::new(false);

fn pool() -> MutexGuard<'static, Pool> {
    POOL.get_or_init(|| Mutex::new(Pool::from_env()))
        .lock()
        .unwrap_or_else(|e| e.into_inner())
}

impl Pool {
    fn from_env() -> Pool {
        // Read before listenfd takes the count out of the environment.
        let names: Vec<String> = std::env::var("LISTEN_FDNAMES")
            .map(|v| v.split(':').map(unescape).collect())
            .unwrap_or_default();
        let mut fds = listenfd::ListenFd::from_env();
        let mut pool = Pool::default();
        for i in 0..fds.len() {
            let fd = FIRST_FD + i as i32;
            let name = names.get(i).cloned().unwrap_or_default();
            let tries = [
                (Domain::IPV4, Type::STREAM, Kind::Tcp, "tcp socket"),
                (Domain::UNIX, Type::STREAM, Kind::Unix, "unix stream socket"),
                (
                    Domain::UNIX,
                    Type::SEQPACKET,
                    Kind::SeqPacket,
                    "unix seqpacket socket",
                ),
            ];
            let mut taken = None;
            let mut last_err = None;
            for (domain, ty, kind, hint) in tries {
                // A failed check leaves the descriptor for the next try.
                match fds.take_custom::<Socket>(i, domain.into(), ty.into(), hint) {
                    Ok(Some(socket)) => {
                        taken = Some((kind, socket));
                        break;
                    }
                    Ok(None) => break,
                    Err(e) => last_err = Some(e),
                }
            }
            match taken {
                Some((kind, socket)) => {
                    if name == READY_NAME {
                        pool.successor = true;
                    }
                    pool.sockets.push(Inherited {
                        fd,
                        name,
                        kind,
                        socket,
                    })
                }
                None => {
                    tracing::warn!(target: "teleport::handoff", fd, name, error = ?last_err,
                        "a descriptor passed in is not a socket teleport serves; left alone")
                }
            }
        }
        if !pool.sockets.is_empty() {
            tracing::info!(target: "teleport::handoff", sockets = pool.sockets.len(),
                successor = pool.successor, "sockets passed in");
        }
        pool
    }
}

/// A name as `LISTEN_FDNAMES` carries it: no `:` (the separator) and no
/// control character; `%` escapes.
fn escape(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for c in name.chars() {
        if c == '%' || c == ':' || c.is_control() {
            let mut utf8 = [0u8; 4];
            for b in c.encode_utf8(&mut utf8).bytes() {
                out.push_str(&format!("%{b:02X}"));
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// [`escape`] undone; a `%` that starts no escape stays as it is.
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 3 <= b.len() {
            let hex = |c: u8| (c as char).to_digit(16);
            if let (Some(hi), Some(lo)) = (hex(b[i + 1]), hex(b[i + 2])) {
                out.push((hi * 16 + lo) as u8);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The socket passed in for a listener of `network` at `address` (its
/// resolved addresses `resolved`, for TCP), if there is one: named for
/// it, else bound there. It is in non-blocking mode.
pub fn take_listener(
    network: Network,
    address: &str,
    resolved: &[SocketAddr],
) -> io::Result<Option<Socket>> {
    let mut pool = pool();
    if pool.sockets.is_empty() {
        return Ok(None);
    }
    let kind = Kind::of(network);
    let name = listener_name(network, address);
    let bound_here = |s: &Inherited| -> bool {
        let Ok(local) = s.socket.local_addr() else {
            return false;
        };
        match kind {
            Kind::Tcp => local.as_socket().is_some_and(|a| resolved.contains(&a)),
            Kind::Unix | Kind::SeqPacket => local.as_pathname() == Some(Path::new(address)),
        }
    };
    let at = pool
        .sockets
        .iter()
        .position(|s| s.kind == kind && s.name == name)
        .or_else(|| {
            pool.sockets
                .iter()
                .position(|s| s.kind == kind && s.name != READY_NAME && bound_here(s))
        });
    let Some(at) = at else {
        return Ok(None);
    };
    let s = pool.sockets.remove(at);
    s.socket.set_nonblocking(true)?;
    tracing::info!(target: "teleport::handoff", fd = s.fd, name = s.name, %name,
        "listening on a socket passed in");
    Ok(Some(s.socket))
}

/// Whether this process was started by a predecessor's [`hand_off`].
pub fn is_successor() -> bool {
    pool().successor
}

/// Says this process serves (idempotent): to the predecessor that started
/// it, if one did (it then stops accepting and drains), and to systemd
/// when `NOTIFY_SOCKET` is set (`READY=1`, and `MAINPID=` for a
/// successor). Sockets passed in that no listener took are closed.
pub fn notify_ready() -> io::Result<()> {
    if READY.swap(true, Ordering::AcqRel) {
        return Ok(());
    }
    let mut pool = pool();
    let successor = pool.successor;
    let mut told = Ok(());
    for s in std::mem::take(&mut pool.sockets) {
        if s.name == READY_NAME {
            let mut stream = std::os::unix::net::UnixStream::from(OwnedFd::from(s.socket));
            told = stream.write_all(&[READY_BYTE]);
        } else {
            tracing::warn!(target: "teleport::handoff", fd = s.fd, name = s.name,
                "a socket passed in was not listened on; closed");
        }
    }
    drop(pool);
    let pid = std::process::id();
    let mut states = vec![sd_notify::NotifyState::Ready];
    if successor {
        states.push(sd_notify::NotifyState::MainPid(pid));
    }
    if let Err(e) = sd_notify::notify(false, &states) {
        tracing::warn!(target: "teleport::handoff", error = %e, "could not notify systemd");
    }
    tracing::info!(target: "teleport::handoff", pid, successor, "ready");
    told
}

/// How a hand-off goes: what to start, and how long it may take to be
/// ready.
#[derive(Debug, Clone)]
pub struct HandOff {
    program: Option<PathBuf>,
    args: Option<Vec<std::ffi::OsString>>,
    ready_timeout: Duration,
}

impl Default for HandOff {
    /// This program again, with its arguments; 30 s to be ready.
    fn default() -> Self {
        HandOff {
            program: None,
            args: None,
            ready_timeout: Duration::from_secs(30),
        }
    }
}

impl HandOff {
    /// Starts `program` instead of this program again.
    pub fn program(mut self, program: impl Into<PathBuf>) -> Self {
        self.program = Some(program.into());
        self
    }

    /// With these arguments instead of this process's.
    pub fn args<I, A>(mut self, args: I) -> Self
    where
        I: IntoIterator<Item = A>,
        A: Into<std::ffi::OsString>,
    {
        self.args = Some(args.into_iter().map(Into::into).collect());
        self
    }

    /// How long the successor may take to say it is ready; past it, it is
    /// killed and the hand-off fails.
    pub fn ready_timeout(mut self, timeout: Duration) -> Self {
        self.ready_timeout = timeout;
        self
    }

    /// The time the successor has to be ready.
    pub fn timeout(&self) -> Duration {
        self.ready_timeout
    }
}

/// A successor that said it is ready.
#[derive(Debug)]
pub struct Successor {
    /// Its process id.
    pub pid: u32,
}

/// Why a hand-off failed; this process keeps serving.
#[non_exhaustive]
#[derive(Debug, thiserror::Error)]
pub enum HandOffError {
    /// The program could not be started.
    #[error("could not start the successor {program}: {source}")]
    Spawn {
        /// What was started.
        program: String,
        /// Why not.
        source: io::Error,
    },
    /// It ended (or closed its ready descriptor) before it was ready.
    #[error("the successor (pid {pid}) ended before it was ready: {status}")]
    Exited {
        /// Its process id.
        pid: u32,
        /// How it ended, as far as known.
        status: String,
    },
    /// It was not ready in time, and was killed.
    #[error("the successor (pid {pid}) was not ready within {after:?}; killed")]
    Timeout {
        /// Its process id.
        pid: u32,
        /// The time it had.
        after: Duration,
    },
    /// The sockets could not be prepared.
    #[error("hand-off: {0}")]
    Io(#[from] io::Error),
}

/// The program this process runs: the file it was started from, even
/// when a new one was put in its place since.
fn this_program() -> io::Result<PathBuf> {
    let exe = std::env::current_exe()?;
    // Linux names a replaced file "<path> (deleted)": the path is where the
    // new binary is.
    let shown = exe.to_string_lossy();
    match shown.strip_suffix(" (deleted)") {
        Some(path) => Ok(PathBuf::from(path)),
        None => Ok(exe),
    }
}

/// Starts the successor with `listeners` (a name, from [`listener_name`],
/// and the socket: each listener's own duplicate) and waits until it says
/// it is ready (blocking this thread: run it where a wait is fine).
pub fn hand_off(
    listeners: Vec<(String, Socket)>,
    how: &HandOff,
) -> Result<Successor, HandOffError> {
    let (mut ours, theirs) = Socket::pair(Domain::UNIX, Type::STREAM, None)?;
    let mut names = Vec::with_capacity(listeners.len() + 1);
    let mut mappings = Vec::with_capacity(listeners.len() + 1);
    for (i, (name, socket)) in listeners.into_iter().enumerate() {
        names.push(escape(&name));
        mappings.push(FdMapping {
            parent_fd: OwnedFd::from(socket),
            child_fd: FIRST_FD + i as i32,
        });
    }
    names.push(READY_NAME.to_string());
    mappings.push(FdMapping {
        parent_fd: OwnedFd::from(theirs),
        child_fd: FIRST_FD + mappings.len() as i32,
    });
    let program = match &how.program {
        Some(p) => p.clone(),
        None => this_program()?,
    };
    let args: Vec<std::ffi::OsString> = match &how.args {
        Some(a) => a.clone(),
        None => std::env::args_os().skip(1).collect(),
    };
    let count = mappings.len();
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&args)
        .env_remove("LISTEN_PID")
        .env_remove("LISTEN_FDS_FIRST_FD")
        .env("LISTEN_FDS", count.to_string())
        .env("LISTEN_FDNAMES", names.join(":"));
    cmd.fd_mappings(mappings)
        .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
    let spawned = cmd.spawn();
    // The parent's copies of the descriptors go with the command.
    drop(cmd);
    let mut child = spawned.map_err(|source| HandOffError::Spawn {
        program: program.display().to_string(),
        source,
    })?;
    let pid = child.id();
    tracing::info!(target: "teleport::handoff", pid, program = %program.display(),
        sockets = count - 1, "successor started; waiting until it is ready");
    ours.set_read_timeout(Some(how.ready_timeout.max(Duration::from_millis(1))))?;
    let mut byte = [0u8; 1];
    let outcome = loop {
        match ours.read(&mut byte) {
            Ok(1) if byte[0] == READY_BYTE => break Ok(()),
            Ok(_) => break Err(None),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e)
                if e.kind() == io::ErrorKind::WouldBlock || e.kind() == io::ErrorKind::TimedOut =>
            {
                break Err(Some(()))
            }
            Err(e) => return Err(e.into()),
        }
    };
    match outcome {
        Ok(()) => {
            tracing::info!(target: "teleport::handoff", pid, "successor ready");
            // Its exit status goes to whoever outlives us (init, or the
            // service manager): this process is about to end.
            drop(child);
            Ok(Successor { pid })
        }
        Err(None) => {
            let status = match child.wait() {
                Ok(s) => s.to_string(),
                Err(e) => e.to_string(),
            };
            Err(HandOffError::Exited { pid, status })
        }
        Err(Some(())) => {
            let _ = child.kill();
            let _ = child.wait();
            Err(HandOffError::Timeout {
                pid,
                after: how.ready_timeout,
            })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_survive_the_environment() {
        for name in [
            "tcp 127.0.0.1:0",
            "tcp6 [::1]:9090",
            "unix /tmp/a:b%c.sock",
            "unixpacket /run/x\n\u{85}é",
            "%zz",
            "",
        ] {
            let e = escape(name);
            assert!(!e.contains(':'), "{e}");
            assert!(!e.chars().any(|c| c.is_control()), "{e}");
            assert_eq!(unescape(&e), name);
        }
    }

    #[test]
    fn unescaping_anything_does_not_panic() {
        for s in ["%", "%4", "%G0", "%%%", "a%3", "%ff", "é%41"] {
            let _ = unescape(s);
        }
        assert_eq!(unescape("%41%3A"), "A:");
    }
}
