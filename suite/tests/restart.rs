//! Graceful restart with real processes: `tp-serve --signals` is sent
//! SIGHUP while clients pull without pause; it starts a successor (the same
//! binary) with its listening socket, the successor says it is ready, the
//! old process tells its clients to move, answers what it accepted and
//! exits. Clients see no failed pull, and a prober that dials every few
//! milliseconds is never refused.
//!
//! Also: a pull cut at the shutdown deadline gets a clear error; SIGTERM
//! with pulls in flight answers every one before the process exits; a
//! socket passed in as systemd passes it (`LISTEN_FDS`) is served.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use teleport_core::Rerror;
use teleport_peer::{Network, PeerConfig};

const BIN: &str = env!("CARGO_BIN_EXE_tp-serve");

/// Only a guard against hangs.
const GUARD: Duration = Duration::from_secs(30);

/// Restarts in a row per runtime.
const RESTARTS: usize = 5;

/// Clients pulling at once.
const CLIENTS: usize = 100;

/// A `tp-serve` process and its successors: the lines they all print on
/// the stdout they share.
struct Family {
    first: Child,
    lines: mpsc::Receiver<String>,
    label: String,
    /// Every process seen start: killed if the test fails.
    pids: std::sync::Mutex<Vec<i32>>,
}

impl Family {
    fn start(label: &str, args: &[&str]) -> Family {
        let mut first = Command::new(BIN)
            .args(args)
            .arg("--signals")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start tp-serve");
        let out = first.stdout.take().expect("stdout");
        let err = first.stderr.take().expect("stderr");
        let (tx, lines) = mpsc::channel();
        let tx2 = tx.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // The logs (warnings and errors), as `LOG ...` lines; shown too.
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines() {
                let Ok(line) = line else { break };
                eprintln!("{line}");
                if tx2.send(format!("LOG {line}")).is_err() {
                    break;
                }
            }
        });
        Family {
            first,
            lines,
            label: label.to_string(),
            pids: std::sync::Mutex::new(Vec::new()),
        }
    }

    /// The next line that starts with `prefix` (others are skipped).
    fn expect(&self, prefix: &str) -> String {
        let until = Instant::now() + GUARD;
        loop {
            let left = until.saturating_duration_since(Instant::now());
            match self.lines.recv_timeout(left) {
                Ok(l) if l.starts_with(prefix) => return l,
                Ok(l) if l.starts_with("ERROR") => panic!("{}: {l}", self.label),
                Ok(_) => {}
                Err(e) => panic!("{}: no `{prefix}` line: {e}", self.label),
            }
        }
    }

    /// The address and pid of the process that just started.
    fn started(&self) -> (String, i32) {
        let addr = self.expect("LISTENING ")["LISTENING ".len()..].to_string();
        let pid = self.expect("PID ")["PID ".len()..].parse().expect("pid");
        self.pids.lock().unwrap().push(pid);
        (addr, pid)
    }

    /// The `STOPPED` line of the process that stops next.
    fn stopped(&self) -> String {
        self.expect("STOPPED ")
    }
}

impl Family {
    /// SIGTERM to `pid`: it stops with no successor and exits.
    fn terminate(&self, pid: i32) {
        signal(pid, rustix::process::Signal::TERM);
        assert_eq!(
            self.stopped(),
            "STOPPED signal=Terminate successor=-",
            "{}",
            self.label
        );
        await_exit(pid, &self.label);
    }
}

