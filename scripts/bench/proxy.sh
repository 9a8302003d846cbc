#!/usr/bin/env bash
# proxy.sh: wrk through zlayer-proxy, nginx, HAProxy and Caddy (all Debian's)
# configured as reverse proxies to one backend (an nginx answering a small
# fixed response), same threads, connections and duration, over plain
# HTTP/1.1 and over TLS (keep-alive: the handshake cost is amortised). Prints
# requests/s and p99 latency per proxy and zlayer-proxy's ratios to each peer.
# Everything listens on 127.0.0.1 and stops when the script ends.
#
#   scripts/bench/proxy.sh                 # defaults below
#   DURATION=10s CONNS=64 THREADS=2 ROUNDS=1 scripts/bench/proxy.sh
set -euo pipefail

DURATION=${DURATION:-10s}
CONNS=${CONNS:-64}
THREADS=${THREADS:-2}
ROUNDS=${ROUNDS:-1}      # runs per proxy and mode; the best one is reported
WORKERS=${WORKERS:-2}    # worker processes/threads of each proxy
ROOT=$(cd "$(dirname "$0")/../.." && pwd)
export PATH=$PATH:/usr/local/go/bin:$HOME/go/bin

for bin in nginx haproxy caddy wrk openssl grpcurl go; do
  command -v "$bin" >/dev/null || { echo "proxy.sh: $bin is missing (make deps)" >&2; exit 1; }
done

W=$(mktemp -d /tmp/zlayer-bench-proxy.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$W"
}
trap cleanup EXIT

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_port() { # wait_port PORT: until something accepts on 127.0.0.1:PORT (bounded)
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/"$1") 2>/dev/null && return 0; sleep 0.1; done
  echo "proxy.sh: nothing listens on port $1; logs:" >&2
  tail -n 20 "$W"/*.log "$W"/*/error.log >&2 || true
  exit 1
}

echo "building zlayer-proxy"
(cd "$ROOT" && go build -o "$W/zlayer-proxy" ./services/proxy/cmd/zlayer-proxy)

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=127.0.0.1 \
  -addext subjectAltName=IP:127.0.0.1 -keyout "$W/cert.key" -out "$W/cert.crt" 2>/dev/null
cat "$W/cert.crt" "$W/cert.key" >"$W/cert.pem"
mkdir -p "$W/certs" && cp "$W/cert.crt" "$W/certs/local.crt" && cp "$W/cert.key" "$W/certs/local.key"

BACKEND=$(free_port)
# --- the backend: nginx answering 13 bytes, one worker per core ---
mkdir -p "$W/backend"
cat >"$W/backend/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $W/backend/nginx.pid;
error_log $W/backend/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/backend; proxy_temp_path $W/backend; fastcgi_temp_path $W/backend;
  uwsgi_temp_path $W/backend; scgi_temp_path $W/backend;
  server { listen 127.0.0.1:$BACKEND; location / { default_type text/plain; return 200 "hello, world\n"; } }
}
EOF
nginx -c "$W/backend/nginx.conf" -g 'daemon off;' -p "$W/backend" &
PIDS+=($!)
declare -A PID
PID[backend]=$!

# --- nginx as reverse proxy ---
NGX=$(free_port); NGXS=$(free_port)
mkdir -p "$W/nginx"
cat >"$W/nginx/nginx.conf" <<EOF
worker_processes $WORKERS;
pid $W/nginx/nginx.pid;
error_log $W/nginx/error.log warn;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path $W/nginx; proxy_temp_path $W/nginx; fastcgi_temp_path $W/nginx;
  uwsgi_temp_path $W/nginx; scgi_temp_path $W/nginx;
  upstream backend { server 127.0.0.1:$BACKEND; keepalive 256; }
  server {
    listen 127.0.0.1:$NGX;
    listen 127.0.0.1:$NGXS ssl http2;
    ssl_certificate $W/cert.crt; ssl_certificate_key $W/cert.key;
    location / {
      proxy_pass http://backend; proxy_http_version 1.1; proxy_set_header Connection "";
      proxy_set_header Host \$host; proxy_set_header X-Forwarded-For \$proxy_add_x_forwarded_for;
    }
  }
}
EOF
nginx -c "$W/nginx/nginx.conf" -g 'daemon off;' -p "$W/nginx" &
PIDS+=($!)
PID[nginx]=$!

