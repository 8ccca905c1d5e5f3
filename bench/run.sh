#!/usr/bin/env bash
# The end-to-end benchmark of the seed's workload (bench/README.md).
#
#   bench/run.sh                 # full: 3 runs x c = 100 500 1000 5000 x n = 200000,
#                                #       every system, then the memory scenario
#   bench/run.sh --quick         # 1 run, c = 100, n = 20000, every system (no memory)
#   bench/run.sh --smoke         # CI: debug build, c = 4, n = 400 per system;
#                                #     exits non-zero if any call failed
#   bench/run.sh --peers         # also tarpc and tonic from ../shared/peers-bench
#   bench/run.sh --no-memory | --memory-only | --memory
#
# Environment (optional): RUNS, CONCS ("100 500"), N, SYSTEMS ("floor tokio"),
# SESSIONS (memory scenario, 10000), CLIENT_TIMEOUT (s, per client process),
# LOGDIR, PEERS_DIR, CARGO_TARGET_DIR (default: the workspace's target/).
#
# Servers and clients are separate processes on 127.0.0.1; every process
# runs under `timeout` and has its own watchdog. Systems are interleaved
# within each cell and their order is rotated per run and per cell.
set -u -o pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"

MODE=full PEERS=0 MEMORY=""
for arg in "$@"; do
  case $arg in
    --quick) MODE=quick ;;
    --smoke) MODE=smoke ;;
    --peers) PEERS=1 ;;
    --memory) MEMORY=1 ;;
    --no-memory) MEMORY=0 ;;
    --memory-only) MEMORY=only ;;
    -h|--help) sed -n '2,/^set -u/p' "$0" | sed '$d'; exit 0 ;;
    *) echo "unknown argument: $arg (see --help)" >&2; exit 2 ;;
  esac
done
case $MODE in
  full)  RUNS=${RUNS:-3}; CONCS=${CONCS:-"100 500 1000 5000"}; N=${N:-200000}
         CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-300}; PAUSE=1; MEMORY=${MEMORY:-1} ;;
  quick) RUNS=${RUNS:-1}; CONCS=${CONCS:-100}; N=${N:-20000}
         CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-60}; PAUSE=0.3; MEMORY=${MEMORY:-0} ;;
  smoke) RUNS=${RUNS:-1}; CONCS=${CONCS:-4}; N=${N:-400}
         CLIENT_TIMEOUT=${CLIENT_TIMEOUT:-20}; PAUSE=0.1; MEMORY=${MEMORY:-0} ;;
esac
OURS="floor socket tokio tokio-tls async-std smol mio"
SYS_LIST=${SYSTEMS:-$OURS}
[ "$PEERS" = 1 ] && [ -z "${SYSTEMS:-}" ] && SYS_LIST="$SYS_LIST tarpc tonic"
read -r -a SYS <<< "$SYS_LIST"
case " ${SYS[*]} " in *" tarpc "*|*" tonic "*) PEERS=1 ;; esac
SESSIONS=${SESSIONS:-10000}
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PEERS_DIR=${PEERS_DIR:-$ROOT/../shared/peers-bench}
PEERS_TARGET=$CARGO_TARGET_DIR/peers-bench
if [ "$MODE" = smoke ] && [ -z "${LOGDIR:-}" ]; then
  LOGDIR=$(mktemp -d -t teleport-bench-smoke.XXXXXX)   # removed if all went well
  SMOKE_TMP=1
fi
LOGDIR=${LOGDIR:-$ROOT/bench/logs/$MODE-$(date +%Y%m%d-%H%M%S)}
mkdir -p "$LOGDIR"
RESULTS=$LOGDIR/results.txt
: > "$RESULTS"

# Thousands of connections per process: as many descriptors as allowed.
ulimit -n "$(ulimit -Hn)" 2>/dev/null
NOFILE=$(ulimit -n)

say() { [ "$MODE" = smoke ] || echo "$@"; }

if [ "$MODE" != smoke ]; then
  {
    echo "date: $(date -u +%Y-%m-%dT%H:%MZ)"
    echo "nproc: $(nproc); memory: $(awk '/MemTotal/ {printf "%.1f GiB", $2 / 1048576}' /proc/meminfo)"
    echo "kernel: $(uname -sr); $(rustc --version)"
    echo "cpu: $(awk -F': ' '/model name/ {print $2; exit}' /proc/cpuinfo)"
    echo "ulimit -n: $NOFILE; somaxconn: $(cat /proc/sys/net/core/somaxconn 2>/dev/null)"
    echo "tree: $(git rev-parse --short HEAD 2>/dev/null)$( [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ] && echo ' + uncommitted changes')"
    echo "mode: $MODE; runs: $RUNS; c: $CONCS; n: $N; systems: ${SYS[*]}"
  } | tee "$LOGDIR/machine.txt"
fi