/// Waits until the server's `/probe` says `n` `/slow` handlers started.
fn await_slow_started(
    rt: &tokio::runtime::Runtime,
    s: &teleport_tokio::Session,
    n: u64,
    label: &str,
) {
    let until = Instant::now() + GUARD;
    loop {
        let p: serde_json::Value = rt.block_on(s.pull("/probe", &())).expect("probe").value;
        if p["slow_started"] == n {
            return;
        }
        assert!(
            Instant::now() < until,
            "{label}: the slow handlers never ran"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

impl Drop for Family {
    fn drop(&mut self) {
        // A failed test leaves no server behind (a successor is no child of
        // this process: the first one is killed and reaped below).
        for pid in self.pids.lock().unwrap_or_else(|e| e.into_inner()).iter() {
            if let Some(pid) = rustix::process::Pid::from_raw(*pid) {
                let _ = rustix::process::kill_process(pid, rustix::process::Signal::KILL);
            }
        }
        let _ = self.first.kill();
        let _ = self.first.wait();
    }
}

fn signal(pid: i32, sig: rustix::process::Signal) {
    let pid = rustix::process::Pid::from_raw(pid).expect("a pid");
    rustix::process::kill_process(pid, sig).expect("kill");
}

/// Waits until `pid` is gone (an exited successor may stay a zombie of
/// init for a moment: gone or a zombie both count).
fn await_exit(pid: i32, label: &str) {
    let until = Instant::now() + GUARD;
    loop {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"));
        match stat {
            Err(_) => return,
            Ok(s)
                if s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z')) =>
            {
                return
            }
            Ok(_) => {}
        }
        assert!(Instant::now() < until, "{label}: pid {pid} did not exit");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn client_config(net: Network) -> PeerConfig {
    PeerConfig {
        network: net,
        // Redials are what moving uses; a few, for a successor slow to
        // come up (it is already listening here: one suffices).
        redial_times: 5,
        redial_interval: Duration::from_millis(20),
        ..PeerConfig::default()
    }
}

/// Clients pulling without pause, and what they saw.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicU64>,
    failed: Arc<AtomicU64>,
    errors: Arc<std::sync::Mutex<Vec<String>>>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(rt: &tokio::runtime::Runtime, net: Network, addr: &str, n: usize) -> Load {
        let client = teleport_tokio::Peer::new(client_config(net)).expect("client");
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicU64::new(0));
        let failed = Arc::new(AtomicU64::new(0));
        let errors = Arc::new(std::sync::Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for i in 0..n {
            let (client, addr) = (client.clone(), addr.to_string());
            let (stop, ok, failed, errors) =
                (stop.clone(), ok.clone(), failed.clone(), errors.clone());
            tasks.push(rt.spawn(async move {
                let s = client.dial(&addr).await.expect("dial");
                let mut k = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    let body = format!("{i}/{k}");
                    let call = s.call("/echo/string").timeout(GUARD);
                    match call.pull::<_, String>(&body).await {
                        Ok(r) if r.value == body => {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        other => {
                            failed.fetch_add(1, Ordering::Relaxed);
                            errors
                                .lock()
                                .unwrap()
                                .push(format!("client {i} pull {k}: {other:?}"));
                        }
                    }
                    k += 1;
                }
            }));
        }
        Load {
            stop,
            ok,
            failed,
            errors,
            tasks,
        }
    }

    /// Waits until `more` further pulls succeeded.
    fn progress(&self, more: u64, label: &str) {
        let want = self.ok.load(Ordering::Relaxed) + more;
        let until = Instant::now() + GUARD;
        while self.ok.load(Ordering::Relaxed) < want {
            assert!(
                Instant::now() < until,
                "{label}: the clients stopped making progress"
            );
            assert_eq!(
                self.failed.load(Ordering::Relaxed),
                0,
                "{label}: {:?}",
                self.errors.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(2));
        }
    }

    fn finish(self, rt: &tokio::runtime::Runtime, label: &str) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            rt.block_on(t).expect("client task");
        }
        assert_eq!(
            self.failed.load(Ordering::Relaxed),
            0,
            "{label}: failed pulls: {:?}",
            self.errors.lock().unwrap()
        );
        self.ok.load(Ordering::Relaxed)
    }
}

/// Dials every 5 ms until stopped; counts refusals (and other failures).
struct Prober {
    stop: Arc<AtomicBool>,
    thread: std::thread::JoinHandle<(u64, u64, Vec<String>)>,
}

impl Prober {
    fn start(net: Network, addr: &str) -> Prober {
        let stop = Arc::new(AtomicBool::new(false));
        let addr = addr.to_string();
        let s = stop.clone();
        let thread = std::thread::spawn(move || {
            let (mut dials, mut refused, mut other) = (0, 0, Vec::new());
            while !s.load(Ordering::Relaxed) {
                let r = match net {
                    Network::Unix => std::os::unix::net::UnixStream::connect(&addr).map(drop),
                    Network::Unixpacket => {
                        socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None)
                            .and_then(|sock| sock.connect(&socket2::SockAddr::unix(&addr)?))
                    }
                    _ => std::net::TcpStream::connect(&addr).map(drop),
                };
                dials += 1;
                match r {
                    Ok(()) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => refused += 1,
                    Err(e) => other.push(e.to_string()),
                }
                std::thread::sleep(Duration::from_millis(5));
            }
            (dials, refused, other)
        });
        Prober { stop, thread }
    }

    fn finish(self, label: &str) -> u64 {
        self.stop.store(true, Ordering::Relaxed);
        let (dials, refused, other) = self.thread.join().expect("prober");
        assert_eq!(refused, 0, "{label}: {refused} of {dials} dials refused");
        assert!(other.is_empty(), "{label}: dials failed: {other:?}");
        dials
    }
}

fn tokio_rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio")
}

