#!/usr/bin/env bash
# registry.sh: cold pull + unpack of a multi-layer image (≥ 50 MB of random,
# incompressible data plus a layer of many small files) from a local
# docker-registry, ZLayer (`zlctl image pull` through zlayer-registry) versus
# `skopeo copy docker://… oci:…` followed by `umoci unpack` (both Debian's).
# Both sides are timed end to end from an empty store, in alternating order,
# ROUNDS times; the medians and the ratio are printed, and ZLayer's warm pull
# (everything cached; `zlctl image pull` still asks the registry for the
# manifest, as `docker pull` does) too.
#
#   scripts/bench/registry.sh
#   ROUNDS=7 BIG_MB=16 scripts/bench/registry.sh
set -euo pipefail

ROUNDS=${ROUNDS:-5}
BIG_LAYERS=${BIG_LAYERS:-4}   # layers holding one random file each
BIG_MB=${BIG_MB:-12}          # size of that file
SMALL_FILES=${SMALL_FILES:-3000} # one more layer of 4 KiB random files
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
TAGS="containers_image_openpgp exclude_graphdriver_btrfs exclude_graphdriver_devicemapper"
export PATH=$PATH:/usr/local/go/bin:$HOME/go/bin

for bin in docker-registry skopeo umoci go python3; do
  command -v "$bin" >/dev/null || { echo "registry.sh: $bin is missing (make deps)" >&2; exit 1; }
done
[ "$(id -u)" = 0 ] || { echo "registry.sh: run as root (overlay mounts, ownership)" >&2; exit 1; }

W=$(mktemp -d /tmp/zlayer-bench-registry.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now() { date +%s.%N; }
median() { sort -g | awk '{a[NR]=$1} END {if (NR%2) print a[(NR+1)/2]; else print (a[NR/2]+a[NR/2+1])/2}'; }

echo "building zlayer-registry and zlctl"
(cd "$ROOT" && go build -tags "$TAGS" -o "$W/bin/" ./services/registry/cmd/zlayer-registry)
if [ -z "${ZLCTL:-}" ]; then
  (cd "$ROOT" && go build -o "$W/bin/" ./services/zlctl/cmd/zlctl)
  ZLCTL=$W/bin/zlctl
fi

# --- the registry ---
PORT=$(free_port)
ADDR=127.0.0.1:$PORT
mkdir -p "$W/registry"
cat >"$W/registry/config.yml" <<EOF
version: 0.1
log:
  level: error
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: $W/registry/storage
http:
  addr: $ADDR
EOF
docker-registry serve "$W/registry/config.yml" >"$W/registry/log" 2>&1 &
PIDS+=($!)
for _ in $(seq 100); do curl -fs "http://$ADDR/v2/" >/dev/null && break; sleep 0.1; done

# --- the image: random data, so compression cannot shrink it ---
echo "building the image: $BIG_LAYERS x ${BIG_MB} MB random files + $SMALL_FILES small files"
umoci init --layout "$W/oci" >/dev/null
umoci new --image "$W/oci:big" >/dev/null
for i in $(seq "$BIG_LAYERS"); do
  mkdir -p "$W/l$i/data$i"
  head -c "${BIG_MB}M" /dev/urandom >"$W/l$i/data$i/blob"
  tar -C "$W/l$i" -cf "$W/l$i.tar" .
  umoci raw add-layer --no-history --image "$W/oci:big" "$W/l$i.tar" 2>>"$W/umoci.log"
  rm -rf "$W/l$i" "$W/l$i.tar"
done
mkdir -p "$W/small/files"
python3 - "$W/small/files" "$SMALL_FILES" <<'EOF'
import os, sys
d, n = sys.argv[1], int(sys.argv[2])
for i in range(n):
    sub = os.path.join(d, "%02d" % (i % 50))
    os.makedirs(sub, exist_ok=True)
    with open(os.path.join(sub, "f%05d" % i), "wb") as f:
        f.write(os.urandom(4096))
EOF
tar -C "$W/small" -cf "$W/small.tar" .
umoci raw add-layer --no-history --image "$W/oci:big" "$W/small.tar" 2>>"$W/umoci.log"
rm -rf "$W/small" "$W/small.tar"
umoci config --no-history --image "$W/oci:big" --config.cmd /bin/true >/dev/null
skopeo copy --quiet --insecure-policy --dest-tls-verify=false "oci:$W/oci:big" "docker://$ADDR/bench:big"
rm -rf "$W/oci"
SIZE=$(du -sm "$W/registry/storage" | cut -f1)
echo "image $ADDR/bench:big: $((BIG_LAYERS + 1)) layers, ${SIZE} MB in the registry"

zlayer_round() { # prints "cold warm" seconds
  local run=$W/zl-run data=$W/zl-data
  rm -rf "$run" "$data"; mkdir -p "$run" "$data"
  "$W/bin/zlayer-registry" --run-dir "$run" --data-dir "$data" --node bench --log-format json \
    --insecure-registry "$ADDR" 2>"$W/zl.log" &
  local pid=$!
  for _ in $(seq 200); do [ -S "$run/registry.sock" ] && break; sleep 0.05; done
  local t0 t1 t2
  t0=$(now)
  "$ZLCTL" --run-dir "$run" image pull "$ADDR/bench:big" >"$W/zl.out"
  t1=$(now)
  "$ZLCTL" --run-dir "$run" image pull "$ADDR/bench:big" >>"$W/zl.out"
  t2=$(now)
  grep -q "is up to date" "$W/zl.out" || { echo "registry.sh: warm pull was not cached" >&2; cat "$W/zl.out" >&2; exit 1; }
  kill "$pid"; wait "$pid" 2>/dev/null || true
  rm -rf "$run" "$data"
  echo "$(echo "$t1 - $t0" | bc -l) $(echo "$t2 - $t1" | bc -l)"
}

peer_round() { # prints seconds
  local dir=$W/peer
  rm -rf "$dir"; mkdir -p "$dir"
  local t0 t1
  t0=$(now)
  skopeo copy --quiet --insecure-policy --src-tls-verify=false "docker://$ADDR/bench:big" "oci:$dir/oci:big"
  umoci unpack --image "$dir/oci:big" "$dir/bundle" >/dev/null
  t1=$(now)
  rm -rf "$dir"
  echo "$t1 - $t0" | bc -l
}

command -v bc >/dev/null || { echo "registry.sh: bc is missing" >&2; exit 1; }
: >"$W/zl.cold"; : >"$W/zl.warm"; : >"$W/peer"
for r in $(seq "$ROUNDS"); do
  if [ $((r % 2)) = 1 ]; then
    read -r c w < <(zlayer_round); p=$(peer_round)
  else
    p=$(peer_round); read -r c w < <(zlayer_round)
  fi
  echo "$c" >>"$W/zl.cold"; echo "$w" >>"$W/zl.warm"; echo "$p" >>"$W/peer"
  printf "round %d: zlayer cold %.2fs warm %.3fs | skopeo+umoci %.2fs\n" "$r" "$c" "$w" "$p"
done
ZC=$(median <"$W/zl.cold"); ZW=$(median <"$W/zl.warm"); PC=$(median <"$W/peer")
echo
printf "median of %d: zlayer cold pull+unpack %.2fs, skopeo copy + umoci unpack %.2fs, ratio zlayer/peer %.2f\n" \
  "$ROUNDS" "$ZC" "$PC" "$(echo "$ZC / $PC" | bc -l)"
printf "zlayer warm pull (cached; manifest checked with the registry) %.3fs\n" "$ZW"
