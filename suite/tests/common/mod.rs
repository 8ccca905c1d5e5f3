//! What the hostile and fault suites share: starting `tp-serve`, raw
//! connections and hand-made frames, a well-behaved client that pulls
//! while a test attacks, memory and descriptor checks, and clients on
//! every runtime.
#![allow(dead_code)] // each test binary uses a different subset

use std::future::Future;
use std::io::{self, Read, Write};
use std::net::TcpStream;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use teleport_core::{FastProto, Packet, Proto, Rerror, XferRegistry};
use teleport_peer::{Network, PeerConfig, Session};
use teleport_suite::{Net, Runtime, Server, ServerOptions};

/// The server binary.
pub const BIN: &str = env!("CARGO_BIN_EXE_tp-serve");

/// Only a guard against hangs: nothing asserts how fast anything was
/// (except where a test says so and why).
pub const GUARD: Duration = Duration::from_secs(20);

/// Starts a server on `rt` over `net` with `config` (TOML).
pub fn start(rt: Runtime, net: Net, config: &str) -> Server {
    Server::start(ServerOptions::new(BIN, rt, net, config))
        .unwrap_or_else(|e| panic!("{rt}/{net}: tp-serve did not start: {e}"))
}

/// The tokio runtime of the test process's own clients.
pub fn rt() -> &'static tokio::runtime::Runtime {
    static RT: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RT.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .expect("tokio runtime")
    })
}

/// Awaits `f` on the test runtime's timer, failing with `what` on a hang.
pub async fn guard<F: Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {GUARD:?} (hang?)"),
    }
}

/// A client config for `net`.
pub fn client_config(net: Net) -> PeerConfig {
    PeerConfig {
        network: match net {
            Net::Tcp => Network::Tcp,
            Net::Unix => Network::Unix,
        },
        ..PeerConfig::default()
    }
}

// ---- raw connections ---------------------------------------------------

/// A plain blocking connection, TCP or unix.
pub enum Raw {
    /// TCP.
    Tcp(TcpStream),
    /// Unix.
    Unix(UnixStream),
}

impl Raw {
    /// Connects to `addr`.
    pub fn connect(net: Net, addr: &str) -> io::Result<Raw> {
        let s = match net {
            Net::Tcp => Raw::Tcp(TcpStream::connect(addr)?),
            Net::Unix => Raw::Unix(UnixStream::connect(addr)?),
        };
        // A write the server never takes must not hang the test.
        s.set_write_timeout(Some(GUARD));
        Ok(s)
    }

    /// Connects, failing the test if it cannot.
    pub fn open(net: Net, addr: &str) -> Raw {
        Raw::connect(net, addr).unwrap_or_else(|e| panic!("connect {addr}: {e}"))
    }

    /// Read timeout.
    pub fn set_read_timeout(&self, d: Option<Duration>) {
        match self {
            Raw::Tcp(s) => s.set_read_timeout(d),
            Raw::Unix(s) => s.set_read_timeout(d),
        }
        .expect("set read timeout");
    }

    /// Write timeout.
    pub fn set_write_timeout(&self, d: Option<Duration>) {
        match self {
            Raw::Tcp(s) => s.set_write_timeout(d),
            Raw::Unix(s) => s.set_write_timeout(d),
        }
        .expect("set write timeout");
    }

    /// Shuts down the write side (the server reads end of input).
    pub fn shutdown_write(&self) {
        match self {
            Raw::Tcp(s) => s.shutdown(std::net::Shutdown::Write),
            Raw::Unix(s) => s.shutdown(std::net::Shutdown::Write),
        }
        .expect("shutdown write");
    }

    /// Closes with a reset (TCP: `SO_LINGER` 0, then close).
    pub fn reset(self) {
        match self {
            Raw::Tcp(s) => {
                socket2::SockRef::from(&s)
                    .set_linger(Some(Duration::ZERO))
                    .expect("SO_LINGER 0");
                drop(s);
            }
            Raw::Unix(s) => drop(s),
        }
    }

    /// Writes `bytes`; an error is fine (the server may cut us off).
    pub fn send(&mut self, bytes: &[u8]) -> &mut Self {
        let _ = self.write_all(bytes);
        self
    }
}

impl Read for Raw {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self {
            Raw::Tcp(s) => s.read(buf),
            Raw::Unix(s) => s.read(buf),
        }
    }
}