fn listen_args(net: Network, label: &str) -> (Vec<String>, Option<std::path::PathBuf>) {
    match net {
        Network::Unix | Network::Unixpacket => {
            let path = std::env::temp_dir().join(format!(
                "tp-restart-{}-{}.sock",
                std::process::id(),
                label.replace('/', "-")
            ));
            let _ = std::fs::remove_file(&path);
            let n = if net == Network::Unix {
                "unix"
            } else {
                "unixpacket"
            };
            (
                vec![
                    "--network".into(),
                    n.into(),
                    "--listen".into(),
                    path.display().to_string(),
                ],
                Some(path),
            )
        }
        _ => (vec!["--listen".into(), "127.0.0.1:0".into()], None),
    }
}

/// `restarts` SIGHUPs in a row under `clients` pulling clients and a
/// prober; then SIGTERM. Every pull answered, no dial refused.
fn restart_under_load(runtime: &str, net: Network, clients: usize, restarts: usize) {
    let label = format!("{runtime}/{net:?}");
    let (mut args, path) = listen_args(net, &label);
    args.extend(["--runtime".into(), runtime.into()]);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let family = Family::start(&label, &args);
    let (addr, mut pid) = family.started();
    let rt = tokio_rt();
    let load = Load::start(&rt, net, &addr, clients);
    let prober = Prober::start(net, &addr);
    load.progress(clients as u64 * 5, &label);
    for round in 1..=restarts {
        let label = format!("{label}, restart {round}");
        signal(pid, rustix::process::Signal::HUP);
        let (addr2, next) = family.started();
        assert_eq!(
            addr2, addr,
            "{label}: the successor listens where its predecessor did"
        );
        assert_ne!(next, pid, "{label}");
        let stopped = family.stopped();
        assert_eq!(
            stopped,
            format!("STOPPED signal=Hangup successor={next}"),
            "{label}"
        );
        await_exit(pid, &label);
        pid = next;
        // The new process serves every client.
        load.progress(clients as u64 * 5, &label);
    }
    let dials = prober.finish(&label);
    let ok = load.finish(&rt, &label);
    family.terminate(pid);
    eprintln!(
        "{label}: {restarts} restarts, {ok} pulls answered, 0 failed; {dials} dials, 0 refused"
    );
    if let Some(p) = path {
        let _ = std::fs::remove_file(p);
    }
}

#[test]
fn restarts_under_load_lose_no_pull_and_refuse_no_dial_on_every_runtime() {
    for runtime in ["tokio", "async-std", "smol", "mio"] {
        restart_under_load(runtime, Network::Tcp, CLIENTS, RESTARTS);
    }
}

#[test]
fn restarts_hand_over_unix_and_unixpacket_listeners() {
    for runtime in ["tokio", "async-std", "smol", "mio"] {
        for net in [Network::Unix, Network::Unixpacket] {
            restart_under_load(runtime, net, 10, 2);
        }
    }
}

/// A pull of `/slow` longer than the shutdown timeout, cut by a restart:
/// its caller gets an error that says so; the successor serves on.
#[test]
fn a_pull_cut_at_the_restart_deadline_gets_a_clear_error() {
    for runtime in ["tokio", "async-std", "smol", "mio"] {
        let label = format!("{runtime}: deadline");
        let family = Family::start(
            &label,
            &[
                "--runtime",
                runtime,
                "--listen",
                "127.0.0.1:0",
                "--shutdown-timeout",
                "300ms",
            ],
        );
        let (addr, pid) = family.started();
        let rt = tokio_rt();
        let client = teleport_tokio::Peer::new(client_config(Network::Tcp)).expect("client");
        let s = rt.block_on(client.dial(&addr)).expect("dial");
        let slow = {
            let s = s.clone();
            rt.spawn(async move {
                s.call("/slow?ms=20000")
                    .timeout(GUARD)
                    .pull::<_, String>(&"x")
                    .await
            })
        };
        // The handler runs (the probe answers on the I/O side).
        await_slow_started(&rt, &s, 1, &label);
        signal(pid, rustix::process::Signal::HUP);
        let (_, next) = family.started();
        let r = rt.block_on(slow).expect("slow task");
        let e = r.expect_err("the cut pull fails");
        assert_eq!(e.code, Rerror::CODE_CONN_CLOSED, "{label}: {e}");
        assert!(
            e.detail.contains("before its handler finished"),
            "{label}: the error says the pull was cut: {e}"
        );
        let stopped = family.stopped();
        assert_eq!(stopped, format!("STOPPED signal=Hangup successor={next}"));
        // Nothing hangs: the same session carries on with the successor.
        let r = rt.block_on(s.pull::<_, String>("/echo/string", "after"));
        assert_eq!(r.expect("pull after the restart").value, "after", "{label}");
        family.terminate(next);
    }
}

