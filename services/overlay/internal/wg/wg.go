// Package wg runs the node's end of the WireGuard mesh: a userspace
// WireGuard device (golang.zx2c4.com/wireguard, over a TUN interface) with
// the node's key, one peer per other node whose container subnet it routes,
// and the address the agent keeps for it in the node's own subnet (the
// source of the node's own connections to other nodes' containers). The
// device exists only while there are peers; a crashed daemon's TUN
// interface, routes included, goes with its process.
package wg

import (
	"crypto/ecdh"
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"sync"

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
	routes map[netip.Prefix]bool
	peers  []Peer
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
	m := &Mesh{name: name, port: port, key: key, log: log.Named("wg"), routes: map[netip.Prefix]bool{}}
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
// its own subnet) and peers, or no device when there are none.
func (m *Mesh) Set(addr netip.Addr, peers []Peer) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if len(peers) == 0 {
		m.downLocked()
		return nil
	}
	if !addr.Is4() {
		return fmt.Errorf("device address %q: want IPv4: %w", addr, errkind.Invalid)
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
		}
		if err := ip("addr", "replace", addr.String()+"/32", "dev", m.name); err != nil {
			return err
		}
		m.addr = addr
	}
	var conf strings.Builder
	conf.WriteString("replace_peers=true\n")
	for _, p := range peers {
		fmt.Fprintf(&conf, "public_key=%s\nendpoint=%s\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=%s\n",
			hex.EncodeToString(p.PublicKey[:]), p.Endpoint, p.CIDR)
	}
	if err := m.dev.IpcSet(conf.String()); err != nil {
		return fmt.Errorf("configure peers of %s: %w", m.name, err)
	}
	want := map[netip.Prefix]bool{}
	for _, p := range peers {
		want[p.CIDR] = true
		if !m.routes[p.CIDR] {
			if err := ip("route", "replace", p.CIDR.String(), "dev", m.name, "src", addr.String()); err != nil {
				return err
			}
			m.routes[p.CIDR] = true
		}
	}
	for r := range m.routes {
		if !want[r] {
			ip("route", "del", r.String(), "dev", m.name) //nolint:errcheck // already gone is fine
			delete(m.routes, r)
		}
	}
	if !slices.Equal(m.peers, peers) {
		names := make([]string, 0, len(peers))
		for _, p := range peers {
			names = append(names, p.Node)
		}
		m.log.Info("mesh set", zap.String("device", m.name), zap.String("address", addr.String()), zap.Strings("peers", names))
		m.peers = slices.Clone(peers)
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
	if f, err := ipc.UAPIOpen(m.name); err == nil {
		if l, err := ipc.UAPIListen(m.name, f); err == nil {
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
	}
	if err := ip("link", "set", m.name, "up"); err != nil {
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
	m.routes = map[netip.Prefix]bool{}
	m.peers = nil
}

// Close removes the device.
func (m *Mesh) Close() {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.downLocked()
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %v: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}
