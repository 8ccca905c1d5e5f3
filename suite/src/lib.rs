//! `teleport-suite`: tests that run a teleport server in a child process
//! (the `tp-serve` binary of this crate) and attack it, kill it, restart
//! it and watch what it costs from `/proc` (Linux).
//!
//! - [`Server`]: starts `tp-serve`, reads the address it bound, kills it
//!   (`SIGKILL`), restarts it on the same address, shuts it down through
//!   its stdin and reads its shutdown report; its stderr (warnings and
//!   errors it logged) is kept for assertions.
//! - [`proc_status_kib`], [`reset_peak`], [`open_fds`], [`nofile_limit`]:
//!   memory, descriptors and the descriptor limit of any process.
//! - [`raise_nofile_limit`]: more descriptors for this process.
//!
//! The tests give the binary's path with `env!("CARGO_BIN_EXE_tp-serve")`.
#![warn(missing_docs)]

use std::io::{self, BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

pub use teleport_peer::ShutdownReport;

/// How long `tp-serve` may take to say it is listening.
pub const START_TIMEOUT: Duration = Duration::from_secs(30);

/// The runtime a `tp-serve` (or a client) runs on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Runtime {
    /// `teleport-tokio` on a multi-thread tokio runtime (2 workers).
    Tokio,
    /// `teleport-async-std` on async-std's executor.
    AsyncStd,
    /// `teleport-async-std` on smol's executor.
    Smol,
    /// `teleport-mio`: a poll loop, handlers on worker threads.
    Mio,
}

impl Runtime {
    /// Every runtime.
    pub const ALL: [Runtime; 4] = [
        Runtime::Tokio,
        Runtime::AsyncStd,
        Runtime::Smol,
        Runtime::Mio,
    ];

    /// The name `tp-serve --runtime` takes.
    pub fn arg(self) -> &'static str {
        match self {
            Runtime::Tokio => "tokio",
            Runtime::AsyncStd => "async-std",
            Runtime::Smol => "smol",
            Runtime::Mio => "mio",
        }
    }
}

impl std::fmt::Display for Runtime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.arg())
    }
}

/// The transport a server listens on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Net {
    /// Loopback TCP.
    Tcp,
    /// A unix stream socket in the temp dir.
    Unix,
}

impl Net {
    /// The name `tp-serve --network` takes.
    pub fn arg(self) -> &'static str {
        match self {
            Net::Tcp => "tcp",
            Net::Unix => "unix",
        }
    }
}

impl std::fmt::Display for Net {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.arg())
    }
}

/// A fresh unix socket path in the temp dir, unique in this process and
/// across processes (short enough for the unix path limit).
pub fn temp_socket_path(tag: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let n = N.fetch_add(1, Ordering::Relaxed);
    let tag: String = tag
        .chars()
        .filter(|c| c.is_ascii_alphanumeric())
        .take(20)
        .collect();
    std::env::temp_dir().join(format!("tps-{}-{n}-{tag}.sock", std::process::id()))
}

/// How to start a `tp-serve`.
#[derive(Debug, Clone)]
pub struct ServerOptions {
    /// The `tp-serve` binary.
    pub bin: PathBuf,
    /// Its runtime.
    pub runtime: Runtime,
    /// Its transport.
    pub net: Net,
    /// Where it listens: `127.0.0.1:0` for any port, or a socket path.
    pub listen: String,
    /// Its `PeerConfig`, as TOML text.
    pub config: String,
    /// How long its graceful shutdown may take.
    pub shutdown_timeout: Duration,
    /// Handler threads of a mio server.
    pub workers: usize,
}

impl ServerOptions {
    /// A server on `runtime` over `net` with this config; it listens on
    /// any loopback port, or on a fresh path in the temp dir for unix.
    pub fn new(bin: impl Into<PathBuf>, runtime: Runtime, net: Net, config: &str) -> Self {
        let listen = match net {
            Net::Tcp => "127.0.0.1:0".to_string(),
            Net::Unix => temp_socket_path(runtime.arg())
                .to_string_lossy()
                .into_owned(),
        };
        ServerOptions {
            bin: bin.into(),
            runtime,
            net,
            listen,
            config: config.to_string(),
            shutdown_timeout: Duration::from_secs(10),
            workers: 64,
        }
    }
}

