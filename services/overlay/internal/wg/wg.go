// Package wg runs the node's end of the WireGuard mesh: a userspace
// WireGuard device (golang.zx2c4.com/wireguard, over a TUN interface) with
// the node's key, one peer per other node whose container subnet it routes,
// and the address the agent keeps for it in the node's own subnet (the
// source of the node's own connections to other nodes' containers). The
// device exists only while there are peers; a crashed daemon's TUN
// interface goes with its process; routes to the peers' subnets then
// refuse traffic (see syncRoutes) until it is back.
package wg

import (
	"bytes"
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"hash/fnv"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"
	"golang.zx2c4.com/wireguard/conn"
	"golang.zx2c4.com/wireguard/device"
	"golang.zx2c4.com/wireguard/ipc"
	"golang.zx2c4.com/wireguard/tun"

	"zlayer.dev/libs/errkind"
)

// MTU leaves room for WireGuard's 80 bytes of headers in a 1500-byte frame.
const MTU = 1420

// Peer is another node.
type Peer struct {
	Node      string
	PublicKey [32]byte
	Endpoint  netip.AddrPort
	CIDR      netip.Prefix
}

// Mesh is the node's device and peers. It is safe for concurrent use.
type Mesh struct {
	name string
	port int
	key  [32]byte
	pub  [32]byte
	log  *zap.Logger

	mu     sync.Mutex
	dev    *device.Device
	uapi   net.Listener
	addr   netip.Addr
	metric int    // of the unreachable routes
	want   []Peer // as last asked
	peers  []Peer // as the device has them
	synced bool   // the device, its address and routes are those of want
	// peersUnknown: a configuration failed half way; the next replaces all.
	peersUnknown bool
	clean        bool // no device, and its routes removed
}

// New returns the mesh of device name listening on port, with the private
// key kept in keyFile (made on first use).
func New(name string, port int, keyFile string, log *zap.Logger) (*Mesh, error) {
	if name == "" || len(name) > 15 || strings.ContainsAny(name, "/ ") {
		return nil, fmt.Errorf("device name %q: 1 to 15 characters, no '/' or space: %w", name, errkind.Invalid)
	}
	if port <= 0 || port > 65535 {
		return nil, fmt.Errorf("port %d: %w", port, errkind.Invalid)
	}
	key, err := loadKey(keyFile)
	if err != nil {
		return nil, err
	}
	priv, err := ecdh.X25519().NewPrivateKey(key[:])
	if err != nil {
		return nil, fmt.Errorf("key in %s: %w", keyFile, err)
	}
	h := fnv.New32a()
	h.Write([]byte(name))
	m := &Mesh{name: name, port: port, key: key, log: log.Named("wg"), metric: 4096 + int(h.Sum32()%4096)}
	copy(m.pub[:], priv.PublicKey().Bytes())
	return m, nil
}

// PublicKey is the device's public key, base64 as WireGuard writes it.
func (m *Mesh) PublicKey() string { return base64.StdEncoding.EncodeToString(m.pub[:]) }

// Port is the UDP port the device listens on.
func (m *Mesh) Port() int { return m.port }

// Device is the interface's name.
func (m *Mesh) Device() string { return m.name }

// loadKey reads a base64 private key, or makes and keeps a new one.
func loadKey(path string) ([32]byte, error) {
	var key [32]byte
	b, err := os.ReadFile(path)
	switch {
	case err == nil:
		d, derr := base64.StdEncoding.DecodeString(strings.TrimSpace(string(b)))
		if derr != nil || len(d) != 32 {
			return key, fmt.Errorf("key file %s: not a base64 WireGuard key: %w", path, errkind.Invalid)
		}
		copy(key[:], d)
		return key, nil
	case !errors.Is(err, fs.ErrNotExist):
		return key, fmt.Errorf("key file: %w", err)
	}
	k, err := ecdh.X25519().GenerateKey(rand.Reader)
	if err != nil {
		return key, err
	}
	copy(key[:], k.Bytes())
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return key, fmt.Errorf("key file: %w", err)
	}
	tmp := path + ".tmp"
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_TRUNC, 0o600)
	if err != nil {
		return key, fmt.Errorf("key file: %w", err)
	}
	_, werr := f.WriteString(base64.StdEncoding.EncodeToString(key[:]) + "\n")
	serr := f.Sync()
	cerr := f.Close()
	if err := errors.Join(werr, serr, cerr); err != nil {
		os.Remove(tmp)
		return key, fmt.Errorf("key file: %w", err)
	}
	if err := os.Rename(tmp, path); err != nil {
		return key, fmt.Errorf("key file: %w", err)
	}
	return key, nil
}