# ---- build -------------------------------------------------------------------
if [ "$MODE" = smoke ]; then
  cargo build -q -p teleport-bench || exit 1
  BIN=$CARGO_TARGET_DIR/debug/teleport-bench
else
  cargo build -q --release -p teleport-bench || exit 1
  BIN=$CARGO_TARGET_DIR/release/teleport-bench
fi
if [ "$PEERS" = 1 ]; then
  say "building tarpc and tonic in $PEERS_TARGET (from $PEERS_DIR)"
  if [ ! -f "$PEERS_DIR/Cargo.toml" ] || ! CARGO_TARGET_DIR=$PEERS_TARGET cargo build -q --release --locked \
      --manifest-path "$PEERS_DIR/Cargo.toml" -p tarpc-bench -p tonic-bench; then
    echo "tarpc/tonic not found or did not build ($PEERS_DIR): running without them" >&2
    read -r -a SYS <<< "$(printf '%s\n' "${SYS[@]}" | grep -vx -e tarpc -e tonic | tr '\n' ' ')"
  fi
fi
is_ours() { case " $OURS " in *" $1 "*) return 0 ;; esac; return 1; }

# ---- one server ----------------------------------------------------------------
# start_server SYSTEM LOGBASE [LIFETIME]: sets TPID (the `timeout` wrapping
# it), SPID (the server itself) and ADDR; empty ADDR if it did not come up.
# The server exits by itself after LIFETIME seconds (default: the client's
# timeout and a minute).
PORT=$((20000 + RANDOM % 8000))
start_server() {
  local sys=$1 log=$2.server.log life=${3:-$((CLIENT_TIMEOUT + 60))}
  ADDR="" SPID=""
  if is_ours "$sys"; then
    timeout -k 5 $((life + 30)) "$BIN" server --system "$sys" --max-secs "$life" > "$log" 2>&1 &
    TPID=$!
    for _ in $(seq 1 200); do grep -q '^listening ' "$log" 2>/dev/null && break; sleep 0.05; done
    local line; line=$(grep -m1 '^listening ' "$log")
    [ -n "$line" ] || return 0
    ADDR=$(echo "$line" | awk '{print $2}')
    SPID=$(echo "$line" | sed -n 's/.*pid=\([0-9]*\).*/\1/p')
  else
    PORT=$((PORT + 1)); [ $PORT -gt 29999 ] && PORT=20001
    timeout -k 5 $((life + 30)) "$PEERS_TARGET/release/$sys-bench" server \
      -s "127.0.0.1:$PORT" -t "$life" > "$log" 2>&1 &
    TPID=$!
    for _ in $(seq 1 200); do grep -q 'listening' "$log" 2>/dev/null && break; sleep 0.05; done
    grep -q 'listening' "$log" || return 0
    ADDR=127.0.0.1:$PORT
    SPID=$(pgrep -P "$TPID" | head -1)
  fi
}
stop_server() { kill "$TPID" 2>/dev/null; wait "$TPID" 2>/dev/null; }

# CPU time (ms) of a process so far, from /proc/PID/stat (utime + stime).
TCK=$(getconf CLK_TCK)
cpu_ms() { awk -v k="$TCK" '{ sub(/^.*\) /, ""); print int(($12 + $13) * 1000 / k) }' "/proc/$1/stat" 2>/dev/null || echo 0; }

# Machine-wide TCP counters (loopback included): accept queues that
# overflowed (each drops a handshake, and the dial waits 1 s or more for a
# retransmission) and retransmission timeouts.
tcp_counters() {
  awk '/^TcpExt:/ { if (!h) { for (i = 1; i <= NF; i++) k[i] = $i; h = 1 } else for (i = 1; i <= NF; i++) v[k[i]] = $i }
       END { print v["ListenOverflows"] + 0, v["TCPTimeouts"] + 0 }' /proc/net/netstat 2>/dev/null || echo 0 0
}