impl Write for Raw {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match self {
            Raw::Tcp(s) => s.write(buf),
            Raw::Unix(s) => s.write(buf),
        }
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// How a connection ended when the server cut it off.
#[derive(Debug, PartialEq, Eq)]
pub enum Ending {
    /// End of stream.
    Eof,
    /// A reset (or another read error).
    Reset(io::ErrorKind),
}

/// Reads until the server closes `s`; fails the test if it has not within
/// [`GUARD`]. Returns what the server sent and how it ended.
pub fn read_to_close(s: &mut Raw, what: &str) -> (Vec<u8>, Ending) {
    s.set_read_timeout(Some(GUARD));
    let mut got = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match s.read(&mut buf) {
            Ok(0) => return (got, Ending::Eof),
            Ok(n) => got.extend_from_slice(&buf[..n]),
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                panic!("{what}: the server did not close the connection within {GUARD:?}")
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return (got, Ending::Reset(e.kind())),
        }
    }
}

/// [`read_to_close`], and the server must have sent nothing.
pub fn expect_cut_off(mut s: Raw, what: &str) {
    let (got, _) = read_to_close(&mut s, what);
    assert!(
        got.is_empty(),
        "{what}: the server answered a bad frame with {} bytes",
        got.len()
    );
}

/// A decoder with no practical limit, for what the server sends.
pub fn proto() -> FastProto {
    FastProto::new(u32::MAX as usize, Arc::new(XferRegistry::default()))
}

/// Encodes `p` (filters included) with no size limit of our own.
pub fn encode(p: &Packet) -> Vec<u8> {
    let mut buf = BytesMut::new();
    proto().encode(p, &mut buf).expect("encode");
    buf.to_vec()
}

/// Reads frames off `s` (through `buf`, which keeps what is left over)
/// until one whole packet is there.
pub fn read_packet(s: &mut Raw, buf: &mut BytesMut, what: &str) -> Packet {
    s.set_read_timeout(Some(GUARD));
    let mut p = proto();
    let mut chunk = vec![0u8; 64 << 10];
    loop {
        match p.decode(buf) {
            Ok(Some(packet)) => return packet,
            Ok(None) => {}
            Err(e) => panic!("{what}: the server sent a bad frame: {e}"),
        }
        match s.read(&mut chunk) {
            Ok(0) => panic!("{what}: the connection ended before the reply"),
            Ok(n) => buf.extend_from_slice(&chunk[..n]),
            Err(e) => panic!("{what}: no reply within {GUARD:?}: {e}"),
        }
    }
}

/// The error a reply carries, if any.
pub fn reply_error(p: &Packet) -> Option<Rerror> {
    Rerror::from_meta(&p.meta)
}

/// The payload of a frame (SPEC §2): seq, ptype, uri, meta, codec, body,
/// with every length as given.
pub fn payload(seq: u64, ptype: u8, uri: &[u8], meta: &[u8], codec: u8, body: &[u8]) -> Vec<u8> {
    let mut v = Vec::with_capacity(18 + uri.len() + meta.len() + body.len());
    v.extend_from_slice(&seq.to_be_bytes());
    v.push(ptype);
    v.extend_from_slice(&(uri.len() as u32).to_be_bytes());
    v.extend_from_slice(uri);
    v.extend_from_slice(&(meta.len() as u32).to_be_bytes());
    v.extend_from_slice(meta);
    v.push(codec);
    v.extend_from_slice(body);
    v
}

/// A whole frame around `payload`, with these filter ids (the payload is
/// taken as already filtered).
pub fn frame(xfer: &[u8], payload: &[u8]) -> Vec<u8> {
    let size = 6 + xfer.len() + payload.len();
    let mut v = Vec::with_capacity(size);
    v.extend_from_slice(&(size as u32).to_be_bytes());
    v.push(b'f');
    v.push(xfer.len() as u8);
    v.extend_from_slice(xfer);
    v.extend_from_slice(payload);
    v
}

/// Packet type bytes.
pub const PULL: u8 = 1;
/// A reply.
pub const REPLY: u8 = 2;
/// A push.
pub const PUSH: u8 = 3;
/// The string codec.
pub const STRING: u8 = b's';
/// The JSON codec.
pub const JSON: u8 = b'j';
/// The protobuf codec.
pub const PROTOBUF: u8 = b'p';

/// A string-codec pull frame.
pub fn pull(seq: u64, uri: &str, body: &[u8]) -> Vec<u8> {
    frame(&[], &payload(seq, PULL, uri.as_bytes(), b"", STRING, body))
}

/// A pull to `/echo/string` of exactly `size` bytes.
pub fn pull_of_size(seq: u64, size: usize) -> Vec<u8> {
    let base = pull(seq, "/echo/string", b"").len();
    let f = pull(seq, "/echo/string", &vec![b'x'; size - base]);
    assert_eq!(f.len(), size);
    f
}

// ---- the well-behaved client -------------------------------------------

/// Pulls the well-behaved client makes at least, however fast an attack
/// is over.
pub const GOOD_MIN_PULLS: usize = 10;

