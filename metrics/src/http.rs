//! The scrape endpoint: `GET /metrics` over plain HTTP/1.1, on threads of
//! its own, so it runs beside any runtime (tokio, async-std, smol, mio) or
//! none.
//!
//! A listening thread accepts; each connection is answered on a short-lived
//! thread (at most [`MAX_CONNECTIONS`] at once; more are closed unanswered)
//! and closed after one response (what the client still sends is read,
//! bounded, until it closes, so a reset does not cut the response off). A
//! request head is read within
//! [`REQUEST_TIMEOUT`] and [`MAX_HEAD`] bytes, or the connection is
//! answered with an error and closed: a slow or hostile client holds one
//! thread for a few seconds at most, and never the listener.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::Metrics;

/// Most connections answered at once; more are closed at once.
pub const MAX_CONNECTIONS: usize = 8;

/// Longest request head read (request line and headers).
pub const MAX_HEAD: usize = 8 << 10;

/// How long a client has to send its request head, and then to take the
/// response.
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// The content type of the response: the OpenMetrics text format, which
/// Prometheus scrapes.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A running scrape endpoint ([`Metrics::serve`]). It answers until it is
/// [stopped](MetricsServer::stop) or dropped; either returns once the
/// listening socket is closed, so the port refuses connections from then
/// on. (A response being written at that moment still completes on its
/// own thread.)
#[derive(Debug)]
pub struct MetricsServer {
    addr: SocketAddr,
    /// A handle on the listening socket, to wake its accept at a stop.
    listener: TcpListener,
    stopping: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    metrics: Metrics,
    id: u64,
}

impl MetricsServer {
    pub(crate) fn start(metrics: &Metrics, addr: impl ToSocketAddrs) -> io::Result<MetricsServer> {
        let listener = TcpListener::bind(addr)?;
        let addr = listener.local_addr()?;
        let waker = listener.try_clone()?;
        let stopping = Arc::new(AtomicBool::new(false));
        let thread = {
            let stopping = stopping.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name("teleport-metrics".into())
                .spawn(move || accept_loop(listener, &stopping, &metrics))?
        };
        let id = metrics.add_endpoint(addr);
        tracing::info!(target: "teleport::metrics", %addr, "metrics endpoint listening");
        Ok(MetricsServer {
            addr,
            listener: waker,
            stopping,
            thread: Some(thread),
            metrics: metrics.clone(),
            id,
        })
    }

    /// The address it listens on (with the port chosen, if `:0` was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops listening; returns once the listening socket is closed.
    pub fn stop(mut self) {
        self.shut();
    }

    fn shut(&mut self) {
        let Some(thread) = self.thread.take() else {
            return;
        };
        self.stopping.store(true, Ordering::SeqCst);
        // On Linux, shutting a listening socket down wakes the accept
        // blocked on it (and refuses connections from then on); elsewhere
        // a connection of our own does.
        let woken = socket2::SockRef::from(&self.listener)
            .shutdown(Shutdown::Read)
            .is_ok();
        if !woken {
            let _ = TcpStream::connect_timeout(&wake_addr(self.addr), Duration::from_secs(1));
        }
        if thread.join().is_err() {
            tracing::error!(target: "teleport::metrics", addr = %self.addr, "metrics endpoint thread panicked");
        }
        self.metrics.remove_endpoint(self.id);
        tracing::info!(target: "teleport::metrics", addr = %self.addr, "metrics endpoint stopped");
    }
}

impl Drop for MetricsServer {
    fn drop(&mut self) {
        self.shut();
    }
}

/// Where to connect to reach a listener bound at `addr`: its own address,
/// or loopback for a wildcard one.
fn wake_addr(addr: SocketAddr) -> SocketAddr {
    let mut a = addr;
    if a.ip().is_unspecified() {
        match a {
            SocketAddr::V4(_) => a.set_ip(std::net::Ipv4Addr::LOCALHOST.into()),
            SocketAddr::V6(_) => a.set_ip(std::net::Ipv6Addr::LOCALHOST.into()),
        }
    }
    a
}

