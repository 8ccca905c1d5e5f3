//! `teleport-bench summarize FILE...`: reads the `RESULT` and `MEMORY`
//! lines `bench/run.sh` collected and prints Markdown tables: the median
//! of the runs of each cell (system × c), each system's median wall TPS
//! and CPU per call relative to the floor's in the same cell, and the
//! memory figures. Exits 1 if any call failed or any run gave no result.
//!
//! `RESULT` lines of other harnesses (`shared/peers-bench`: `tps=`,
//! `median_us=`, no `failed=`) are read too; the script adds the CPU
//! figures they lack.

use std::collections::BTreeMap;

use crate::args::Args;

/// Systems of other harnesses, after ours ([`crate::SYSTEMS`]) in the
/// tables; any other comes last.
const PEERS: [&str; 2] = ["tarpc", "tonic"];

/// One `KEY key=value...` line.
struct Line {
    fields: BTreeMap<String, String>,
}

impl Line {
    fn parse(line: &str, tag: &str) -> Option<Line> {
        let rest = line.trim().strip_prefix(tag)?.strip_prefix(' ')?;
        let fields = rest
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Some(Line { fields })
    }

    fn str(&self, k: &str) -> &str {
        self.fields.get(k).map_or("", String::as_str)
    }

    fn num(&self, k: &str) -> Option<f64> {
        self.fields.get(k)?.parse().ok()
    }

    /// The first of `keys` present.
    fn any(&self, keys: &[&str]) -> Option<f64> {
        keys.iter().find_map(|k| self.num(k))
    }

    fn failed(&self) -> f64 {
        if let Some(f) = self.num("failed") {
            return f;
        }
        match (self.num("sent"), self.num("ok")) {
            (Some(s), Some(o)) => s - o,
            _ => self.num("n").unwrap_or(1.0),
        }
    }

    /// CPU µs per call of one side ("cli" or "srv").
    fn cpu_per_call(&self, side: &str) -> Option<f64> {
        let ms = self.num(&format!("{side}_cpu_ms"))?;
        let calls = self.num("calls")?;
        Some(ms * 1000.0 / calls)
    }
}

fn rank(system: &str) -> usize {
    let mut order = crate::SYSTEMS.iter().chain(PEERS.iter());
    order
        .position(|s| *s == system)
        .unwrap_or(crate::SYSTEMS.len() + PEERS.len())
}

fn median(mut v: Vec<f64>) -> Option<f64> {
    if v.is_empty() {
        return None;
    }
    v.sort_by(f64::total_cmp);
    let m = v.len() / 2;
    Some(if v.len() % 2 == 1 {
        v[m]
    } else {
        (v[m - 1] + v[m]) / 2.0
    })
}

fn fmt(v: Option<f64>, digits: usize) -> String {
    v.map_or_else(|| "–".into(), |v| format!("{v:.digits$}"))
}

/// The runs of one cell.
struct Cell<'a> {
    runs: Vec<&'a Line>,
}

impl Cell<'_> {
    fn med(&self, f: impl Fn(&Line) -> Option<f64>) -> Option<f64> {
        median(self.runs.iter().filter_map(|l| f(l)).collect())
    }

    fn wall(&self) -> Option<f64> {
        self.med(|l| l.any(&["tps_wall", "tps"]))
    }

    fn failed(&self) -> f64 {
        self.runs.iter().map(|l| l.failed()).sum()
    }
}

