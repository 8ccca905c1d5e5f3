//! Helpers of the integration tests: a scrape over a plain `TcpStream`
//! and a parser of the text format's samples.
#![allow(dead_code)] // each test binary uses a different subset

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// How long anything may take before a test declares a hang. Only a guard:
/// no test asserts how fast something happened.
pub const GUARD: Duration = Duration::from_secs(10);

/// Awaits `f`, failing the test if it has not finished within [`GUARD`].
pub async fn guard<F: std::future::Future>(what: &str, f: F) -> F::Output {
    match tokio::time::timeout(GUARD, f).await {
        Ok(v) => v,
        Err(_) => panic!("{what}: did not finish within {GUARD:?} (hang?)"),
    }
}

/// One HTTP exchange: `request` written as is, the whole response read
/// (the server closes after one). Returns (status, head, body).
pub fn http(addr: SocketAddr, request: &str) -> (u16, String, String) {
    let mut s = TcpStream::connect(addr).expect("connect to the metrics endpoint");
    s.set_read_timeout(Some(GUARD)).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut raw = Vec::new();
    s.read_to_end(&mut raw).expect("read the response");
    let text = String::from_utf8(raw).expect("a UTF-8 response");
    let (head, body) = text.split_once("\r\n\r\n").expect("a response head");
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .expect("a status code");
    (status, head.to_string(), body.to_string())
}

/// `GET /metrics`, checked to be a complete 200 response, parsed.
pub fn scrape(addr: SocketAddr) -> Samples {
    let (status, head, body) = http(
        addr,
        "GET /metrics HTTP/1.1\r\nHost: test\r\nAccept: */*\r\n\r\n",
    );
    assert_eq!(status, 200, "{head}");
    assert!(
        head.contains("Content-Type: application/openmetrics-text"),
        "{head}"
    );
    assert!(
        head.contains(&format!("Content-Length: {}", body.len())),
        "{head}"
    );
    Samples::parse(&body)
}

/// Labels of a sample, sorted by name.
pub type Labels = BTreeMap<String, String>;

/// Every sample of a scrape: name → [(labels, value)].
#[derive(Debug, Default)]
pub struct Samples(pub BTreeMap<String, Vec<(Labels, f64)>>);

impl Samples {
    /// Parses the text format's sample lines (comments skipped).
    pub fn parse(text: &str) -> Samples {
        assert!(
            text.ends_with("# EOF\n"),
            "an unfinished exposition: {text}"
        );
        let mut out = Samples::default();
        for line in text
            .lines()
            .filter(|l| !l.starts_with('#') && !l.is_empty())
        {
            let (name, rest) = match line.find(['{', ' ']) {
                Some(i) => line.split_at(i),
                None => panic!("a sample without a value: {line}"),
            };
            let (labels, value) = if let Some(rest) = rest.strip_prefix('{') {
                let (labels, len) = parse_labels(rest);
                (labels, rest[len..].trim())
            } else {
                (Labels::new(), rest.trim())
            };
            let value: f64 = value
                .split(' ')
                .next()
                .unwrap()
                .parse()
                .unwrap_or_else(|e| panic!("{line}: {e}"));
            out.0
                .entry(name.to_string())
                .or_default()
                .push((labels, value));
        }
        out
    }

    /// The value of the one sample of `name` with exactly these labels.
    pub fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: Labels = labels
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.0
            .get(name)?
            .iter()
            .find(|(l, _)| *l == want)
            .map(|(_, v)| *v)
    }

    /// [`Samples::get`], failing the test if there is none.
    pub fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in {:#?}", self.0.get(name)))
    }

    /// Every sample of `name`.
    pub fn all(&self, name: &str) -> &[(Labels, f64)] {
        self.0.get(name).map(Vec::as_slice).unwrap_or_default()
    }
}

/// `k="v",...}` → the labels and how many bytes they took (to the `}`).
fn parse_labels(s: &str) -> (Labels, usize) {
    let mut labels = Labels::new();
    let mut chars = s.char_indices().peekable();
    loop {
        match chars.peek() {
            Some((i, '}')) => return (labels, i + 1),
            Some((_, ',')) => {
                chars.next();
                continue;
            }
            Some(_) => {}
            None => panic!("unterminated labels: {s}"),
        }
        let mut key = String::new();
        for (_, c) in chars.by_ref() {
            if c == '=' {
                break;
            }
            key.push(c);
        }
        assert_eq!(chars.next().map(|(_, c)| c), Some('"'), "{s}");
        let mut value = String::new();
        while let Some((_, c)) = chars.next() {
            match c {
                '"' => break,
                '\\' => match chars.next().map(|(_, c)| c) {
                    Some('n') => value.push('\n'),
                    Some(c) => value.push(c),
                    None => panic!("{s}"),
                },
                c => value.push(c),
            }
        }
        labels.insert(key, value);
    }
}

/// Scrapes until `done` holds for the samples (a condition the server
/// reaches on its own, after the test's last call returned), failing the
/// test after [`GUARD`]. Returns the samples that satisfied it.
pub async fn scrape_until(
    addr: SocketAddr,
    what: &str,
    done: impl Fn(&Samples) -> bool,
) -> Samples {
    let start = Instant::now();
    loop {
        let s = tokio::task::spawn_blocking(move || scrape(addr))
            .await
            .unwrap();
        if done(&s) {
            return s;
        }
        assert!(
            start.elapsed() < GUARD,
            "{what}: not reached within {GUARD:?}: {s:#?}"
        );
        // A retry interval, not a synchronisation: the loop ends on the
        // condition itself.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