// Set makes the mesh: the device with addr (this node's address, inside
// its own subnet) and peers, or no device when there are none. Peers that
// did not change keep their sessions. A peer that cannot be routed (its
// subnet overlaps a network this node routes otherwise, or holds a peer's
// endpoint) is left out and logged; the others are set.
func (m *Mesh) Set(addr netip.Addr, peers []Peer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(peers) == 0 {
		if m.dev == nil && m.clean {
			return nil
		}
		m.downLocked()
		err := m.syncRoutes(netip.Addr{}, nil)
		m.clean = err == nil
		return err
	}
	if !addr.Is4() {
		return fmt.Errorf("device address %q: want IPv4: %w", addr, errkind.Invalid)
	}
	if m.dev != nil && m.synced && addr == m.addr && slices.Equal(m.want, peers) {
		return nil
	}
	m.synced, m.clean = false, false // until everything below is done
	m.want = slices.Clone(peers)
	usable, err := m.routable(peers)
	if err != nil {
		return err
	}
	if m.dev == nil {
		if err := m.upLocked(); err != nil {
			m.downLocked()
			return err
		}
	}
	if addr != m.addr {
		if m.addr.IsValid() {
			ip("addr", "del", m.addr.String()+"/32", "dev", m.name) //nolint:errcheck // gone with it or not there
			m.addr = netip.Addr{}
		}
		if err := ip("addr", "replace", addr.String()+"/32", "dev", m.name); err != nil {
			return err
		}
		m.addr = addr
	}
	if err := m.keepSources(true); err != nil { // again: a firewall reload drops it
		return err
	}
	conf := peerChanges(m.peers, usable)
	if m.peersUnknown { // a failed configuration left who knows what
		conf = "replace_peers=true\n" + peerChanges(nil, usable)
	}
	if conf != "" {
		if err := m.dev.IpcSet(conf); err != nil {
			m.peersUnknown = true
			return fmt.Errorf("configure peers of %s: %w", m.name, err)
		}
		m.peersUnknown = false
	}
	if !slices.Equal(m.peers, usable) {
		names := make([]string, 0, len(usable))
		for _, p := range usable {
			names = append(names, p.Node)
		}
		m.log.Info("mesh set", zap.String("device", m.name), zap.String("address", addr.String()), zap.Strings("peers", names))
		m.peers = slices.Clone(usable)
	}
	if err := m.syncRoutes(addr, usable); err != nil {
		return err
	}
	m.synced = true
	return nil
}

// routable returns the peers whose subnets this node can route through
// the device, logging the others: a subnet that overlaps a route this
// node has otherwise (its LAN, another bridge) would take that network
// over, and one that holds a peer's endpoint would route WireGuard's own
// packets into the device.
func (m *Mesh) routable(peers []Peer) ([]Peer, error) {
	out := make([]Peer, 0, len(peers))
next:
	for _, p := range peers {
		cidr := p.CIDR.String()
		for _, q := range peers {
			if p.CIDR.Contains(q.Endpoint.Addr().Unmap()) {
				m.log.Warn("peer left out of the mesh: its container subnet holds a node's endpoint",
					zap.String("peer", p.Node), zap.String("subnet", cidr), zap.String("endpoint_of", q.Node))
				continue next
			}
		}
		var others []route
		for _, sel := range []string{"root", "match"} { // inside the subnet, and covering it
			rs, err := routes(sel, cidr)
			if err != nil {
				return nil, err
			}
			others = append(others, rs...)
		}
		for _, r := range others {
			if r.Protocol != routeProto && r.Type == "" && r.Dst != "default" {
				m.log.Warn("peer left out of the mesh: this node already routes its container subnet elsewhere (overlapping networks)",
					zap.String("peer", p.Node), zap.String("subnet", cidr), zap.String("route", r.Dst), zap.String("via", r.Dev))
				continue next
			}
		}
		out = append(out, p)
	}
	return out, nil
}