# --- HAProxy ---
HAP=$(free_port); HAPS=$(free_port)
cat >"$W/haproxy.cfg" <<EOF
global
  nbthread $WORKERS
  maxconn 8192
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  option forwardfor
  http-reuse always
frontend plain
  bind 127.0.0.1:$HAP
  default_backend app
frontend tls
  bind 127.0.0.1:$HAPS ssl crt $W/cert.pem alpn h2,http/1.1
  default_backend app
backend app
  server s1 127.0.0.1:$BACKEND
EOF
haproxy -f "$W/haproxy.cfg" -db &
PIDS+=($!)
PID[haproxy]=$!

# --- Caddy ---
CAD=$(free_port); CADS=$(free_port)
cat >"$W/Caddyfile" <<EOF
{
  admin off
  auto_https off
  storage file_system $W/caddy
}
http://127.0.0.1:$CAD {
  reverse_proxy 127.0.0.1:$BACKEND
}
https://127.0.0.1:$CADS {
  tls $W/cert.crt $W/cert.key
  reverse_proxy 127.0.0.1:$BACKEND
}
EOF
XDG_DATA_HOME=$W/caddy XDG_CONFIG_HOME=$W/caddy GOMAXPROCS=$WORKERS caddy run --config "$W/Caddyfile" --adapter caddyfile >"$W/caddy.log" 2>&1 &
PIDS+=($!)
PID[caddy]=$!

# --- zlayer-proxy, route pushed as the scheduler would ---
ZLP=$(free_port); ZLPS=$(free_port)
GOMAXPROCS=$WORKERS "$W/zlayer-proxy" --node bench --run-dir "$W/zl/run" --data-dir "$W/zl/data" \
  --http-addr 127.0.0.1:$ZLP --https-addr 127.0.0.1:$ZLPS --tls-cert-dir "$W/certs" \
  --access-log=false --log-format console >"$W/zlayer-proxy.log" 2>&1 &
PIDS+=($!)
PID[zlayer-proxy]=$!

for p in $BACKEND $NGX $NGXS $HAP $HAPS $CAD $CADS $ZLP $ZLPS; do wait_port "$p"; done
grpcurl -plaintext -d @ "unix://$W/zl/run/proxy.sock" zlayer.proxy.v1.ProxyService/SetRoutes >/dev/null <<EOF
{"generation": 1, "routes": [{"deployment": "bench", "service": "web", "endpoint": "http",
  "protocol": "PROTOCOL_HTTP", "expose": "EXPOSE_PUBLIC",
  "backends": [{"replica_id": "r1", "address": "127.0.0.1:$BACKEND", "healthy": true, "ready": true}]}]}
EOF

for url in "http://127.0.0.1:$ZLP/" "https://127.0.0.1:$ZLPS/" "http://127.0.0.1:$CAD/" "https://127.0.0.1:$CADS/" \
  "http://127.0.0.1:$NGX/" "https://127.0.0.1:$NGXS/" "http://127.0.0.1:$HAP/" "https://127.0.0.1:$HAPS/"; do
  body=$(curl -sk --max-time 5 "$url") || { echo "proxy.sh: $url does not answer" >&2; exit 1; }
  [ "$body" = "hello, world" ] || { echo "proxy.sh: $url answered '$body'" >&2; exit 1; }
done