/// Lines the child printed on stdout, and what it logged on stderr.
struct Output {
    stdout: mpsc::Receiver<String>,
    stderr: Arc<Mutex<String>>,
}

/// A running (or killed, or shut down) `tp-serve` child process. Dropping
/// it kills the process.
pub struct Server {
    opts: ServerOptions,
    addr: String,
    child: Child,
    stdin: Option<ChildStdin>,
    out: Output,
    /// Logs of earlier processes (before a restart).
    old_logs: String,
}

fn spawn(opts: &ServerOptions, listen: &str) -> io::Result<(Child, ChildStdin, Output)> {
    let mut child = Command::new(&opts.bin)
        .arg("--runtime")
        .arg(opts.runtime.arg())
        .arg("--network")
        .arg(opts.net.arg())
        .arg("--listen")
        .arg(listen)
        .arg("--config")
        .arg(&opts.config)
        .arg("--shutdown-timeout")
        .arg(humantime::format_duration(opts.shutdown_timeout).to_string())
        .arg("--workers")
        .arg(opts.workers.to_string())
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let stdin = child
        .stdin
        .take()
        .ok_or_else(|| io::Error::other("no stdin pipe"))?;
    let stdout = child
        .stdout
        .take()
        .ok_or_else(|| io::Error::other("no stdout pipe"))?;
    let stderr = child
        .stderr
        .take()
        .ok_or_else(|| io::Error::other("no stderr pipe"))?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let logs = Arc::new(Mutex::new(String::new()));
    let sink = logs.clone();
    std::thread::spawn(move || {
        let mut r = BufReader::new(stderr);
        let mut line = Vec::new();
        loop {
            line.clear();
            match r.read_until(b'\n', &mut line) {
                Ok(0) | Err(_) => break,
                Ok(_) => sink
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push_str(&String::from_utf8_lossy(&line)),
            }
        }
    });
    Ok((
        child,
        stdin,
        Output {
            stdout: rx,
            stderr: logs,
        },
    ))
}

/// Reads the first line: `LISTENING <addr>`, or `ERROR <kind> <message>`.
fn await_listening(out: &Output) -> io::Result<String> {
    match out.stdout.recv_timeout(START_TIMEOUT) {
        Ok(line) => {
            if let Some(addr) = line.strip_prefix("LISTENING ") {
                return Ok(addr.to_string());
            }
            let rest = line.strip_prefix("ERROR ").unwrap_or(&line);
            let kind = if rest.starts_with("AddrInUse") {
                io::ErrorKind::AddrInUse
            } else {
                io::ErrorKind::Other
            };
            Err(io::Error::new(kind, format!("tp-serve: {rest}")))
        }
        Err(e) => {
            // Give the stderr reader a moment to collect a panic message.
            std::thread::sleep(Duration::from_millis(100));
            let logs = out.stderr.lock().unwrap_or_else(|e| e.into_inner()).clone();
            Err(io::Error::other(format!(
                "tp-serve did not say it was listening ({e}); stderr:\n{logs}"
            )))
        }
    }
}