# ---- one run of one cell -----------------------------------------------------------
run_one() {
  local sys=$1 c=$2 run=$3 base=$LOGDIR/$1-c$2-r$3 rc=0 line="" t0 t1 ov0 to0 ov1 to1
  t0=$(date +%s.%N)
  read -r ov0 to0 <<< "$(tcp_counters)"
  start_server "$sys" "$base"
  if [ -z "$ADDR" ]; then
    rc=90
  elif is_ours "$sys"; then
    timeout -k 5 "$CLIENT_TIMEOUT" "$BIN" client --system "$sys" --addr "$ADDR" -c "$c" -n "$N" \
      --server-pid "$SPID" --max-secs "$CLIENT_TIMEOUT" > "$base.log" 2>&1
    rc=$?
    line=$(grep -m1 '^RESULT ' "$base.log")
  else
    # Another harness: its client reports no CPU, so bash's `time` measures
    # it (the client is reaped by `timeout`, whose rusage reaches us) and
    # /proc the server; the same process-wide user+sys time as ours.
    local s0 s1 cu cs
    s0=$(cpu_ms "$SPID")
    TIMEFORMAT='%U %S'
    { time timeout -k 5 "$CLIENT_TIMEOUT" "$PEERS_TARGET/release/$sys-bench" client -c "$c" -n "$N" \
        -s "$ADDR" -t "$CLIENT_TIMEOUT" > "$base.log" 2>&1 ; } 2> "$base.ctime"
    rc=$?
    s1=$(cpu_ms "$SPID")
    read -r cu cs < "$base.ctime"
    line=$(grep -m1 '^RESULT ' "$base.log")
    [ -n "$line" ] && line="$line calls=$((N + 5 * c)) cli_cpu_ms=$(awk -v u="$cu" -v s="$cs" 'BEGIN { print int((u + s) * 1000) }') srv_cpu_ms=$((s1 - s0))"
  fi
  stop_server
  read -r ov1 to1 <<< "$(tcp_counters)"
  [ -n "$line" ] || line="RESULT system=$sys c=$c n=$N sent=$N ok=0 failed=$N note=no-result"
  echo "$line run=$run rc=$rc listen_overflows=$((ov1 - ov0)) tcp_timeouts=$((to1 - to0))" >> "$RESULTS"
  t1=$(date +%s.%N)
  say "$(echo "$line" | awk -v r="$run" -v s="$sys" -v c="$c" -v rc="$rc" -v t="$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.1f", b - a}')" '
    { for (i = 2; i <= NF; i++) { split($i, kv, "="); f[kv[1]] = kv[2] } }
    END { tps = f["tps_wall"] != "" ? f["tps_wall"] : f["tps"];
          failed = f["failed"] != "" ? f["failed"] : f["sent"] - f["ok"];
          printf "run %s c=%-5s %-9s %8s TPS wall, %s failed, rc=%s (%s s)\n", r, c, s, tps, failed, rc, t }')"
  sleep "$PAUSE"
}

# ---- the matrix ------------------------------------------------------------------
if [ "$MEMORY" != only ]; then
  read -r -a CS <<< "$CONCS"
  need=$(( $(printf '%s\n' "${CS[@]}" | sort -n | tail -1) + 64 ))
  [ "$need" -le "$NOFILE" ] || echo "warning: ulimit -n is $NOFILE, c needs $need" >&2
  ns=${#SYS[@]}
  for run in $(seq 1 "$RUNS"); do
    ci=0
    for c in "${CS[@]}"; do
      k=$((run - 1 + ci))
      for j in $(seq 0 $((ns - 1))); do
        run_one "${SYS[$(((j + k) % ns))]}" "$c" "$run"
      done
      ci=$((ci + 1))
    done
  done
fi

# ---- memory: idle sessions -------------------------------------------------------
MEMFILE=$LOGDIR/memory.txt
if [ "$MEMORY" = 1 ] || [ "$MEMORY" = only ]; then
  : > "$MEMFILE"
  if [ $((SESSIONS + 100)) -gt "$NOFILE" ]; then
    SESSIONS=$((NOFILE - 100))
    echo "ulimit -n is $NOFILE: the memory scenario holds $SESSIONS sessions" >&2
  fi
  for sys in "${SYS[@]}"; do
    is_ours "$sys" || continue
    # The idle client speaks plain teleport framing; TLS has no row here.
    [ "$sys" = tokio-tls ] && continue
    base=$LOGDIR/mem-$sys
    start_server "$sys" "$base" 330
    if [ -n "$ADDR" ]; then
      timeout -k 5 300 "$BIN" idle --system "$sys" --addr "$ADDR" --server-pid "$SPID" \
        --sessions "$SESSIONS" --max-secs 290 > "$base.log" 2>&1
    fi
    stop_server
    line=$(grep -m1 '^MEMORY ' "$base.log" 2>/dev/null)
    [ -n "$line" ] || line="MEMORY system=$sys sessions=$SESSIONS held=0 calls_ok=0 note=no-result"
    echo "$line" >> "$MEMFILE"
    say "memory $sys: $(grep -m1 -v '^MEMORY ' "$base.log" 2>/dev/null)"
    sleep 1
  done
fi

# ---- the tables --------------------------------------------------------------------
FILES=("$RESULTS")
[ -s "$MEMFILE" ] && FILES+=("$MEMFILE")
if [ "$MODE" = smoke ]; then
  "$BIN" summarize --smoke "${FILES[@]}"
  status=$?
  if [ "$status" = 0 ] && [ -n "${SMOKE_TMP:-}" ]; then rm -rf "$LOGDIR"; else echo "smoke logs in $LOGDIR"; fi
  exit "$status"
fi
echo
"$BIN" summarize "${FILES[@]}" | tee "$LOGDIR/summary.md"
status=${PIPESTATUS[0]}
echo
echo "logs and tables in $LOGDIR"
exit "$status"