# cpu_ticks PID: CPU time (user+system, clock ticks) of PID and its child
# processes (nginx's workers), all threads included.
cpu_ticks() {
  local t=0 p
  for p in "$1" $(pgrep -P "$1" || true); do
    t=$((t + $(awk '{print $14+$15}' "/proc/$p/stat")))
  done
  echo "$t"
}
HZ=$(getconf CLK_TCK)

# run NAME MODE URL: best of ROUNDS wrk runs; records RPS[NAME.MODE],
# P99[NAME.MODE] (ms) and CPU[NAME.MODE], the proxy's CPU microseconds per
# request in that run: the cost of a request, which the shared cores do not
# blur as much as the rates.
declare -A RPS P99 CPU
run() {
  local best=0 bestp99=0 bestcpu=0 out rps p99 t0 t1 n
  for _ in $(seq "$ROUNDS"); do
    t0=$(cpu_ticks "${PID[$1]}")
    out=$(wrk -t"$THREADS" -c"$CONNS" -d"$DURATION" --latency "$3")
    t1=$(cpu_ticks "${PID[$1]}")
    n=$(awk '/requests in/ {print $1}' <<<"$out")
    if grep -q -E "Socket errors|Non-2xx" <<<"$out"; then
      echo "proxy.sh: $1 $2 had errors:" >&2; echo "$out" >&2; exit 1
    fi
    rps=$(awk '/^Requests\/sec/ {print $2}' <<<"$out")
    p99=$(awk '$1=="99%" {v=$2; if (v ~ /us$/) {sub(/us$/,"",v); v/=1000} else if (v ~ /ms$/) {sub(/ms$/,"",v)} else if (v ~ /s$/) {sub(/s$/,"",v); v*=1000}; print v}' <<<"$out")
    if awk -v a="$rps" -v b="$best" 'BEGIN{exit !(a>b)}'; then
      best=$rps; bestp99=$p99
      bestcpu=$(awk -v d=$((t1 - t0)) -v hz="$HZ" -v n="$n" 'BEGIN { printf "%.2f", d * 1e6 / hz / n }')
    fi
  done
  RPS[$1.$2]=$best; P99[$1.$2]=$bestp99; CPU[$1.$2]=$bestcpu
  printf '  %-13s %-5s %10.0f req/s   p99 %7.2f ms   cpu %6.2f us/req\n' "$1" "$2" "$best" "$bestp99" "$bestcpu"
}

echo "wrk -t$THREADS -c$CONNS -d$DURATION, best of $ROUNDS; $(nproc) cores; load before: $(cut -d' ' -f1-3 /proc/loadavg)"
run backend plain "http://127.0.0.1:$BACKEND/"
for mode in plain tls; do
  for name in zlayer-proxy nginx haproxy caddy; do
    case $name in
      zlayer-proxy) p=$ZLP; s=$ZLPS ;; nginx) p=$NGX; s=$NGXS ;; haproxy) p=$HAP; s=$HAPS ;; caddy) p=$CAD; s=$CADS ;;
    esac
    if [ "$mode" = plain ]; then run "$name" plain "http://127.0.0.1:$p/"; else run "$name" tls "https://127.0.0.1:$s/"; fi
  done
done

echo
echo "zlayer-proxy relative to each peer (req/s ratio > 1, p99 and cpu ratios < 1 favour zlayer-proxy):"
for mode in plain tls; do
  for peer in nginx haproxy caddy; do
    awk -v m="$mode" -v p="$peer" -v zr="${RPS[zlayer-proxy.$mode]}" -v pr="${RPS[$peer.$mode]}" \
      -v zl="${P99[zlayer-proxy.$mode]}" -v pl="${P99[$peer.$mode]}" \
      -v zc="${CPU[zlayer-proxy.$mode]}" -v pc="${CPU[$peer.$mode]}" \
      'BEGIN { printf "  %-5s vs %-8s req/s %.2f   p99 %.2f   cpu/req %.2f\n", m, p, zr/pr, (pl>0 ? zl/pl : 0), (pc>0 ? zc/pc : 0) }'
  done
done
