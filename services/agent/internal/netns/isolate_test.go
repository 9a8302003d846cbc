package netns

import (
	"context"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// TestIsolation puts real namespaces on a node's bridge through CNI and
// checks, with TCP connections, who reaches whom under the node's rules.
// "lan" is a namespace behind a veth on the host, standing for the world
// outside the node or, when its subnet is listed, for another node.
func TestIsolation(t *testing.T) {
	node := fmt.Sprintf("isotest%d", os.Getpid())
	n, err := New(Config{Node: node, CIDR: "10.213.0.0/24", BinDir: "/usr/lib/cni", StateDir: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	if err := n.Setup(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Teardown(); err != nil {
			t.Errorf("teardown: %v", err)
		}
		if out, _ := exec.Command("iptables", "-w", "-S").Output(); strings.Contains(string(out), isoChain(node)) {
			t.Errorf("teardown left rules:\n%s", out)
		}
		if sets, err := n.isoSets(); err != nil || len(sets) > 0 {
			t.Errorf("teardown left ipsets: %v %v", sets, err)
		}
	})

	dir := t.TempDir()
	ctx := context.Background()
	ns := map[string]string{}   // name -> namespace path
	addr := map[string]string{} // name -> IPv4 address
	for _, name := range []string{"a1", "a2", "b1", "warm"} {
		p := filepath.Join(dir, name)
		if err := Create(p); err != nil {
			t.Fatal(err)
		}
		a, err := n.Attach(ctx, name, p)
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() {
			n.Detach(ctx, name, p) //nolint:errcheck // best effort in a test
			Remove(p)              //nolint:errcheck // best effort in a test
		})
		ns[name], addr[name] = p, a.IP.String()
	}
	lan := fmt.Sprintf("zltlan%d", os.Getpid())
	host := "zlt" + fmt.Sprint(os.Getpid())
	for _, c := range [][]string{
		{"netns", "add", lan},
		{"link", "add", host, "type", "veth", "peer", "name", "eth0", "netns", lan},
		{"addr", "add", "10.214.0.1/24", "dev", host},
		{"link", "set", host, "up"},
		{"-n", lan, "addr", "add", "10.214.0.5/24", "dev", "eth0"},
		{"-n", lan, "link", "set", "eth0", "up"},
		{"-n", lan, "link", "set", "lo", "up"},
		{"-n", lan, "route", "add", "10.213.0.0/24", "via", "10.214.0.1"},
	} {
		if out, err := exec.Command("ip", c...).CombinedOutput(); err != nil {
			t.Fatalf("ip %s: %v: %s", strings.Join(c, " "), err, out)
		}
		if c[0] == "netns" {
			t.Cleanup(func() { exec.Command("ip", "netns", "del", lan).Run() }) //nolint:errcheck // best effort
		}
	}
	ns["lan"], addr["lan"] = "/var/run/netns/"+lan, "10.214.0.5"
	// No IPv6 on the containers' side: a link-local address would get
	// around the (IPv4) rules.
	if err := Do(ns["a1"], func() error {
		ifc, err := net.InterfaceByName(IfName)
		if err != nil {
			return err
		}
		as, err := ifc.Addrs()
		for _, a := range as {
			if p, perr := netip.ParsePrefix(a.String()); perr == nil && p.Addr().Is6() {
				return fmt.Errorf("%s has IPv6 address %s", IfName, a)
			}
		}
		return err
	}); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile("/proc/sys/net/ipv4/ip_forward"); strings.TrimSpace(string(b)) != "1" {
		t.Fatalf("ip_forward is %q after the bridge plugin ran", b)
	}

	for name, p := range ns {
		if err := Do(p, func() error {
			l, err := net.Listen("tcp4", ":7070")
			if err != nil {
				return err
			}
			t.Cleanup(func() { l.Close() })
			go func() {
				for {
					c, err := l.Accept()
					if err != nil {
						return
					}
					c.Close()
				}
			}()
			return nil
		}); err != nil {
			t.Fatalf("listen in %s: %v", name, err)
		}
	}
	reach := func(from, to string) bool {
		var err error
		if derr := Do(ns[from], func() error {
			var c net.Conn
			c, err = net.DialTimeout("tcp4", net.JoinHostPort(addr[to], "7070"), 700*time.Millisecond)
			if err == nil {
				c.Close()
			}
			return nil
		}); derr != nil {
			t.Fatal(derr)
		}
		return err == nil
	}
	check := func(step string, want map[[2]string]bool) {
		t.Helper()
		for pair, ok := range want {
			if got := reach(pair[0], pair[1]); got != ok {
				out, _ := exec.Command("iptables", "-w", "-S").Output()
				t.Fatalf("%s: %s reaches %s = %v, want %v\nrules:\n%s", step, pair[0], pair[1], got, ok, out)
			}
		}
	}
	m := func(name string, groups ...string) Member {
		return Member{IP: netip.MustParseAddr(addr[name]), Groups: groups}
	}

	// Setup alone refuses nothing: its chain is empty until Isolate.
	check("before Isolate", map[[2]string]bool{{"a1", "b1"}: true, {"lan", "a1"}: true, {"warm", "a2"}: true})

	local := []Member{m("a1", "a"), m("a2", "a"), m("b1", "b")}
	if err := n.Isolate(Isolation{Local: local}); err != nil {
		t.Fatal(err)
	}
	check("deployments a and b", map[[2]string]bool{
		{"a1", "a2"}: true, {"a2", "a1"}: true,
		{"a1", "b1"}: false, {"b1", "a2"}: false,
		{"warm", "a1"}: false, // not placed in a deployment: fails closed
		{"lan", "a1"}:  false, // from outside the container subnets
		{"a1", "lan"}:  true,  // the outside world, and its replies
		{"b1", "lan"}:  true,
	})

	// The lan's subnet is now another node's, and its address a replica of a.
	remote := netip.MustParsePrefix("10.214.0.0/24")
	if err := n.Isolate(Isolation{Local: local, Cluster: []Member{m("lan", "a")}, Subnets: []netip.Prefix{remote}, OverlayDevice: host}); err != nil {
		t.Fatal(err)
	}
	check("a replica of a on another node", map[[2]string]bool{
		{"a1", "lan"}: true, {"b1", "lan"}: false, {"lan", "a1"}: true, {"a1", "b1"}: false,
	})
	// Other nodes come in through the overlay device only: from any other
	// interface a source in a container subnet is spoofed.
	if err := n.Isolate(Isolation{Local: local, Cluster: []Member{m("lan", "a")}, Subnets: []netip.Prefix{remote}, OverlayDevice: "zl-nowg0"}); err != nil {
		t.Fatal(err)
	}
	check("another node, not through the overlay device", map[[2]string]bool{{"lan", "a1"}: false, {"a1", "lan"}: true, {"a1", "a2"}: true})
	if err := n.Isolate(Isolation{Local: local, Cluster: []Member{m("lan", "a")}, Subnets: []netip.Prefix{remote}, OverlayDevice: host}); err != nil {
		t.Fatal(err)
	}

	// b is gone from the node: its chain is deleted; b1's address is
	// nobody's and fails closed.
	if err := n.Isolate(Isolation{Local: local[:2], Subnets: []netip.Prefix{remote}, OverlayDevice: host}); err != nil {
		t.Fatal(err)
	}
	check("b gone", map[[2]string]bool{{"b1", "a1"}: false, {"a1", "a2"}: true, {"a1", "lan"}: false})
	chains, err := n.isoChains()
	if err != nil {
		t.Fatal(err)
	}
	if len(chains) != 1 {
		t.Errorf("chains %v, want the node's only", chains)
	}
	sets, err := n.isoSets()
	if err != nil || len(sets) != 1+minSlots {
		t.Fatalf("ipsets %v (%v), want the subnets' and %d slots'", sets, err, minSlots)
	}
	for name, r := range sets {
		for _, e := range r.Entries {
			if e.IP.String() == addr["b1"] {
				t.Errorf("b1's address is still in %s", name)
			}
		}
	}

	// b1's address is given to a container of a: only sets change.
	rules, _ := exec.Command("iptables", "-w", "-S").Output()
	local = append(local[:2], m("b1", "a"))
	if err := n.Isolate(Isolation{Local: local, Subnets: []netip.Prefix{remote}, OverlayDevice: host}); err != nil {
		t.Fatal(err)
	}
	check("b1's address in a", map[[2]string]bool{{"b1", "a1"}: true, {"a2", "b1"}: true, {"b1", "lan"}: false})
	// A deployment new on the node takes a free slot.
	if err := n.Isolate(Isolation{Local: append(local[:2:2], m("b1", "c")), Subnets: []netip.Prefix{remote}, OverlayDevice: host}); err != nil {
		t.Fatal(err)
	}
	check("b1's address in c", map[[2]string]bool{{"b1", "a1"}: false, {"a2", "b1"}: false, {"a1", "a2"}: true})
	if now, _ := exec.Command("iptables", "-w", "-S").Output(); string(now) != string(rules) {
		t.Errorf("rules changed when containers came and went:\n%s\nwas\n%s", now, rules)
	}
	// Two overlays: b1 (only on "s") and a2 (on "a" and "s") share "s".
	if err := n.Isolate(Isolation{Local: []Member{m("a1", "a"), m("a2", "a", "s"), m("b1", "s")}, Subnets: []netip.Prefix{remote}, OverlayDevice: host}); err != nil {
		t.Fatal(err)
	}
	check("overlays a and s", map[[2]string]bool{
		{"b1", "a2"}: true, {"a2", "b1"}: true, {"a1", "a2"}: true, {"b1", "a1"}: false, {"a1", "b1"}: false,
	})
	local[2] = m("b1", "a")
	if err := n.Isolate(Isolation{Local: local, Subnets: []netip.Prefix{remote}, OverlayDevice: host}); err != nil {
		t.Fatal(err)
	}

	// Forget drops what conntrack knows of an address.
	tracked := func(ip string) int {
		flows, err := netlink.ConntrackTableList(netlink.ConntrackTable, unix.AF_INET)
		if err != nil {
			t.Fatal(err)
		}
		k := 0
		for _, f := range flows {
			if f.Forward.SrcIP.String() == ip || f.Forward.DstIP.String() == ip {
				k++
			}
		}
		return k
	}
	var held net.Conn
	if err := Do(ns["a1"], func() error {
		var err error
		held, err = net.DialTimeout("tcp4", net.JoinHostPort(addr["a2"], "7070"), time.Second)
		return err
	}); err != nil {
		t.Fatal(err)
	}
	defer held.Close()
	if tracked(addr["a1"]) == 0 {
		t.Fatalf("no connection of %s tracked", addr["a1"])
	}
	if err := n.Forget(netip.MustParseAddr(addr["a1"])); err != nil {
		t.Fatal(err)
	}
	if k := tracked(addr["a1"]); k != 0 {
		t.Errorf("%d connections of %s still tracked after Forget", k, addr["a1"])
	}

	// More deployments than slots: the rules grow, and still hold.
	many := slices.Clone(local)
	for i := range minSlots {
		many = append(many, Member{IP: netip.AddrFrom4([4]byte{10, 213, 0, byte(100 + i)}), Groups: []string{fmt.Sprintf("d%d", i)}})
	}
	if err := n.Isolate(Isolation{Local: many, Subnets: []netip.Prefix{remote}, OverlayDevice: host}); err != nil {
		t.Fatal(err)
	}
	if sets, _ := n.isoSets(); len(sets) != 1+2*minSlots {
		t.Errorf("%d ipsets for %d overlays, want %d", len(sets), minSlots+1, 1+2*minSlots)
	}
	check("many deployments", map[[2]string]bool{{"b1", "a1"}: true, {"a1", "a2"}: true, {"warm", "a1"}: false})
	if err := n.Isolate(Isolation{Local: local, Subnets: []netip.Prefix{remote}, OverlayDevice: host}); err != nil {
		t.Fatal(err)
	}

	// Someone else flushes the chain and the jumps: Verify notices and
	// the next Isolate puts the rules back.
	if missing, err := n.Verify(); err != nil || missing {
		t.Fatalf("Verify of intact rules: %v, %v", missing, err)
	}
	for _, args := range [][]string{{"-F", isoChain(node)}, {"-D", "FORWARD", "-i", BridgeName(node), "-j", isoChain(node)}} {
		if out, err := exec.Command("iptables", append([]string{"-w"}, args...)...).CombinedOutput(); err != nil {
			t.Fatalf("iptables %v: %v: %s", args, err, out)
		}
	}
	check("rules flushed by someone else", map[[2]string]bool{{"warm", "a1"}: true})
	if missing, err := n.Verify(); err != nil || !missing {
		t.Fatalf("Verify of flushed rules: %v, %v", missing, err)
	}
	if err := n.Isolate(Isolation{Local: local, Subnets: []netip.Prefix{remote}, OverlayDevice: host}); err != nil {
		t.Fatal(err)
	}
	check("rules put back", map[[2]string]bool{{"warm", "a1"}: false, {"b1", "a1"}: true, {"lan", "a1"}: true})

	// A restarted agent sets up again: the rules in force stay until its
	// first Isolate replaces them.
	n2, err := New(Config{Node: node, CIDR: "10.213.0.0/24", BinDir: "/usr/lib/cni", StateDir: n.cfg.StateDir})
	if err != nil {
		t.Fatal(err)
	}
	if err := n2.Setup(); err != nil {
		t.Fatal(err)
	}
	check("after a second Setup", map[[2]string]bool{{"warm", "a1"}: false, {"b1", "a1"}: true})
	// Its first Isolate starts from what is in the kernel.
	if err := n2.Isolate(Isolation{Local: local[:2], Subnets: []netip.Prefix{remote}, OverlayDevice: host}); err != nil {
		t.Fatal(err)
	}
	check("the second Network's first Isolate", map[[2]string]bool{{"b1", "a1"}: false, {"a1", "a2"}: true, {"lan", "a2"}: true})
}
