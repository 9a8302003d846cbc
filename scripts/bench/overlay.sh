#!/usr/bin/env bash
# overlay.sh: TCP throughput (iperf3) and round-trip time (ping) between two
# network namespaces joined by a veth, through zlayer-overlay's WireGuard
# mesh and through Debian's wireguard-go set up the same way (userspace
# WireGuard over TUN, MTU 1420, one peer each side, the same addresses and
# routes), in one run, plus the bare veth for reference. Prints each and
# zlayer-overlay's ratios to wireguard-go. Everything it makes (namespaces,
# processes, files) goes when it ends.
#
#   scripts/bench/overlay.sh               # DURATION=5 ROUNDS=2
set -euo pipefail

DURATION=${DURATION:-5}
ROUNDS=${ROUNDS:-2} # iperf3 runs per setup; the best is reported
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=$PATH:/usr/local/go/bin:$HOME/go/bin

for bin in wireguard-go wg iperf3 grpcurl go ip nsenter python3 ping; do
  command -v "$bin" >/dev/null || { echo "overlay.sh: $bin is missing (make deps)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "overlay.sh: run as root (namespaces, TUN)" >&2; exit 1; }

W=$(mktemp -d /tmp/zlayer-bench-overlay.XXXXXX)
A=zlbA$$ B=zlbB$$
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  ip netns del "$A" 2>/dev/null || true
  ip netns del "$B" 2>/dev/null || true
  rm -rf "$W"
}
trap cleanup EXIT
# inns NS CMD…: CMD in namespace NS (background processes call nsenter
# directly, so that their PID is the process's).
inns() { local ns=$1; shift; nsenter --net=/run/netns/"$ns" -- "$@"; }

echo "building zlayer-overlay"
(cd "$ROOT" && go build -o "$W/zlayer-overlay" ./services/overlay/cmd/zlayer-overlay)

ip netns add "$A"
ip netns add "$B"
ip link add "va$$" netns "$A" type veth peer name "vb$$" netns "$B"
inns "$A" ip addr add 10.250.0.1/24 dev "va$$"
inns "$B" ip addr add 10.250.0.2/24 dev "vb$$"
for ns in "$A" "$B"; do inns "$ns" ip link set lo up; done
inns "$A" ip link set "va$$" up
inns "$B" ip link set "vb$$" up

# measure NAME ADDR: iperf3 from A to ADDR on B (best of ROUNDS), ping RTT.
declare -A GBPS RTT
measure() {
  local name=$1 addr=$2 best=0 out bps
  inns "$B" iperf3 -s -B "$addr" -D --pidfile "$W/iperf.pid" >/dev/null
  sleep 0.3
  for _ in $(seq "$ROUNDS"); do
    out=$(inns "$A" iperf3 -c "$addr" -t "$DURATION" -J)
    bps=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["end"]["sum_received"]["bits_per_second"])' <<<"$out")
    best=$(python3 -c "print(max($best, $bps))")
  done
  kill "$(cat "$W/iperf.pid")" 2>/dev/null || true
  GBPS[$name]=$(python3 -c "print(f'{$best/1e9:.2f}')")
  RTT[$name]=$(inns "$A" ping -q -c 50 -i 0.02 "$addr" | awk -F/ '/^rtt/ {print $5}')
  printf '  %-14s %6s Gbit/s   ping %s ms\n' "$name" "${GBPS[$name]}" "${RTT[$name]}"
}

echo "iperf3 -t $DURATION (best of $ROUNDS), ping -c 50; $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
measure veth 10.250.0.2

# --- zlayer-overlay: the daemon in each namespace, peers set as the
# scheduler sets them (SetPeers over its socket) ---
start_overlay() { # NS NAME DEVICE
  mkdir -p "$W/$2"
  nsenter --net=/run/netns/"$1" -- "$W/zlayer-overlay" --node "$2" --run-dir "$W/$2/run" --data-dir "$W/$2/data" --device "$3" \
    --log-format console >"$W/$2.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do [ -S "$W/$2/run/overlay.sock" ] && return 0; sleep 0.1; done
  echo "overlay.sh: zlayer-overlay $2 did not start:" >&2; cat "$W/$2.log" >&2; exit 1
}
start_overlay "$A" a "zla$$"
start_overlay "$B" b "zlb$$"
key() { grpcurl -plaintext "unix://$W/$1/run/overlay.sock" zlayer.overlay.v1.OverlayService/GetIdentity |
  python3 -c 'import json,sys; print(json.load(sys.stdin)["publicKey"])'; }
KA=$(key a) KB=$(key b)
set_peers() { # NAME ADDRESS CIDR PEER PEERKEY PEERENDPOINT PEERCIDR
  grpcurl -plaintext -d @ "unix://$W/$1/run/overlay.sock" zlayer.overlay.v1.OverlayService/SetPeers >/dev/null <<EOF
{"address": "$2", "containerCidr": "$3",
 "peers": [{"node": "$4", "publicKey": "$5", "endpoint": "$6", "containerCidr": "$7"}]}
EOF
}
set_peers a 10.251.1.254 10.251.1.0/24 b "$KB" 10.250.0.2:51820 10.251.2.0/24
set_peers b 10.251.2.254 10.251.2.0/24 a "$KA" 10.250.0.1:51820 10.251.1.0/24
inns "$A" ping -q -c 3 -W 2 10.251.2.254 >/dev/null || { echo "overlay.sh: no way through zlayer-overlay" >&2; cat "$W"/a.log "$W"/b.log >&2; exit 1; }
measure zlayer-overlay 10.251.2.254
for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
PIDS=()

# --- Debian's wireguard-go, set up with wg and ip the same way ---
start_wggo() { # NS DEVICE ADDRESS PEERKEY PEERENDPOINT PEERCIDR KEYFILE
  nsenter --net=/run/netns/"$1" -- env WG_PROCESS_FOREGROUND=1 wireguard-go -f "$2" >"$W/$2.log" 2>&1 &
  PIDS+=($!)
  for _ in $(seq 100); do inns "$1" ip link show "$2" >/dev/null 2>&1 && break; sleep 0.1; done
  inns "$1" wg set "$2" private-key "$7" listen-port 51820 peer "$4" endpoint "$5" allowed-ips "$6" persistent-keepalive 25
  inns "$1" ip addr add "$3/32" dev "$2"
  inns "$1" ip link set "$2" mtu 1420 up
  inns "$1" ip route add "$6" dev "$2" src "$3"
}
(umask 077; wg genkey >"$W/ka"; wg genkey >"$W/kb")
PA=$(wg pubkey <"$W/ka") PB=$(wg pubkey <"$W/kb")
start_wggo "$A" "wga$$" 10.251.1.254 "$PB" 10.250.0.2:51820 10.251.2.0/24 "$W/ka"
start_wggo "$B" "wgb$$" 10.251.2.254 "$PA" 10.250.0.1:51820 10.251.1.0/24 "$W/kb"
inns "$A" ping -q -c 3 -W 2 10.251.2.254 >/dev/null || { echo "overlay.sh: no way through wireguard-go" >&2; exit 1; }
measure wireguard-go 10.251.2.254

echo
echo "zlayer-overlay relative to wireguard-go (throughput > 1 and ping < 1 favour zlayer-overlay):"
python3 -c "print(f'  throughput {${GBPS[zlayer-overlay]}/${GBPS[wireguard-go]}:.2f}   ping {${RTT[zlayer-overlay]}/${RTT[wireguard-go]}:.2f}')"