// peerChanges is the UAPI configuration that turns the device's peers
// from old into peers: removed peers go, new and changed ones are set,
// unchanged ones are not touched (their sessions stay).
func peerChanges(old, peers []Peer) string {
	was := map[[32]byte]Peer{}
	for _, p := range old {
		was[p.PublicKey] = p
	}
	var b strings.Builder
	now := map[[32]byte]bool{}
	for _, p := range peers {
		now[p.PublicKey] = true
		if o, ok := was[p.PublicKey]; ok && o.Endpoint == p.Endpoint && o.CIDR == p.CIDR {
			continue
		}
		fmt.Fprintf(&b, "public_key=%s\nendpoint=%s\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=%s\n",
			hex.EncodeToString(p.PublicKey[:]), p.Endpoint, p.CIDR)
	}
	for _, p := range old {
		if !now[p.PublicKey] {
			fmt.Fprintf(&b, "public_key=%s\nremove=true\n", hex.EncodeToString(p.PublicKey[:]))
		}
	}
	return b.String()
}

// Routes this daemon makes carry protocol routeProto, so that it finds
// them again after a restart. Each peer subnet has two: through the device,
// and an unreachable one behind it (at the device's own metric, from 4096
// on) that stays when the device goes with a crashed daemon, so traffic
// for other nodes is refused rather than sent unencrypted by the default
// route.
const routeProto = "90"

type route struct {
	Dst      string `json:"dst"`
	Dev      string `json:"dev"`
	Type     string `json:"type"`
	Protocol string `json:"protocol"`
	Metric   int    `json:"metric"`
}

func routes(args ...string) ([]route, error) {
	out, err := exec.Command("ip", append([]string{"-j", "route", "show"}, args...)...).Output()
	if err != nil {
		return nil, fmt.Errorf("ip route show %s: %w", strings.Join(args, " "), err)
	}
	var rs []route
	if len(bytes.TrimSpace(out)) > 0 {
		if err := json.Unmarshal(out, &rs); err != nil {
			return nil, fmt.Errorf("ip route show %s: %w", strings.Join(args, " "), err)
		}
	}
	return rs, nil
}

// syncRoutes makes the device's routes those of peers (none without a
// device address). Routes of another device (another node's overlay on
// this host) are left alone: device routes by their device, unreachable
// ones by their metric, which is the device's own.
func (m *Mesh) syncRoutes(addr netip.Addr, peers []Peer) error {
	metric := strconv.Itoa(m.metric)
	want := map[string]bool{}
	for _, p := range peers {
		cidr := p.CIDR.String()
		want[cidr] = true
		if err := ip("route", "replace", "unreachable", cidr, "metric", metric, "proto", routeProto); err != nil {
			return err
		}
		if err := ip("route", "replace", cidr, "dev", m.name, "src", addr.String(), "proto", routeProto); err != nil {
			return err
		}
	}
	ours, err := routes("proto", routeProto)
	if err != nil {
		return err
	}
	for _, r := range ours {
		switch {
		case want[r.Dst]:
		case r.Type == "unreachable" && r.Metric == m.metric:
			ip("route", "del", "unreachable", r.Dst, "metric", metric) //nolint:errcheck // gone is fine
		case r.Type == "" && r.Dev == m.name:
			ip("route", "del", r.Dst, "dev", r.Dev) //nolint:errcheck // gone is fine
		}
	}
	return nil
}

// upLocked creates the device, brings it up and opens its UAPI socket
// (for `wg show`).
func (m *Mesh) upLocked() error {
	t, err := tun.CreateTUN(m.name, MTU)
	if err != nil {
		return fmt.Errorf("create TUN device %s: %w", m.name, err)
	}
	logf := func(format string, args ...any) {
		m.log.Warn(fmt.Sprintf(format, args...), zap.String("device", m.name))
	}
	m.dev = device.NewDevice(t, conn.NewDefaultBind(), &device.Logger{Verbosef: device.DiscardLogf, Errorf: logf})
	if err := m.dev.IpcSet(fmt.Sprintf("private_key=%s\nlisten_port=%d\n", hex.EncodeToString(m.key[:]), m.port)); err != nil {
		return fmt.Errorf("configure %s: %w", m.name, err)
	}
	if err := m.dev.Up(); err != nil {
		return fmt.Errorf("bring %s up: %w", m.name, err)
	}
	// The UAPI socket (for `wg show`) is a convenience: without it the
	// device still works.
	if f, err := ipc.UAPIOpen(m.name); err != nil {
		m.log.Warn("no UAPI socket: `wg show` will not see the device", zap.String("device", m.name), zap.Error(err))
	} else if l, err := ipc.UAPIListen(m.name, f); err != nil {
		f.Close()
		m.log.Warn("no UAPI socket: `wg show` will not see the device", zap.String("device", m.name), zap.Error(err))
	} else {
		m.uapi = l
		go func(dev *device.Device) {
			for {
				c, err := l.Accept()
				if err != nil {
					return
				}
				go dev.IpcHandle(c)
			}
		}(m.dev)
	}
	if err := ip("link", "set", m.name, "up"); err != nil {
		return err
	}
	if err := m.keepSources(true); err != nil {
		return err
	}
	// Forward between the device and the container bridge.
	if err := os.WriteFile("/proc/sys/net/ipv4/ip_forward", []byte("1\n"), 0o644); err != nil {
		return fmt.Errorf("enable forwarding: %w", err)
	}
	m.log.Info("device up", zap.String("device", m.name), zap.Int("port", m.port), zap.String("public_key", m.PublicKey()))
	return nil
}

