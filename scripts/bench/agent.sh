#!/usr/bin/env bash
# agent.sh: zlayer-agent start latency and memory, on real parts.
#
# Start latency is request → process running with the image cached:
# RunReplica through zlayer-agent (rootfs from zlayer-registry, a network
# namespace from the agent's warm pool — made, pinned and attached to the
# CNI bridge ahead of time; --warm-netns, default 2, BENCH_WARM_NETNS here,
# 0 for CNI on every start — zlayer-monitor, runc run) against plain
# `runc run -d` of the same bundle (the agent's config.json on its own
# rootfs from the same registry daemon, in a network namespace runc makes,
# with no CNI at all), for 1 container (alternating sides, BENCH_ROUNDS
# rounds, median) and for 20 at once (wall time). Next to it, the CPU time
# (user+sys) one start costs on each side, of every process involved
# (children included: runc, runc init, CNI plugins, monitor, registry
# daemon), measured with a cpuacct cgroup — on the ZLayer side including
# the pool's refill after the start, which the runc side is never measured
# during — and the least wall time 20 starts at once can take on this
# machine's CPUs (20 × CPU per start / CPUs). Memory is the agent's RSS
# idle and with BENCH_CONTAINERS containers, and each container's monitor
# (RSS, PSS, private).
#
# Both are Go benchmarks in services/agent/internal/app (they reuse the
# end-to-end harness: docker-registry with the fixture images, a
# zlayer-registry daemon, a zlayer-agent process).
#
#   scripts/bench/agent.sh
#   BENCH_ROUNDS=11 BENCH_CONTAINERS=100 scripts/bench/agent.sh
#   BENCH_WARM_NETNS=0 scripts/bench/agent.sh   # without the warm pool
set -euo pipefail

ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=$PATH:/usr/local/go/bin:$HOME/go/bin
export BENCH_ROUNDS=${BENCH_ROUNDS:-7}
export BENCH_CONTAINERS=${BENCH_CONTAINERS:-50}
export BENCH_WARM_NETNS=${BENCH_WARM_NETNS:-2}

for bin in runc docker-registry skopeo umoci go iptables; do
  command -v "$bin" >/dev/null || { echo "agent.sh: $bin is missing (make deps)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "agent.sh: run as root (runc, netns, cgroups)" >&2; exit 1; }

cd "$ROOT/services/agent"
date -u +"agent.sh: %Y-%m-%d %H:%M UTC, $(nproc) CPUs, runc $(runc --version | head -1 | awk '{print $3}')"
out=$(go test -count=1 -run '^$' -bench 'BenchmarkStart|BenchmarkMemory' -benchtime 1x -timeout 20m ./internal/app/ 2>&1) || {
  echo "$out" >&2
  exit 1
}
# The tables the benchmarks print, without the harness's logs.
echo "$out" | awk '/^start latency|^CPU time per start|^memory \(MiB\)/{p=1} /^goos:|^Benchmark|^PASS|^ok/{p=0} p'