/// SIGTERM with pulls in flight: each is answered, then the process exits.
#[test]
fn sigterm_answers_every_pull_in_flight_before_the_process_exits() {
    for runtime in ["tokio", "async-std", "smol", "mio"] {
        let label = format!("{runtime}: sigterm");
        let family = Family::start(&label, &["--runtime", runtime, "--listen", "127.0.0.1:0"]);
        let (addr, pid) = family.started();
        let rt = tokio_rt();
        let client = teleport_tokio::Peer::new(PeerConfig::default()).expect("client");
        let s = rt.block_on(client.dial(&addr)).expect("dial");
        let calls: Vec<_> = (0..20)
            .map(|i| {
                let s = s.clone();
                rt.spawn(async move {
                    s.call(format!("/slow?ms={}", 200 + i * 10).as_str())
                        .timeout(GUARD)
                        .pull::<_, String>(&"x")
                        .await
                })
            })
            .collect();
        await_slow_started(&rt, &s, 20, &label);
        signal(pid, rustix::process::Signal::TERM);
        for (i, c) in calls.into_iter().enumerate() {
            let r = rt.block_on(c).expect("task");
            let ms = 200 + i * 10;
            assert_eq!(
                r.unwrap_or_else(|e| panic!("{label}: pull {i}: {e}")).value,
                format!("slept {ms} ms, 3 bytes"),
                "{label}"
            );
        }
        assert_eq!(family.stopped(), "STOPPED signal=Terminate successor=-");
        await_exit(pid, &label);
    }
}

/// A successor that cannot start, or ends before it is ready: the old
/// process says so and serves on; SIGTERM still stops it.
#[test]
fn a_failed_restart_leaves_the_old_process_serving() {
    for successor in ["/nonexistent/tp-serve", "/bin/false"] {
        let label = format!("successor {successor}");
        let family = Family::start(
            &label,
            &[
                "--runtime",
                "tokio",
                "--listen",
                "127.0.0.1:0",
                "--successor",
                successor,
            ],
        );
        let (addr, pid) = family.started();
        let rt = tokio_rt();
        let client = teleport_tokio::Peer::new(client_config(Network::Tcp)).expect("client");
        let s = rt.block_on(client.dial(&addr)).expect("dial");
        let before = rt.block_on(s.pull::<_, String>("/echo/string", "before"));
        assert_eq!(before.expect("pull").value, "before");
        signal(pid, rustix::process::Signal::HUP);
        // The failure is logged; the process serves on, over the same
        // connection (no notice was sent).
        while !family.expect("LOG ").contains("restart failed") {}
        let r = rt.block_on(s.pull::<_, String>("/echo/string", "after"));
        assert_eq!(
            r.expect("pull after the failed restart").value,
            "after",
            "{label}"
        );
        let p: serde_json::Value = rt.block_on(s.pull("/probe", &())).expect("probe").value;
        assert_eq!(p["accepted"], 1, "{label}: the client did not move");
        family.terminate(pid);
    }
}