fn accept_loop(listener: TcpListener, stopping: &AtomicBool, metrics: &Metrics) {
    let busy = Arc::new(AtomicUsize::new(0));
    loop {
        let accepted = listener.accept();
        if stopping.load(Ordering::SeqCst) {
            break; // the listener closes as it drops, here
        }
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of descriptors, say: do not spin on it.
                tracing::warn!(target: "teleport::metrics", error = %e, "metrics endpoint: accept failed");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if busy.fetch_add(1, Ordering::AcqRel) >= MAX_CONNECTIONS {
            busy.fetch_sub(1, Ordering::AcqRel);
            continue; // closed unanswered
        }
        let (b, m) = (busy.clone(), metrics.clone());
        let spawned = std::thread::Builder::new()
            .name("teleport-metrics-conn".into())
            .spawn(move || {
                answer(stream, &m);
                b.fetch_sub(1, Ordering::AcqRel);
            });
        if let Err(e) = spawned {
            busy.fetch_sub(1, Ordering::AcqRel);
            tracing::warn!(target: "teleport::metrics", error = %e, "metrics endpoint: no thread for a connection");
        }
    }
}

/// Answers one request on `stream`, then closes it.
fn answer(mut stream: TcpStream, metrics: &Metrics) {
    let _ = stream.set_write_timeout(Some(REQUEST_TIMEOUT));
    let response = match read_head(&mut stream) {
        Ok(head) => respond(&head, metrics),
        Err(HeadError::TooLarge) => Response::error(431, "Request Header Fields Too Large"),
        Err(HeadError::Io) => return, // gone, or too slow: nobody to answer
    };
    let _ = stream.write_all(&response.bytes());
    let _ = stream.flush();
    let _ = stream.shutdown(Shutdown::Write);
    linger(&mut stream);
}

/// Most bytes read and dropped after the response, waiting for the
/// client's end.
const LINGER_BYTES: usize = 64 << 10;

/// How long the client has to close after the response.
const LINGER_TIME: Duration = Duration::from_secs(1);

/// Reads what the client still sends (a request cut off at the bound, a
/// body), bounded, until it closes: closing a socket with unread input
/// resets the connection, and a reset can reach the client before it has
/// read the response, which it would then lose.
fn linger(stream: &mut TcpStream) {
    if stream.set_read_timeout(Some(LINGER_TIME)).is_err() {
        return;
    }
    let deadline = Instant::now() + LINGER_TIME;
    let mut buf = [0u8; 4096];
    let mut left = LINGER_BYTES;
    while left > 0 && Instant::now() < deadline {
        match stream.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => left = left.saturating_sub(n),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return,
        }
    }
}

enum HeadError {
    TooLarge,
    Io,
}

/// Reads up to the blank line that ends the request head.
fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let deadline = Instant::now() + REQUEST_TIMEOUT;
    let mut head = Vec::with_capacity(512);
    let mut buf = [0u8; 1024];
    loop {
        if let Some(end) = head_end(&head) {
            head.truncate(end);
            return Ok(head);
        }
        if head.len() > MAX_HEAD {
            return Err(HeadError::TooLarge);
        }
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || stream.set_read_timeout(Some(left)).is_err() {
            return Err(HeadError::Io);
        }
        match stream.read(&mut buf) {
            Ok(0) => return Err(HeadError::Io),
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => return Err(HeadError::Io),
        }
    }
}