/// A teleport client (tokio, in this process) that pulls `/echo/string`
/// over its own connection the whole time an attack runs and records every
/// failure. Each pull must come back, right, within its 10 s timeout.
pub struct Good {
    label: String,
    stop: Arc<AtomicBool>,
    task: tokio::task::JoinHandle<(usize, Vec<String>)>,
    _peer: teleport_tokio::Peer,
}

impl Good {
    /// Dials `addr`, pulls once (that must work), then keeps pulling in the
    /// background.
    pub fn start(label: &str, net: Net, addr: &str) -> Good {
        let peer = teleport_tokio::Peer::new(PeerConfig {
            default_pull_timeout: Some(Duration::from_secs(10)),
            ..client_config(net)
        })
        .expect("client peer");
        let session = rt()
            .block_on(guard(label, peer.dial(addr)))
            .unwrap_or_else(|e| panic!("{label}: the good client could not dial: {e}"));
        let first = rt().block_on(guard(
            label,
            session.pull::<_, String>("/echo/string", "first"),
        ));
        assert_eq!(
            first
                .unwrap_or_else(|e| panic!("{label}: the good client's first pull: {e}"))
                .value,
            "first"
        );
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        let task = rt().spawn(async move {
            let (mut ok, mut failed) = (1usize, Vec::new());
            let mut i = 0u64;
            while !stopped.load(Ordering::SeqCst) || ok + failed.len() < GOOD_MIN_PULLS {
                i += 1;
                let arg = format!("good {i}");
                match session.pull::<_, String>("/echo/string", &arg).await {
                    Ok(r) if r.value == arg => ok += 1,
                    Ok(r) => failed.push(format!("pull {i}: wrong reply {:?}", r.value)),
                    Err(e) => failed.push(format!("pull {i}: {e}")),
                }
                // The client's pace, not a wait for anything: a pull every
                // couple of milliseconds leaves the CPU to the attack.
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            session.close().await;
            (ok, failed)
        });
        Good {
            label: label.to_string(),
            stop,
            task,
            _peer: peer,
        }
    }

    /// Stops the client; it must have seen no failure.
    pub fn finish(self) {
        self.stop.store(true, Ordering::SeqCst);
        let label = self.label.clone();
        let (ok, failed) = rt()
            .block_on(guard(&label, self.task))
            .expect("good client task");
        assert!(
            failed.is_empty(),
            "{label}: the well-behaved client saw {} failures (of {}): {:?}",
            failed.len(),
            ok + failed.len(),
            &failed[..failed.len().min(5)]
        );
        assert!(ok >= GOOD_MIN_PULLS, "{label}: only {ok} good pulls");
    }
}

/// A fresh client dials and pulls once: the server is alive and answers.
pub fn still_serves(label: &str, net: Net, addr: &str) {
    let peer = teleport_tokio::Peer::new(client_config(net)).expect("client peer");
    let r = rt().block_on(guard(label, async {
        let s = peer.dial(addr).await?;
        let r = s.pull::<_, String>("/echo/string", "still there").await;
        s.close().await;
        r
    }));
    assert_eq!(
        r.unwrap_or_else(|e| panic!("{label}: the server no longer answers: {e}"))
            .value,
        "still there"
    );
}

// ---- memory and descriptors ---------------------------------------------

/// KiB in a MiB.
pub const MIB: u64 = 1 << 20;

/// The server's resident size now (the baseline of an attack), with its
/// peak reset to it.
pub fn mem_baseline(server: &Server) -> u64 {
    let b = server.rss_kib().expect("VmRSS");
    server.reset_peak().expect("reset VmHWM");
    b
}

/// The server's peak resident size since [`mem_baseline`] must stay under
/// `baseline + bound` (bytes); `why` states the bound. Prints the figures.
pub fn assert_mem(server: &Server, label: &str, baseline_kib: u64, bound: u64, why: &str) {
    let peak = server.peak_kib().expect("VmHWM");
    let bound_kib = bound / 1024;
    println!(
        "MEM {label}: baseline {baseline_kib} KiB, peak {peak} KiB (+{} KiB), bound +{bound_kib} KiB = {why}",
        peak.saturating_sub(baseline_kib)
    );
    assert!(
        peak <= baseline_kib + bound_kib,
        "{label}: the server's peak memory grew by {} KiB, over the bound of {bound_kib} KiB ({why})",
        peak.saturating_sub(baseline_kib)
    );
}

/// Waits until the server holds at most `want` descriptors; fails the
/// test (saying how many) if that does not happen within [`GUARD`].
pub fn await_fds_at_most(server: &Server, want: usize, label: &str) {
    let deadline = Instant::now() + GUARD;
    loop {
        let n = server.open_fds().expect("open fds");
        if n <= want {
            return;
        }
        if Instant::now() > deadline {
            panic!("{label}: the server still holds {n} descriptors, {want} before the attack");
        }
        // A condition polled, not a timed wait.
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits until the server holds at least `want` descriptors.
pub fn await_fds_at_least(server: &Server, want: usize, label: &str) {
    let deadline = Instant::now() + GUARD;
    loop {
        let n = server.open_fds().expect("open fds");
        if n >= want {
            return;
        }
        if Instant::now() > deadline {
            panic!("{label}: the server holds only {n} descriptors, {want} expected");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Runs `f` on `n` threads, each given its index; returns their results.
pub fn on_threads<T: Send + 'static>(
    n: usize,
    f: impl Fn(usize) -> T + Send + Sync + 'static,
) -> Vec<T> {
    let f = Arc::new(f);
    let threads: Vec<_> = (0..n)
        .map(|i| {
            let f = f.clone();
            std::thread::spawn(move || f(i))
        })
        .collect();
    threads
        .into_iter()
        .map(|t| t.join().unwrap_or_else(|p| std::panic::resume_unwind(p)))
        .collect()
}

// ---- the server's probe ----------------------------------------------------

/// The counters `tp-serve` answers `/probe` with.
#[derive(Debug, Clone, Copy, Default, serde::Deserialize)]
pub struct Probe {
    /// Pulls its sessions read (`/probe` aside).
    pub pulls_read: u64,
    /// `/slow` handlers started.
    pub slow_started: u64,
    /// `/slow` handlers finished.
    pub slow_done: u64,
    /// Pushes to `/sink` taken.
    pub pushes: u64,
    /// Sessions accepted.
    pub accepted: u64,
    /// Sessions closed.
    pub closed: u64,
}

/// Asks the server's probe over `s`.
pub async fn probe(s: &Session) -> Result<Probe, Rerror> {
    s.pull::<_, serde_json::Value>("/probe", &())
        .await
        .and_then(|r| serde_json::from_value(r.value).map_err(|e| Rerror::internal(e.to_string())))
}

// ---- clients on every runtime --------------------------------------------

/// A client peer on one runtime, and the executor its code runs on.
pub enum Client {
    /// tokio (the shared test runtime).
    Tokio(teleport_tokio::Peer),
    /// async-std or smol.
    AsyncIo(Runtime, teleport_async_std::Peer),
    /// mio: client code runs on a plain `block_on`.
    Mio(teleport_mio::Peer),
}

impl Client {
    /// A client on `rt` with this config.
    pub fn new(rt: Runtime, cfg: PeerConfig) -> Client {
        match rt {
            Runtime::Tokio => Client::Tokio(teleport_tokio::Peer::new(cfg).expect("client")),
            Runtime::AsyncStd => Client::AsyncIo(
                rt,
                teleport_async_std::Peer::new(cfg, teleport_async_std::Executor::AsyncStd)
                    .expect("client"),
            ),
            Runtime::Smol => Client::AsyncIo(
                rt,
                teleport_async_std::Peer::new(cfg, teleport_async_std::Executor::Smol)
                    .expect("client"),
            ),
            Runtime::Mio => Client::Mio(teleport_mio::Peer::new(cfg).expect("client")),
        }
    }

    /// Dials `addr`.
    pub fn dial(&self, addr: &str) -> Result<Session, Rerror> {
        match self {
            Client::Tokio(p) => rt().block_on(p.dial(addr)).map_err(Rerror::from),
            Client::AsyncIo(_, p) => self.block_on(p.dial(addr)).map_err(Rerror::from),
            Client::Mio(p) => p
                .dial(addr)
                .map(teleport_mio::Session::into_inner)
                .map_err(Rerror::from),
        }
    }

    /// Runs client code to completion on this client's runtime.
    pub fn block_on<F: Future>(&self, f: F) -> F::Output {
        match self {
            Client::Tokio(_) => rt().block_on(f),
            Client::AsyncIo(Runtime::Smol, _) => smol::block_on(f),
            Client::AsyncIo(_, _) => async_std::task::block_on(f),
            Client::Mio(_) => futures_executor::block_on(f),
        }
    }
}

/// Awaits `f` with a timer that works on any executor (async-io's).
pub async fn guard_any<F: Future>(what: &str, f: F) -> F::Output {
    use futures_util::future::{select, Either};
    let f = std::pin::pin!(f);
    let timer = std::pin::pin!(async_io::Timer::after(GUARD));
    match select(f, timer).await {
        Either::Left((v, _)) => v,
        Either::Right(_) => panic!("{what}: did not finish within {GUARD:?} (hang?)"),
    }
}

/// Sleeps on async-io's timer (any executor).
pub async fn pause(d: Duration) {
    async_io::Timer::after(d).await;
}