impl Server {
    /// Starts `tp-serve` and waits until it listens.
    pub fn start(opts: ServerOptions) -> io::Result<Server> {
        let listen = opts.listen.clone();
        let (mut child, stdin, out) = spawn(&opts, &listen)?;
        let addr = match await_listening(&out) {
            Ok(a) => a,
            Err(e) => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(e);
            }
        };
        Ok(Server {
            opts,
            addr,
            child,
            stdin: Some(stdin),
            out,
            old_logs: String::new(),
        })
    }

    /// What `dial` takes to reach the server (`host:port` or a path).
    pub fn addr(&self) -> &str {
        &self.addr
    }

    /// The options it was started with.
    pub fn options(&self) -> &ServerOptions {
        &self.opts
    }

    /// The process id of the running child.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Kills the process with `SIGKILL` and reaps it.
    pub fn kill(&mut self) -> io::Result<()> {
        self.stdin = None;
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }

    /// Starts a new process on the same address once the old one is gone
    /// (killed or shut down). Retries while the address is still taken.
    pub fn restart(&mut self) -> io::Result<()> {
        if self.child.try_wait()?.is_none() {
            return Err(io::Error::other("the server is still running"));
        }
        let listen = self.addr.clone();
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            let (mut child, stdin, out) = spawn(&self.opts, &listen)?;
            match await_listening(&out) {
                Ok(addr) => {
                    let old = std::mem::replace(&mut self.out, out);
                    self.old_logs
                        .push_str(&old.stderr.lock().unwrap_or_else(|e| e.into_inner()));
                    self.addr = addr;
                    self.child = child;
                    self.stdin = Some(stdin);
                    return Ok(());
                }
                Err(e) if e.kind() == io::ErrorKind::AddrInUse && Instant::now() < deadline => {
                    let _ = child.wait();
                    // The port or path is not free yet: try again shortly.
                    std::thread::sleep(Duration::from_millis(10));
                }
                Err(e) => {
                    let _ = child.kill();
                    let _ = child.wait();
                    return Err(e);
                }
            }
        }
    }

    /// Shuts the server down gracefully (closes its stdin), waits for its
    /// report and its exit, which must be a success.
    pub fn shutdown(&mut self) -> io::Result<ShutdownReport> {
        self.stdin = None;
        let wait = self.opts.shutdown_timeout + START_TIMEOUT;
        let deadline = Instant::now() + wait;
        let report = loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.stdout.recv_timeout(left) {
                Ok(line) => {
                    if let Some(r) = line.strip_prefix("SHUTDOWN ") {
                        break parse_report(r)?;
                    }
                }
                Err(e) => {
                    return Err(io::Error::other(format!(
                        "no shutdown report within {wait:?} ({e}); stderr:\n{}",
                        self.logs()
                    )))
                }
            }
        };
        let status = self.child.wait()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "tp-serve exited with {status}; stderr:\n{}",
                self.logs()
            )));
        }
        Ok(report)
    }

    /// Everything the server logged on stderr so far (warnings and
    /// errors), of this process and of those before a restart.
    pub fn logs(&self) -> String {
        let now = self.out.stderr.lock().unwrap_or_else(|e| e.into_inner());
        format!("{}{}", self.old_logs, now)
    }

    /// How many logged lines contain `needle`.
    pub fn log_count(&self, needle: &str) -> usize {
        self.logs().lines().filter(|l| l.contains(needle)).count()
    }

    /// The child's resident set size, in KiB.
    pub fn rss_kib(&self) -> io::Result<u64> {
        proc_status_kib(self.pid(), "VmRSS")
    }

    /// The child's peak resident set size since the last
    /// [`Server::reset_peak`] (or its start), in KiB.
    pub fn peak_kib(&self) -> io::Result<u64> {
        proc_status_kib(self.pid(), "VmHWM")
    }

    /// Resets the child's peak resident set size to its current one.
    pub fn reset_peak(&self) -> io::Result<()> {
        reset_peak(self.pid())
    }

    /// How many descriptors the child holds open.
    pub fn open_fds(&self) -> io::Result<usize> {
        open_fds(self.pid())
    }

    /// The child's soft limit on open descriptors.
    pub fn nofile_limit(&self) -> io::Result<u64> {
        nofile_limit(self.pid())
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stdin = None;
        let _ = self.child.kill();
        let _ = self.child.wait();
        if self.opts.net == Net::Unix {
            let _ = std::fs::remove_file(&self.addr);
        }
    }
}