/// Where the head ends (before `\r\n\r\n`, or a bare `\n\n`), if it has.
fn head_end(buf: &[u8]) -> Option<usize> {
    let crlf = buf.windows(4).position(|w| w == b"\r\n\r\n");
    let lf = buf.windows(2).position(|w| w == b"\n\n");
    match (crlf, lf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

struct Response {
    status: u16,
    reason: &'static str,
    content_type: &'static str,
    extra: &'static str,
    body: String,
    /// HEAD: the headers of a GET, no body.
    head_only: bool,
}

impl Response {
    fn error(status: u16, reason: &'static str) -> Response {
        Response {
            status,
            reason,
            content_type: "text/plain; charset=utf-8",
            extra: "",
            body: format!("{status} {reason}\n"),
            head_only: false,
        }
    }

    fn bytes(&self) -> Vec<u8> {
        let mut out = format!(
            "HTTP/1.1 {} {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{}Connection: close\r\n\r\n",
            self.status,
            self.reason,
            self.content_type,
            self.body.len(),
            self.extra,
        )
        .into_bytes();
        if !self.head_only {
            out.extend_from_slice(self.body.as_bytes());
        }
        out
    }
}

/// The response to a request head: the metrics for `GET /metrics` (and
/// `HEAD`), else an error.
fn respond(head: &[u8], metrics: &Metrics) -> Response {
    let line = head.split(|b| *b == b'\n').next().unwrap_or_default();
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut parts = line.split(|b| *b == b' ').filter(|p| !p.is_empty());
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Response::error(400, "Bad Request");
    };
    if !version.starts_with(b"HTTP/1.") {
        return Response::error(505, "HTTP Version Not Supported");
    }
    let head_only = match method {
        b"GET" => false,
        b"HEAD" => true,
        _ => {
            let mut r = Response::error(405, "Method Not Allowed");
            r.extra = "Allow: GET, HEAD\r\n";
            return r;
        }
    };
    let path = target
        .split(|b| *b == b'?' || *b == b'#')
        .next()
        .unwrap_or_default();
    if path != b"/metrics" {
        let mut r = Response::error(404, "Not Found");
        r.head_only = head_only;
        return r;
    }
    let mut body = String::new();
    if let Err(e) = metrics.encode_to(&mut body) {
        tracing::error!(target: "teleport::metrics", error = %e, "metrics could not be encoded");
        return Response::error(500, "Internal Server Error");
    }
    Response {
        status: 200,
        reason: "OK",
        content_type: CONTENT_TYPE,
        extra: "",
        body,
        head_only,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(head: &str) -> u16 {
        respond(head.as_bytes(), &Metrics::new()).status
    }

    #[test]
    fn requests_are_answered_by_method_and_path() {
        assert_eq!(status("GET /metrics HTTP/1.1\r\nHost: x"), 200);
        assert_eq!(status("GET /metrics?x=1 HTTP/1.0"), 200);
        assert_eq!(status("HEAD /metrics HTTP/1.1"), 200);
        assert_eq!(status("GET / HTTP/1.1"), 404);
        assert_eq!(status("POST /metrics HTTP/1.1"), 405);
        assert_eq!(status("GET /metrics SPDY/3"), 505);
        for bad in [
            "",
            "GET",
            "GET /metrics",
            "GET /metrics HTTP/1.1 extra",
            "\u{0}\u{ff}",
        ] {
            assert_eq!(status(bad), 400, "{bad:?}");
        }
    }

    #[test]
    fn a_head_response_has_no_body() {
        let r = respond(b"HEAD /metrics HTTP/1.1", &Metrics::new());
        let text = String::from_utf8(r.bytes()).unwrap();
        assert!(text.ends_with("\r\n\r\n"), "{text}");
        assert!(text.contains(&format!("Content-Length: {}", r.body.len())));
    }

    #[test]
    fn the_head_ends_at_the_first_blank_line() {
        assert_eq!(head_end(b"GET / HTTP/1.1\r\nA: b\r\n\r\nrest"), Some(20));
        assert_eq!(head_end(b"GET / HTTP/1.1\n\n"), Some(14));
        assert_eq!(head_end(b"GET / HTTP/1.1\r\n"), None);
    }
}
