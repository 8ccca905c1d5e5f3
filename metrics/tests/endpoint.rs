//! The scrape endpoint: gone when its handle is dropped or stopped, and
//! answering bad requests without going down. (That it is off unless
//! `serve` is called is `off.rs`, a process of its own.)

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;

use teleport_metrics::{Metrics, CONTENT_TYPE, MAX_HEAD};

use common::{http, scrape};

#[test]
fn dropping_the_server_frees_its_port() {
    let m = Metrics::new();
    let server = m.serve("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    assert_eq!(addr.ip(), std::net::Ipv4Addr::LOCALHOST);
    assert_ne!(addr.port(), 0);
    let s = scrape(addr);
    assert_eq!(s.value("teleport_redials_total", &[]), 0.0);
    drop(server);
    let e = TcpStream::connect(addr).expect_err("nothing listens after the drop");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    assert!(m.endpoints().is_empty());
}

#[test]
fn stopping_the_server_frees_its_port_and_it_can_serve_again() {
    let m = Metrics::new();
    let server = m.serve("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    // A client connected and silent does not hold the stop up.
    let idle = TcpStream::connect(addr).unwrap();
    server.stop();
    let e = TcpStream::connect(addr).expect_err("nothing listens after stop");
    assert_eq!(e.kind(), std::io::ErrorKind::ConnectionRefused, "{e}");
    drop(idle);
    // The same metrics, served again (on the same port, now free).
    let again = m.serve(addr).unwrap();
    assert_eq!(again.local_addr(), addr);
    scrape(addr);
}

#[test]
fn the_endpoint_answers_bad_requests_and_keeps_serving() {
    let m = Metrics::new();
    let server = m.serve("127.0.0.1:0").unwrap();
    let addr = server.local_addr();
    let cases = [
        ("GET /nope HTTP/1.1\r\n\r\n", 404),
        ("POST /metrics HTTP/1.1\r\nContent-Length: 0\r\n\r\n", 405),
        ("hello\r\n\r\n", 400),
        ("GET /metrics SPDY/3\r\n\r\n", 505),
        ("\u{0}\u{1}\u{2} \u{ff}\r\n\r\n", 400),
    ];
    for (req, want) in cases {
        let (status, head, _) = http(addr, req);
        assert_eq!(status, want, "{req:?}: {head}");
    }
    let (status, head, body) = http(addr, "HEAD /metrics HTTP/1.0\r\n\r\n");
    assert_eq!(status, 200);
    assert!(head.contains(CONTENT_TYPE), "{head}");
    assert!(body.is_empty());
    // A head that never ends is cut off at the bound, answered 431.
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(common::GUARD)).unwrap();
    let junk = vec![b'a'; MAX_HEAD + 2048];
    let _ = s.write_all(b"GET /metrics HTTP/1.1\r\nX: ");
    let _ = s.write_all(&junk); // may fail once the server has answered
    let mut resp = Vec::new();
    let _ = s.read_to_end(&mut resp);
    assert!(
        resp.starts_with(b"HTTP/1.1 431 "),
        "{:?}",
        String::from_utf8_lossy(&resp[..resp.len().min(80)])
    );
    // A client that goes away mid-request does no harm either.
    drop(TcpStream::connect(addr).unwrap());
    // Still serving.
    let s = scrape(addr);
    assert_eq!(s.value("teleport_incoming_pull_bytes", &[]), 0.0);
}