/// Parses `sessions=1 cancelled=0 handlers_abandoned=0 pulls_abandoned=0`.
fn parse_report(s: &str) -> io::Result<ShutdownReport> {
    let mut r = ShutdownReport::default();
    for pair in s.split_whitespace() {
        let (k, v) = pair
            .split_once('=')
            .ok_or_else(|| io::Error::other(format!("bad report field {pair:?}")))?;
        let v: usize = v
            .parse()
            .map_err(|e| io::Error::other(format!("bad report value {pair:?}: {e}")))?;
        match k {
            "sessions" => r.sessions = v,
            "cancelled" => r.cancelled = v,
            "handlers_abandoned" => r.handlers_abandoned = v,
            "pulls_abandoned" => r.pulls_abandoned = v,
            other => return Err(io::Error::other(format!("unknown report field {other:?}"))),
        }
    }
    Ok(r)
}

/// A `kB` line of `/proc/<pid>/status` (`VmRSS`, `VmHWM`, ...), in KiB.
pub fn proc_status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| {
            l.strip_prefix(field)
                .and_then(|rest| rest.strip_prefix(':'))
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// Resets the peak resident set size (`VmHWM`) of `pid` to its current
/// size, by writing `5` to `/proc/<pid>/clear_refs`.
pub fn reset_peak(pid: u32) -> io::Result<()> {
    std::fs::OpenOptions::new()
        .write(true)
        .open(format!("/proc/{pid}/clear_refs"))?
        .write_all(b"5")
}

/// How many descriptors `pid` holds open (entries of `/proc/<pid>/fd`).
pub fn open_fds(pid: u32) -> io::Result<usize> {
    Ok(std::fs::read_dir(format!("/proc/{pid}/fd"))?.count())
}

/// The soft limit on open descriptors of `pid` (`/proc/<pid>/limits`).
pub fn nofile_limit(pid: u32) -> io::Result<u64> {
    let limits = std::fs::read_to_string(format!("/proc/{pid}/limits"))?;
    limits
        .lines()
        .find_map(|l| {
            l.strip_prefix("Max open files")
                .and_then(|rest| rest.split_whitespace().next())
                .and_then(|n| n.parse().ok())
        })
        .ok_or_else(|| io::Error::other(format!("no open files limit for {pid}")))
}

/// Raises this process's soft limit on open descriptors to `want` (or to
/// the hard limit, if that is lower); returns the limit now in force.
pub fn raise_nofile_limit(want: u64) -> io::Result<u64> {
    rlimit::increase_nofile_limit(want)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_line_is_read_back() {
        let r =
            parse_report("sessions=3 cancelled=1 handlers_abandoned=2 pulls_abandoned=4").unwrap();
        assert_eq!(
            (
                r.sessions,
                r.cancelled,
                r.handlers_abandoned,
                r.pulls_abandoned
            ),
            (3, 1, 2, 4)
        );
        assert!(parse_report("sessions=x").is_err());
        assert!(parse_report("sessions").is_err());
        assert!(parse_report("surprise=1").is_err());
    }

    #[test]
    fn proc_figures_of_this_process() {
        let pid = std::process::id();
        let rss = proc_status_kib(pid, "VmRSS").unwrap();
        reset_peak(pid).unwrap();
        let peak = proc_status_kib(pid, "VmHWM").unwrap();
        assert!(rss > 0 && peak > 0);
        // Eight MiB touched show in the peak.
        let v = vec![1u8; 8 << 20];
        let after = proc_status_kib(pid, "VmHWM").unwrap();
        assert!(after >= peak + 4 * 1024, "{peak} KiB then {after} KiB");
        drop(v);
        let before = open_fds(pid).unwrap();
        let files: Vec<_> = (0..16)
            .map(|_| std::fs::File::open("/proc/self/status").unwrap())
            .collect();
        assert!(open_fds(pid).unwrap() >= before + 16);
        drop(files);
        assert!(nofile_limit(pid).unwrap() > 0);
        assert!(proc_status_kib(pid, "NoSuchField").is_err());
    }
}
