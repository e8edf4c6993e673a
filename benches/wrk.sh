#!/usr/bin/env bash
# wrk, a load generator nobody here wrote, against `examples/server` with the whole stack and
# with `--bare`, in alternating rounds; prints requests/s, p50 and p99 per variant and the
# ratios of the stack to bare over all rounds.
#
#   bash benches/wrk.sh [ROUNDS] [SECONDS] [CONNECTIONS]      (default 3 rounds of 4 s, 32)
#
# Installs wrk from Debian's archive when it is missing (as root, like .ci/prometheus-check).
# Loopback only; the two servers are stopped at the end.
set -euo pipefail
cd "$(dirname "$0")/.."
rounds=${1:-3}
secs=${2:-4}
connections=${3:-32}

if ! command -v wrk >/dev/null; then
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
fi
cargo build --release --example server
server=${CARGO_TARGET_DIR:-target}/release/examples/server

"$server" --addr 127.0.0.1:18480 >/dev/null 2>&1 &
ours=$!
"$server" --addr 127.0.0.1:18481 --bare >/dev/null 2>&1 &
bare=$!
trap 'kill $ours $bare 2>/dev/null || true' EXIT
sleep 1

# One wrk run: "requests/s p50_ms p99_ms".
run() {
    wrk -t1 -c"$connections" -d"${secs}s" --latency \
        -H 'X-Request-Timeout: 5' -H 'X-Request-Priority: normal' \
        "http://$1/hello" |
        awk '/Requests\/sec/ {rps=$2}
             function ms(v) { if (v ~ /us$/) return v/1000; if (v ~ /ms$/) return v+0; return v*1000 }
             $1=="50%" {p50=ms($2)} $1=="99%" {p99=ms($2)}
             END {printf "%s %.3f %.3f\n", rps, p50, p99}'
}

run 127.0.0.1:18481 >/dev/null # warm-up
run 127.0.0.1:18480 >/dev/null
echo "wrk -t1 -c$connections -d${secs}s, $rounds alternating rounds, GET /hello"
echo "| round | bare req/s | bare p50 ms | bare p99 ms | stack req/s | stack p50 ms | stack p99 ms | throughput ratio | p99 ratio |"
echo "|---|---:|---:|---:|---:|---:|---:|---:|---:|"
for round in $(seq "$rounds"); do
    read -r brps bp50 bp99 < <(run 127.0.0.1:18481)
    read -r orps op50 op99 < <(run 127.0.0.1:18480)
    echo "$round $brps $bp50 $bp99 $orps $op50 $op99" |
        awk '{printf "| %s | %.0f | %s | %s | %.0f | %s | %s | %.3f | %.3f |\n",
              $1, $2, $3, $4, $5, $6, $7, $5/$2, $7/$4}' | tee -a /tmp/wrk-rounds.$$
done
awk -F'|' '{b+=$3; o+=$6; bp+=$5; op+=$8} END {printf "all rounds: throughput ratio %.3f, mean p99 ratio %.3f\n", o/b, op/bp}' /tmp/wrk-rounds.$$
rm -f /tmp/wrk-rounds.$$