// downLocked removes the device (its routes go with it).
func (m *Mesh) downLocked() {
	if err := m.keepSources(false); err != nil {
		m.log.Warn("cannot remove the NAT exemption", zap.String("device", m.name), zap.Error(err))
	}
	if m.uapi != nil {
		m.uapi.Close()
		m.uapi = nil
	}
	if m.dev != nil {
		m.dev.Close()
		m.dev = nil
		m.log.Info("device removed", zap.String("device", m.name))
	}
	m.addr = netip.Addr{}
	m.peers, m.want = nil, nil
	m.synced, m.peersUnknown = false, false
}

// Close removes the device.
func (m *Mesh) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.downLocked()
}

// keepSources exempts traffic leaving through the device from NAT (the
// agent masquerades what its containers send outside their subnet), so
// that a container on another node sees the address of the container that
// called it. The rule goes first in POSTROUTING; on is idempotent.
func (m *Mesh) keepSources(on bool) error {
	rule := []string{"POSTROUTING", "-o", m.name, "-m", "comment", "--comment", "zlayer overlay " + m.name, "-j", "ACCEPT"}
	ipt := func(args ...string) error {
		out, err := exec.Command("iptables", append([]string{"-w", "-t", "nat"}, args...)...).CombinedOutput()
		if err != nil {
			return fmt.Errorf("iptables %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
		}
		return nil
	}
	present := ipt(append([]string{"-C"}, rule...)...) == nil
	switch {
	case on && !present:
		return ipt(append([]string{"-I", "POSTROUTING", "1"}, rule[1:]...)...)
	case !on && present:
		return ipt(append([]string{"-D"}, rule...)...)
	}
	return nil
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// PeerStatus is a peer as the device sees it.
type PeerStatus struct {
	Node          string
	PublicKey     [32]byte
	LastHandshake time.Time // zero: never
	RxBytes       uint64
	TxBytes       uint64
}

// Status returns the device's peers (none without a device).
func (m *Mesh) Status() ([]PeerStatus, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if m.dev == nil {
		return nil, nil
	}
	conf, err := m.dev.IpcGet()
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", m.name, err)
	}
	nodes := map[[32]byte]string{}
	for _, p := range m.peers {
		nodes[p.PublicKey] = p.Node
	}
	var out []PeerStatus
	var sec, nsec int64
	for line := range strings.Lines(conf) {
		k, v, _ := strings.Cut(strings.TrimSpace(line), "=")
		var cur *PeerStatus
		if len(out) > 0 {
			cur = &out[len(out)-1]
		}
		switch {
		case k == "public_key":
			var ps PeerStatus
			if b, err := hex.DecodeString(v); err == nil && len(b) == 32 {
				copy(ps.PublicKey[:], b)
			}
			ps.Node = nodes[ps.PublicKey]
			out = append(out, ps)
			sec, nsec = 0, 0
		case cur == nil:
		case k == "last_handshake_time_sec":
			sec, _ = strconv.ParseInt(v, 10, 64)
		case k == "last_handshake_time_nsec":
			nsec, _ = strconv.ParseInt(v, 10, 64)
		case k == "rx_bytes":
			cur.RxBytes, _ = strconv.ParseUint(v, 10, 64)
		case k == "tx_bytes":
			cur.TxBytes, _ = strconv.ParseUint(v, 10, 64)
		}
		if cur != nil && (k == "last_handshake_time_sec" || k == "last_handshake_time_nsec") && (sec != 0 || nsec != 0) {
			cur.LastHandshake = time.Unix(sec, nsec)
		}
	}
	return out, nil
}
