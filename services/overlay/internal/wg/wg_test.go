package wg

import (
	"bufio"
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"go.uber.org/zap/zaptest"
)

func freeUDPPort(t *testing.T) int {
	t.Helper()
	c, err := net.ListenPacket("udp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).Port
}

func ipOut(t *testing.T, args ...string) string {
	t.Helper()
	out, _ := exec.Command("ip", args...).CombinedOutput()
	return string(out)
}

// uapiGet asks the device for its configuration over its UAPI socket, as
// `wg show` does.
func uapiGet(t *testing.T, name string) string {
	t.Helper()
	c, err := net.Dial("unix", "/var/run/wireguard/"+name+".sock")
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fmt.Fprint(c, "get=1\n\n")
	var b strings.Builder
	sc := bufio.NewScanner(c)
	for sc.Scan() && sc.Text() != "" {
		b.WriteString(sc.Text() + "\n")
	}
	return b.String()
}

// TestMeshDevice: a real device (TUN, userspace WireGuard) comes with the
// first peer, carries the peers' keys, endpoints and subnets, routes each
// subnet through itself from the node's address, follows changes, and
// goes with the last peer. The key survives a restart.
func TestMeshDevice(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Fatal("needs root (TUN devices, routes): run the tests as root")
	}
	name := fmt.Sprintf("zlt%d", os.Getpid()%100000)
	keyFile := filepath.Join(t.TempDir(), "wireguard.key")
	port := freeUDPPort(t)
	m, err := New(name, port, keyFile, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	var peerKey [32]byte
	rand.Read(peerKey[:]) //nolint:errcheck // never fails
	// Benchmarking addresses (RFC 2544), which no real network here uses.
	addr := netip.MustParseAddr("198.18.6.254")
	peer := Peer{Node: "p", PublicKey: peerKey, Endpoint: netip.MustParseAddrPort("127.0.0.1:9"), CIDR: netip.MustParsePrefix("198.18.7.0/24")}
	if err := m.Set(addr, []Peer{peer}); err != nil {
		t.Fatal(err)
	}
	if out := ipOut(t, "addr", "show", "dev", name); !strings.Contains(out, "198.18.6.254/32") || !strings.Contains(out, "UP") {
		t.Errorf("device %s:\n%s", name, out)
	}
	if out := ipOut(t, "route", "show", "198.18.7.0/24"); !strings.Contains(out, "dev "+name) || !strings.Contains(out, "src 198.18.6.254") {
		t.Errorf("route to the peer's subnet: %q", out)
	}
	natRule := []string{"-w", "-t", "nat", "-C", "POSTROUTING", "-o", name, "-m", "comment", "--comment", "zlayer overlay " + name, "-j", "ACCEPT"}
	if out, err := exec.Command("iptables", natRule...).CombinedOutput(); err != nil {
		t.Errorf("no NAT exemption for the device: %v: %s", err, out)
	}
	conf := uapiGet(t, name)
	for _, want := range []string{"public_key=" + hex.EncodeToString(peerKey[:]), "endpoint=127.0.0.1:9", "allowed_ip=198.18.7.0/24",
		fmt.Sprintf("listen_port=%d", port)} {
		if !strings.Contains(conf, want) {
			t.Errorf("device configuration lacks %q:\n%s", want, conf)
		}
	}

	// The peer's subnet changes: the old route goes.
	peer.CIDR = netip.MustParsePrefix("198.18.8.0/24")
	if err := m.Set(addr, []Peer{peer}); err != nil {
		t.Fatal(err)
	}
	if out := ipOut(t, "route", "show", "198.18.7.0/24"); strings.TrimSpace(out) != "" {
		t.Errorf("old route kept: %q", out)
	}
	if out := ipOut(t, "route", "show", "198.18.8.0/24"); !strings.Contains(out, "dev "+name) {
		t.Errorf("new route: %q", out)
	}
	if conf := uapiGet(t, name); !strings.Contains(conf, "allowed_ip=198.18.8.0/24") || strings.Contains(conf, "198.18.7.0/24") {
		t.Errorf("allowed IPs after the change:\n%s", conf)
	}

	// A subnet this node routes elsewhere (here, to a veth) is not taken over.
	dummy := name + "d"
	if out, err := exec.Command("ip", "link", "add", dummy, "type", "veth", "peer", "name", name+"e").CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	defer exec.Command("ip", "link", "del", dummy).Run() //nolint:errcheck // test cleanup
	exec.Command("ip", "link", "set", dummy, "up").Run() //nolint:errcheck // checked below
	if out, err := exec.Command("ip", "route", "add", "198.18.9.0/24", "dev", dummy).CombinedOutput(); err != nil {
		t.Fatalf("%v: %s", err, out)
	}
	clash := peer
	clash.Node, clash.CIDR = "q", netip.MustParsePrefix("198.18.9.0/24")
	clash.PublicKey[0]++
	inside := clash
	inside.Node, inside.CIDR = "r", netip.MustParsePrefix("198.18.9.128/25") // within the veth's network
	inside.PublicKey[0]++
	loopy := clash
	loopy.Node, loopy.CIDR = "s", netip.MustParsePrefix("127.0.0.0/24") // holds the peers' endpoint
	loopy.PublicKey[0] += 2
	if err := m.Set(addr, []Peer{peer, clash, inside, loopy}); err != nil {
		t.Fatalf("peers that cannot be routed should be left out: %v", err)
	}
	if out := ipOut(t, "route", "show", "198.18.9.0/24"); !strings.Contains(out, "dev "+dummy) || strings.Contains(out, "dev "+name+" ") {
		t.Errorf("the node's own route was touched: %q", out)
	}
	if out := ipOut(t, "route", "show", "198.18.9.128/25"); strings.TrimSpace(out) != "" {
		t.Errorf("a subnet within the node's own network was routed: %q", out)
	}
	if conf := uapiGet(t, name); strings.Contains(conf, hex.EncodeToString(clash.PublicKey[:])) ||
		strings.Contains(conf, hex.EncodeToString(inside.PublicKey[:])) || strings.Contains(conf, hex.EncodeToString(loopy.PublicKey[:])) ||
		!strings.Contains(conf, hex.EncodeToString(peer.PublicKey[:])) {
		t.Errorf("the device should have the routable peer only:\n%s", conf)
	}

	// The daemon stops (or crashes): the device goes, the peers' subnets
	// are refused rather than sent unencrypted elsewhere.
	m.Close()
	if out := ipOut(t, "route", "show", "198.18.8.0/24"); !strings.Contains(out, "unreachable") || strings.Contains(out, "dev "+name) {
		t.Errorf("route to a peer's subnet without the device: %q", out)
	}

	// Restarted with the same key file: the same key; with no peers, no
	// device and none of its routes.
	again, err := New(name, port, keyFile, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if again.PublicKey() != m.PublicKey() {
		t.Errorf("key after restart %s, want %s", again.PublicKey(), m.PublicKey())
	}
	if err := again.Set(netip.Addr{}, nil); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("ip", "link", "show", name).CombinedOutput(); err == nil {
		t.Errorf("device still there without peers:\n%s", out)
	}
	if err := exec.Command("iptables", natRule...).Run(); err == nil {
		t.Error("NAT exemption left without the device")
	}
	if out := ipOut(t, "route", "show", "proto", routeProto); strings.Contains(out, "198.18.") {
		t.Errorf("routes left without peers:\n%s", out)
	}
}

// TestPeerChanges: only new, changed and removed peers are configured
// (a peer set again would lose its session).
func TestPeerChanges(t *testing.T) {
	k := func(b byte) [32]byte { var x [32]byte; x[0] = b; return x }
	p := func(b byte, ep, cidr string) Peer {
		return Peer{Node: string('a' + b), PublicKey: k(b), Endpoint: netip.MustParseAddrPort(ep), CIDR: netip.MustParsePrefix(cidr)}
	}
	old := []Peer{p(1, "192.0.2.1:51820", "10.1.0.0/16"), p(2, "192.0.2.2:51820", "10.2.0.0/16"), p(3, "192.0.2.3:51820", "10.3.0.0/16")}
	if got := peerChanges(old, old); got != "" {
		t.Errorf("no change: %q", got)
	}
	next := []Peer{old[0], p(2, "192.0.2.22:51820", "10.2.0.0/16"), p(4, "192.0.2.4:51820", "10.4.0.0/16")}
	got := peerChanges(old, next)
	hexKey := func(b byte) string { x := k(b); return hex.EncodeToString(x[:]) }
	for _, want := range []string{
		"public_key=" + hexKey(2) + "\nendpoint=192.0.2.22:51820\n",
		"public_key=" + hexKey(4) + "\nendpoint=192.0.2.4:51820\npersistent_keepalive_interval=25\nreplace_allowed_ips=true\nallowed_ip=10.4.0.0/16\n",
		"public_key=" + hexKey(3) + "\nremove=true\n",
	} {
		if !strings.Contains(got, want) {
			t.Errorf("changes lack %q:\n%s", want, got)
		}
	}
	if strings.Contains(got, hexKey(1)) || strings.Contains(got, "replace_peers") {
		t.Errorf("an unchanged peer is set again, or all are replaced:\n%s", got)
	}
}

func TestBadSettings(t *testing.T) {
	dir := t.TempDir()
	if _, err := New("a/b", 51820, filepath.Join(dir, "k"), zaptest.NewLogger(t)); err == nil {
		t.Error("a device name with a slash was taken")
	}
	if _, err := New("zl0", 0, filepath.Join(dir, "k"), zaptest.NewLogger(t)); err == nil {
		t.Error("port 0 was taken")
	}
	bad := filepath.Join(dir, "bad")
	os.WriteFile(bad, []byte("not a key\n"), 0o600) //nolint:errcheck // read below
	if _, err := New("zl0", 51820, bad, zaptest.NewLogger(t)); err == nil || !strings.Contains(err.Error(), bad) {
		t.Errorf("a bad key file: %v, want an error naming it", err)
	}
}
