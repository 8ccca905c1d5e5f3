//! The command line: a subcommand, then `--flag value`, `--flag=value` or
//! Go-style `-c 100`.

use crate::SYSTEMS;

/// Every setting of every subcommand (each reads the ones it needs).
pub struct Args {
    pub command: String,
    pub system: String,
    pub addr: String,
    pub clients: usize,
    pub calls: usize,
    pub warmup: usize,
    pub max_secs: Option<u64>,
    pub server_pid: Option<u32>,
    pub sessions: usize,
    pub files: Vec<String>,
    pub smoke: bool,
}

pub fn usage() -> ! {
    eprintln!(
        "usage:
  teleport-bench server    --system S [--addr 127.0.0.1:0] [--max-secs 900]
  teleport-bench client    --system S --addr A [-c 100] [-n 200000] [--warmup 5] [--server-pid PID] [--max-secs 600]
  teleport-bench idle      --system S --addr A --server-pid PID [--sessions 10000] [--max-secs 300]
  teleport-bench summarize FILE... [--smoke]
systems: {}",
        SYSTEMS.join(", ")
    );
    std::process::exit(2)
}

fn num<T: std::str::FromStr>(flag: &str, v: &str) -> T {
    v.parse().unwrap_or_else(|_| {
        eprintln!("{flag}: not a number: {v}");
        usage()
    })
}

pub fn parse() -> Args {
    let mut it = std::env::args().skip(1);
    let command = it.next().unwrap_or_else(|| usage());
    let mut a = Args {
        command,
        system: String::new(),
        addr: "127.0.0.1:0".into(),
        clients: 100,
        calls: 200_000,
        warmup: 5,
        max_secs: None,
        server_pid: None,
        sessions: 10_000,
        files: Vec::new(),
        smoke: false,
    };
    let rest: Vec<String> = it.collect();
    let mut i = 0;
    while i < rest.len() {
        let arg = &rest[i];
        i += 1;
        if !arg.starts_with('-') {
            a.files.push(arg.clone());
            continue;
        }
        let (flag, inline) = match arg.split_once('=') {
            Some((f, v)) => (f, Some(v.to_string())),
            None => (arg.as_str(), None),
        };
        if flag == "--smoke" {
            a.smoke = true;
            continue;
        }
        let v = match inline {
            Some(v) => v,
            None => {
                let v = rest.get(i).cloned().unwrap_or_else(|| usage());
                i += 1;
                v
            }
        };
        match flag.trim_start_matches('-') {
            "system" => a.system = v,
            "addr" | "s" => a.addr = v,
            "c" | "clients" => a.clients = num(flag, &v),
            "n" | "calls" => a.calls = num(flag, &v),
            "warmup" => a.warmup = num(flag, &v),
            "max-secs" | "t" => a.max_secs = Some(num(flag, &v)),
            "server-pid" => a.server_pid = Some(num(flag, &v)),
            "sessions" => a.sessions = num(flag, &v),
            _ => usage(),
        }
    }
    if matches!(a.command.as_str(), "server" | "client" | "idle") {
        if !SYSTEMS.contains(&a.system.as_str()) {
            eprintln!("--system: one of {}", SYSTEMS.join(", "));
            usage();
        }
        // Load tests talk to this machine only.
        let host = a.addr.rsplit_once(':').map_or("", |(h, _)| h);
        if !matches!(host, "127.0.0.1" | "localhost" | "[::1]") {
            eprintln!("--addr: loopback only (127.0.0.1, localhost or [::1]), not {host}");
            std::process::exit(2);
        }
        a.clients = a.clients.max(1);
        a.calls = a.calls.max(a.clients);
    }
    a
}
