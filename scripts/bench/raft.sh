#!/usr/bin/env bash
# raft.sh: the scheduler's Raft core (services/scheduler/internal/raftnode)
# with its default timing (100ms ticks, election timeout 10-20 ticks):
#   - commit latency of one proposal on the leader (persisted on a majority
#     with fsync, committed, applied; one at a time), 1 and 3 members;
#   - failover: 3 members, kill the leader, time until the next write
#     committed through a surviving member (a fresh cluster per round).
# Members run in one process with real WALs on disk (under TMPDIR) and
# mutual TLS over 127.0.0.1.
#
#   scripts/bench/raft.sh                       # defaults below
#   PROPOSALS=5000 FAILOVERS=10 scripts/bench/raft.sh
set -euo pipefail

PROPOSALS=${PROPOSALS:-2000}  # proposals per cluster size
FAILOVERS=${FAILOVERS:-5}     # leader kills
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=$PATH:/usr/local/go/bin

cd "$ROOT/services/scheduler"
out=$(mktemp)
trap 'rm -f "$out"' EXIT
go test -run '^$' -bench '^BenchmarkCommitLatency$' -benchtime "${PROPOSALS}x" -count 1 ./internal/raftnode | tee "$out"
go test -run '^$' -bench '^BenchmarkFailover$' -benchtime "${FAILOVERS}x" -count 1 ./internal/raftnode | tee -a "$out"

# Pick "<value> <unit>" pairs out of the benchmark lines.
metric() { # metric BENCH UNIT
  awk -v b="$1" -v u="$2" '$1 ~ b { for (i = 3; i < NF; i++) if ($(i+1) == u) print $i }' "$out"
}
echo
echo "== Raft (default timing), $PROPOSALS proposals per size, $FAILOVERS failovers"
printf '%-28s %10s %10s %10s\n' "" "p50 ms" "p99 ms" "max ms"
for n in 1 3; do
  b="BenchmarkCommitLatency/members=$n"
  printf '%-28s %10s %10s %10s\n' "commit latency, $n member(s)" "$(metric "$b" p50-ms)" "$(metric "$b" p99-ms)" "$(metric "$b" max-ms)"
done
printf '%-28s %10s %10s %10s\n' "failover (kill leader)" "$(metric BenchmarkFailover failover-p50-ms)" "$(metric BenchmarkFailover failover-p99-ms)" "$(metric BenchmarkFailover failover-max-ms)"
