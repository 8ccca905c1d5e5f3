#!/usr/bin/env bash
# Paired comparison of builds or systems, for measuring one change: every
# round runs each spec once, back to back, and each spec's figures are
# divided by the first spec's in the same round; the script prints the
# median of those ratios. On a noisy 2-core VM, ratios taken seconds apart
# move far less than absolute figures taken minutes apart.
#
#   bench/pair.sh C N ROUNDS LABEL:BINARY:SYSTEM[:VAR=VALUE] ...
#
#   # before/after a change, against the floor, c = 100:
#   cp target/release/teleport-bench /tmp/before     # (built at the old commit)
#   cargo build --release -p teleport-bench
#   bench/pair.sh 100 30000 8 floor:/tmp/before:floor \
#       before:/tmp/before:tokio after:target/release/teleport-bench:tokio
#
# Columns: tps = wall TPS / the first spec's; cpu = (client + server CPU per
# call) / the first spec's; cli, srv = each side's; cli_us = the median
# client CPU µs per call. Every process is bounded (--max-secs).
set -u -o pipefail
if [ $# -lt 4 ]; then
  sed -n '2,/^set -u/p' "$0" | sed '$d'
  exit 2
fi
C=$1 N=$2 ROUNDS=$3
shift 3
ulimit -n "$(ulimit -Hn)" 2>/dev/null
RAW=$(mktemp -t teleport-pair.XXXXXX)
SRV_OUT=$(mktemp -t teleport-pair-srv.XXXXXX)
srv=
trap '[ -n "$srv" ] && kill "$srv" 2> /dev/null; rm -f "$RAW" "$SRV_OUT"' EXIT
for round in $(seq 1 "$ROUNDS"); do
  for spec in "$@"; do
    IFS=: read -r label bin sys var <<< "$spec"
    # `env` execs the server, so $! is its pid (for its CPU time); its own
    # watchdog (--max-secs) bounds it.
    env ${var:+"$var"} "$bin" server --system "$sys" --addr 127.0.0.1:0 \
      --max-secs 110 > "$SRV_OUT" 2>&1 &
    srv=$!
    for _ in $(seq 100); do
      grep -q '^listening' "$SRV_OUT" && break
      sleep 0.05
    done
    addr=$(awk '/^listening/ {print $2; exit}' "$SRV_OUT")
    [ -n "$addr" ] || { echo "$label: the server did not start: $(cat "$SRV_OUT")" >&2; exit 1; }
    out=$(env ${var:+"$var"} timeout 100 "$bin" client --system "$sys" --addr "$addr" \
      -c "$C" -n "$N" --server-pid "$srv" --max-secs 90 2>&1)
    rc=$?
    kill "$srv" 2> /dev/null
    wait "$srv" 2> /dev/null
    srv=
    result=$(grep '^RESULT' <<< "$out")
    if [ "$rc" != 0 ] || [ -z "$result" ] || ! grep -q ' failed=0 ' <<< "$result"; then
      echo "round $round: $label failed (exit $rc): ${result:-no result}" >&2
      exit 1
    fi
    echo "$round $label $result" >> "$RAW"
  done
done
awk -v labels="$(for s in "$@"; do printf '%s ' "${s%%:*}"; done)" '
  function val(line, key,   i, n, kv) {
    n = split(line, f, " ")
    for (i = 1; i <= n; i++) { split(f[i], kv, "="); if (kv[1] == key) return kv[2] }
    return 0
  }
  function median(arr, n,   i, j, t) {
    for (i = 2; i <= n; i++) for (j = i; j > 1 && arr[j-1] > arr[j]; j--) { t = arr[j]; arr[j] = arr[j-1]; arr[j-1] = t }
    return n % 2 ? arr[(n+1)/2] : (arr[n/2] + arr[n/2+1]) / 2
  }
  {
    r = $1; l = $2
    calls = val($0, "calls")
    tps[r, l] = val($0, "tps_wall")
    cli[r, l] = val($0, "cli_cpu_ms") * 1000 / calls
    srv[r, l] = val($0, "srv_cpu_ms") * 1000 / calls
    if (r > rounds) rounds = r
  }
  END {
    nl = split(labels, L, " ")
    base = L[1]
    printf "%-10s %8s %8s %8s %8s %8s\n", "", "tps", "cpu", "cli", "srv", "cli_us"
    for (k = 1; k <= nl; k++) {
      l = L[k]
      for (r = 1; r <= rounds; r++) {
        a[r] = tps[r, l] / tps[r, base]
        b[r] = (cli[r, l] + srv[r, l]) / (cli[r, base] + srv[r, base])
        c[r] = cli[r, l] / cli[r, base]
        d[r] = srv[r, l] / srv[r, base]
        e[r] = cli[r, l]
      }
      printf "%-10s %7.3fx %7.3fx %7.3fx %7.3fx %8.2f\n", l, median(a, rounds), median(b, rounds), median(c, rounds), median(d, rounds), median(e, rounds)
    }
  }' "$RAW"
