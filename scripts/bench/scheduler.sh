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
go test -run '^$' -bench BenchmarkPlacement -benchtime 1x -count "$runs" ./services/scheduler/internal/reconcile/ |
  awk '/^BenchmarkPlacement/ { for (i = 1; i <= NF; i++) { if ($(i+1) == "placements/s") p[++n] = $i; if ($(i+1) == "converge-s") c[n] = $i } }
       END { asort(p); printf "placements/s: median %.0f (min %.0f, max %.0f); goal >= 1000: ratio %.2f\n", p[int((n+1)/2)], p[1], p[n], p[int((n+1)/2)]/1000 }'