/// A socket passed as systemd's socket activation passes it (descriptor
/// 3, `LISTEN_FDS=1`) is served, and readiness is notified as systemd's
/// `Type=notify` expects (`READY=1` on `NOTIFY_SOCKET`).
#[test]
fn a_socket_passed_as_systemd_does_is_served() {
    use command_fds::{CommandFdExt, FdMapping};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = listener.local_addr().expect("addr").to_string();
    for runtime in ["tokio", "mio"] {
        let notify_path =
            std::env::temp_dir().join(format!("tp-notify-{}-{runtime}.sock", std::process::id()));
        let _ = std::fs::remove_file(&notify_path);
        let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).expect("notify socket");
        notify.set_read_timeout(Some(GUARD)).expect("timeout");
        let l = listener.try_clone().expect("dup");
        let mut cmd = Command::new(BIN);
        cmd.args(["--runtime", runtime, "--listen", &addr, "--signals"])
            .env("NOTIFY_SOCKET", &notify_path)
            .env("LISTEN_FDS", "1")
            .env("LISTEN_FDNAMES", "web")
            .env_remove("LISTEN_PID")
            .stdin(Stdio::null())
            .stdout(Stdio::piped());
        cmd.fd_mappings(vec![FdMapping {
            parent_fd: std::os::fd::OwnedFd::from(l),
            child_fd: 3,
        }])
        .expect("mapping");
        let mut child = cmd.spawn().expect("spawn");
        drop(cmd);
        let out = BufReader::new(child.stdout.take().expect("stdout"));
        let mut lines = out.lines();
        let listening = lines.next().expect("a line").expect("line");
        assert_eq!(listening, format!("LISTENING {addr}"), "{runtime}");
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("a readiness notice");
        let msg = String::from_utf8_lossy(&buf[..n]).into_owned();
        assert!(msg.lines().any(|l| l == "READY=1"), "{runtime}: {msg:?}");
        assert!(
            !msg.contains("MAINPID="),
            "{runtime}: not a successor: {msg:?}"
        );
        let _ = std::fs::remove_file(&notify_path);
        let rt = tokio_rt();
        let client = teleport_tokio::Peer::new(PeerConfig::default()).expect("client");
        let s = rt.block_on(client.dial(&addr)).expect("dial");
        let r = rt.block_on(s.pull::<_, String>("/echo/string", "activated"));
        assert_eq!(r.expect("pull").value, "activated", "{runtime}");
        let pid = child.id() as i32;
        signal(pid, rustix::process::Signal::TERM);
        let status = child.wait().expect("wait");
        assert!(status.success(), "{runtime}: {status}");
    }
}

/// The same with a `unixpacket` socket (systemd's
/// `ListenSequentialPacket=`), found by its path: the stale-file check a
/// fresh bind makes would refuse a path a live socket holds.
#[test]
fn a_seqpacket_socket_passed_as_systemd_does_is_served() {
    use command_fds::{CommandFdExt, FdMapping};
    let path = std::env::temp_dir().join(format!("tp-activated-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&path);
    let sock = socket2::Socket::new(socket2::Domain::UNIX, socket2::Type::SEQPACKET, None)
        .expect("socket");
    sock.bind(&socket2::SockAddr::unix(&path).expect("path"))
        .expect("bind");
    sock.listen(16).expect("listen");
    let shown = path.display().to_string();
    for runtime in ["tokio", "async-std", "mio"] {
        let mut cmd = Command::new(BIN);
        cmd.args([
            "--runtime",
            runtime,
            "--network",
            "unixpacket",
            "--listen",
            &shown,
            "--signals",
        ])
        .env("LISTEN_FDS", "1")
        .env_remove("LISTEN_FDNAMES")
        .env_remove("LISTEN_PID")
        .stdin(Stdio::null())
        .stdout(Stdio::piped());
        cmd.fd_mappings(vec![FdMapping {
            parent_fd: std::os::fd::OwnedFd::from(sock.try_clone().expect("dup")),
            child_fd: 3,
        }])
        .expect("mapping");
        let mut child = cmd.spawn().expect("spawn");
        drop(cmd);
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let listening = lines.next().expect("a line").expect("line");
        assert_eq!(listening, format!("LISTENING {shown}"), "{runtime}");
        let rt = tokio_rt();
        let client = teleport_tokio::Peer::new(PeerConfig {
            network: Network::Unixpacket,
            ..PeerConfig::default()
        })
        .expect("client");
        let s = rt.block_on(client.dial(&shown)).expect("dial");
        let r = rt.block_on(s.pull::<_, String>("/echo/string", "activated"));
        assert_eq!(r.expect("pull").value, "activated", "{runtime}");
        signal(child.id() as i32, rustix::process::Signal::TERM);
        let status = child.wait().expect("wait");
        assert!(status.success(), "{runtime}: {status}");
    }
    let _ = std::fs::remove_file(&path);
}
