#!/usr/bin/env bash
# install-deps.sh: set up a fresh Debian 12 machine (as root) for building,
# running and testing ZLayer. Idempotent: a second run only checks.
set -euo pipefail

# Debian packages: runtime parts (runc, CNI, iptables, iproute2), test
# fixtures (busybox-static, docker-registry, skopeo, umoci, pebble), stubs
# (protoc + grpc python plugin, python3-grpcio), unit checks (systemd for
# systemd-analyze), and the benchmark peers.
APT_PACKAGES=(
  runc busybox-static docker-registry containernetworking-plugins iproute2 iptables
  protobuf-compiler protobuf-compiler-grpc python3-grpcio python3-protobuf
  skopeo umoci wireguard-tools pebble systemd apache2-utils curl ca-certificates
  wrk hyperfine procps psmisc util-linux iputils-ping nginx-light haproxy caddy wireguard-go iperf3
)

# Go tools at pinned versions (installed into $GOBIN, default /root/go/bin).
GO_TOOLS=(
  github.com/bufbuild/buf/cmd/buf@v1.75.0
  google.golang.org/protobuf/cmd/protoc-gen-go@v1.36.12
  google.golang.org/grpc/cmd/protoc-gen-go-grpc@v1.6.1
  github.com/fullstorydev/grpcurl/cmd/grpcurl@v1.9.3
)

if [ "$(id -u)" != 0 ]; then
  echo "install-deps: run as root (apt-get and runc need it)" >&2
  exit 1
fi

missing=()
for p in "${APT_PACKAGES[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "install-deps: apt-get install ${missing[*]}"
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

command -v go >/dev/null || export PATH=$PATH:/usr/local/go/bin
gobin=$(go env GOBIN); [ -n "$gobin" ] || gobin=$(go env GOPATH)/bin
for t in "${GO_TOOLS[@]}"; do
  name=${t%@*}; name=${name##*/}; want=${t##*@}
  stamp="$gobin/.$name.version"
  if [ -x "$gobin/$name" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then
    continue
  fi
  echo "install-deps: go install $t"
  GOFLAGS=-buildvcs=false go install "$t"
  echo "$want" >"$stamp"
done
echo "install-deps: ok (Go tools in $gobin)"
