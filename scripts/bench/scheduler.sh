#!/usr/bin/env bash
# Placement throughput: 10,000 replicas onto 1,000 simulated nodes through a
# real 3-member Raft cluster (mutual TLS on 127.0.0.1, state on disk).
# Prints placements/s (until the leader committed every placement) and the
# time until every member applied them. Reference: HashiCorp's C1M placed
# about 3,300 containers/s on 5,000 large machines.
set -euo pipefail
cd "$(dirname "$0")/../.."
export PATH=$PATH:/usr/local/go/bin
runs=${RUNS:-3}
echo "placement: 10000 replicas, 1000 nodes, 3 members, $runs runs ($(nproc) cores, load $(cut -d' ' -f1 /proc/loadavg))"
out=$(go test -run '^$' -bench BenchmarkPlacement -benchtime 1x -count "$runs" ./services/scheduler/internal/reconcile/)
echo "$out" | grep '^BenchmarkPlacement'
rates=$(echo "$out" | awk '/^BenchmarkPlacement/ { for (i = 1; i < NF; i++) if ($(i+1) == "placements/s") print $i }' | sort -n)
conv=$(echo "$out" | awk '/^BenchmarkPlacement/ { for (i = 1; i < NF; i++) if ($(i+1) == "converge-s") print $i }' | sort -n)
n=$(echo "$rates" | wc -l)
median=$(echo "$rates" | sed -n "$(( (n + 1) / 2 ))p")
cmedian=$(echo "$conv" | sed -n "$(( (n + 1) / 2 ))p")
echo "placements/s: median $median (min $(echo "$rates" | head -1), max $(echo "$rates" | tail -1)); converged on all 3 members in $cmedian s (median)"
awk -v m="$median" 'BEGIN { printf "ratio to the 1,000/s goal: %.2f; to C1M'"'"'s ~3,300/s: %.2f\n", m / 1000, m / 3300 }'