pub fn run(a: &Args) -> i32 {
    if a.files.is_empty() {
        crate::args::usage();
    }
    let mut text = String::new();
    for f in &a.files {
        match std::fs::read_to_string(f) {
            Ok(t) => text.push_str(&t),
            Err(e) => {
                eprintln!("{f}: {e}");
                return 2;
            }
        }
    }
    let results: Vec<Line> = text
        .lines()
        .filter_map(|l| Line::parse(l, "RESULT"))
        .collect();
    let memory: Vec<Line> = text
        .lines()
        .filter_map(|l| Line::parse(l, "MEMORY"))
        .collect();

    // cell (c, system rank, system) -> runs
    let mut cells: BTreeMap<(u64, usize, String), Cell> = BTreeMap::new();
    for l in &results {
        let sys = l.str("system").to_string();
        let c = l.num("c").unwrap_or(0.0) as u64;
        cells
            .entry((c, rank(&sys), sys))
            .or_insert(Cell { runs: Vec::new() })
            .runs
            .push(l);
    }
    let bad = cells.values().any(|c| c.failed() > 0.0)
        || memory
            .iter()
            .any(|m| m.num("calls_ok") != m.num("sessions") || m.num("held") != m.num("sessions"));

    if a.smoke {
        for ((c, _, sys), cell) in &cells {
            for l in &cell.runs {
                println!(
                    "smoke {sys:<9} c={c}: {} calls, {} answered OK, {} without a good reply",
                    l.str("n"),
                    l.str("ok"),
                    l.failed()
                );
            }
        }
        return i32::from(bad);
    }

    let floor_of = |c: u64| -> Option<&Cell> {
        cells
            .iter()
            .find(|((cc, _, s), _)| *cc == c && s == "floor")
            .map(|(_, cell)| cell)
    };
    let concs: Vec<u64> = {
        let mut v: Vec<u64> = cells.keys().map(|k| k.0).collect();
        v.dedup();
        v
    };
    let mut systems: Vec<(usize, String)> = cells.keys().map(|(_, r, s)| (*r, s.clone())).collect();
    systems.sort();
    systems.dedup();

    if !cells.is_empty() {
        println!("### Median of the runs of each cell\n");
        println!(
            "wall TPS = n / (first dial .. last reply); steady TPS = n / (all connected .. last reply); \
             setup = wall − steady time (dials and warm-up); latency in ms, nearest-rank percentiles; \
             CPU = process user+sys time / calls made (warm-up included); × floor = median wall TPS / \
             the floor's in the same c; listen overflows = the machine's ListenOverflows counter over \
             the runs (each one a dropped handshake, redone after 1 s or more).\n"
        );
        println!(
            "| c | system | runs | wall TPS | × floor | steady TPS | setup s | mean ms | p50 ms | p99 ms | p99.9 ms | max ms | client CPU µs/call | server CPU µs/call | failed calls | listen overflows | wall TPS per run |"
        );
        println!(
            "|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
        );
        for ((c, _, sys), cell) in &cells {
            let wall = cell.wall();
            let ratio = match (wall, floor_of(*c).and_then(Cell::wall)) {
                (Some(w), Some(f)) if f > 0.0 => Some(w / f),
                _ => None,
            };
            let ms = |k: &[&str]| cell.med(|l| l.any(k)).map(|us| us / 1000.0);
            let per_run: Vec<String> = cell
                .runs
                .iter()
                .map(|l| fmt(l.any(&["tps_wall", "tps"]), 0))
                .collect();
            let setup = cell.med(|l| Some((l.num("wall_ms")? - l.num("steady_ms")?) / 1000.0));
            let overflows: Option<f64> = cell.runs.iter().map(|l| l.num("listen_overflows")).sum();
            println!(
                "| {c} | {sys} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                cell.runs.len(),
                fmt(wall, 0),
                fmt(ratio, 2),
                fmt(cell.med(|l| l.num("tps_steady")), 0),
                fmt(setup, 2),
                fmt(ms(&["mean_us"]), 2),
                fmt(ms(&["p50_us", "median_us"]), 2),
                fmt(ms(&["p99_us"]), 2),
                fmt(ms(&["p999_us"]), 2),
                fmt(ms(&["max_us"]), 1),
                fmt(cell.med(|l| l.cpu_per_call("cli")), 1),
                fmt(cell.med(|l| l.cpu_per_call("srv")), 1),
                cell.failed(),
                fmt(overflows, 0),
                per_run.join(" / ")
            );
        }

        let header = |title: &str| {
            println!("\n### {title}\n");
            let cols: Vec<String> = concs.iter().map(|c| format!("c = {c}")).collect();
            println!("| system | {} |", cols.join(" | "));
            println!("|---|{}", "---:|".repeat(concs.len()));
        };
        let cell_of = |c: u64, r: usize, s: &str| cells.get(&(c, r, s.to_string()));

        let tps_ratios = |title: &str, metric: &dyn Fn(&Cell) -> Option<f64>| {
            header(title);
            for (r, s) in &systems {
                let row: Vec<String> = concs
                    .iter()
                    .map(|&c| {
                        let me = cell_of(c, *r, s).and_then(metric);
                        let f = floor_of(c).and_then(metric);
                        match (me, f) {
                            (Some(me), Some(f)) if f > 0.0 => format!("{:.2}", me / f),
                            _ => "–".into(),
                        }
                    })
                    .collect();
                println!("| {s} | {} |", row.join(" | "));
            }
        };
        tps_ratios(
            "Median wall TPS relative to the floor (same c)",
            &|cell: &Cell| cell.wall(),
        );
        tps_ratios(
            "Median steady TPS relative to the floor (same c): dials and warm-up left out",
            &|cell: &Cell| cell.med(|l| l.num("tps_steady")),
        );

        header("CPU per call relative to the floor (same c): client / server");
        for (r, s) in &systems {
            let row: Vec<String> = concs
                .iter()
                .map(|&c| {
                    let rel = |side: &str| {
                        let me = cell_of(c, *r, s)?.med(|l| l.cpu_per_call(side))?;
                        let f = floor_of(c)?.med(|l| l.cpu_per_call(side))?;
                        (f > 0.0).then(|| me / f)
                    };
                    format!("{} / {}", fmt(rel("cli"), 2), fmt(rel("srv"), 2))
                })
                .collect();
            println!("| {s} | {} |", row.join(" | "));
        }
    }

    if !memory.is_empty() {
        println!("\n### Server memory with idle sessions (VmRSS)\n");
        println!(
            "| server | sessions | held | RSS before KiB | RSS connected KiB | RSS after one call KiB | KiB per session, connected | KiB per session, after one call | calls OK |"
        );
        println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|");
        let mut memory: Vec<&Line> = memory.iter().collect();
        memory.sort_by_key(|m| rank(m.str("system")));
        for m in memory {
            let kib = |k: &str| m.num(k).map(|b| b / 1024.0);
            println!(
                "| {} | {} | {} | {} | {} | {} | {} | {} | {} |",
                m.str("system"),
                m.str("sessions"),
                m.str("held"),
                m.str("rss_before_kib"),
                m.str("rss_connected_kib"),
                m.str("rss_after_call_kib"),
                fmt(kib("per_session_connected_b"), 1),
                fmt(kib("per_session_after_call_b"), 1),
                m.str("calls_ok")
            );
        }
    }
    if bad {
        println!(
            "\nSome calls got no good reply (see the failed column), or a memory run fell short."
        );
    }
    i32::from(bad)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lines_and_medians() {
        let l = Line::parse(
            "RESULT system=tarpc c=100 n=200000 sent=200000 received=200000 ok=199990 tps=71053",
            "RESULT",
        )
        .unwrap();
        assert_eq!(l.str("system"), "tarpc");
        assert_eq!(l.failed(), 10.0);
        assert_eq!(l.any(&["tps_wall", "tps"]), Some(71053.0));
        assert!(Line::parse("MEMORY system=x", "RESULT").is_none());
        assert_eq!(median(vec![3.0, 1.0, 2.0]), Some(2.0));
        assert_eq!(median(vec![4.0, 1.0, 2.0, 3.0]), Some(2.5));
        assert_eq!(median(vec![]), None);
    }
}
