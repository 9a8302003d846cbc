package netns

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"

	"github.com/containernetworking/cni/libcni"
	"github.com/containernetworking/cni/pkg/types"
	current "github.com/containernetworking/cni/pkg/types/100"

	"zlayer.dev/libs/errkind"
)

// Config describes one node's container network.
type Config struct {
	Node     string // node name; every name below derives from it
	CIDR     string // the node's container subnet, e.g. 10.88.0.0/16
	BinDir   string // CNI plugins, e.g. /usr/lib/cni
	StateDir string // per node: IPAM leases and libcni's cache live here
	Iptables string // iptables binary; "" means look it up on PATH
}

// Network attaches namespaces to the node's bridge.
type Network struct {
	cfg      Config
	subnet   *net.IPNet
	cni      *libcni.CNIConfig
	bridge   *libcni.NetworkConfigList
	ipamDir  string
	iptables string

	isoMu sync.Mutex
	iso   isoView // guarded by isoMu
}

// IfName is the container side of the veth.
const IfName = "eth0"

// BridgeName is the node's bridge device: "zl" and a hash of the node name,
// within the kernel's 15-byte limit.
func BridgeName(node string) string {
	h := sha256.Sum256([]byte(node))
	return "zl" + hex.EncodeToString(h[:])[:11]
}

// NetworkName is the node's CNI network name.
func NetworkName(node string) string { return "zlayer-" + node }

// New checks cfg and prepares the CNI configuration. It changes nothing
// on the host; Setup does.
func New(cfg Config) (*Network, error) {
	_, subnet, err := net.ParseCIDR(cfg.CIDR)
	if err != nil || subnet.IP.To4() == nil {
		return nil, fmt.Errorf("container cidr %q: not an IPv4 CIDR: %w", cfg.CIDR, errkind.Invalid)
	}
	if ones, _ := subnet.Mask.Size(); ones > 30 {
		return nil, fmt.Errorf("container cidr %q: /%d leaves no room for containers (at most /30): %w", cfg.CIDR, ones, errkind.Invalid)
	}
	for _, p := range []string{"bridge", "host-local"} {
		if _, err := os.Stat(filepath.Join(cfg.BinDir, p)); err != nil {
			return nil, fmt.Errorf("cni plugin %s in %s: %w", p, cfg.BinDir, errkind.Unavailable)
		}
	}
	ipt := cfg.Iptables
	if ipt == "" {
		if ipt, err = exec.LookPath("iptables"); err != nil {
			return nil, fmt.Errorf("iptables: %w", errkind.Unavailable)
		}
	}
	n := &Network{
		cfg:      cfg,
		subnet:   subnet,
		cni:      libcni.NewCNIConfigWithCacheDir([]string{cfg.BinDir}, filepath.Join(cfg.StateDir, "cache"), nil),
		ipamDir:  filepath.Join(cfg.StateDir, "ipam"),
		iptables: ipt,
	}
	// The subnet's last address is the overlay's (its WireGuard device's
	// own address): containers get the ones before it.
	rng := map[string]string{"subnet": subnet.String()}
	if a := n.OverlayAddress(); a != "" {
		rng["rangeEnd"] = netip.MustParseAddr(a).Prev().String()
	}
	conf := map[string]any{
		"cniVersion": "1.0.0",
		"name":       NetworkName(cfg.Node),
		"plugins": []any{map[string]any{
			"type":        "bridge",
			"bridge":      BridgeName(cfg.Node),
			"isGateway":   true,
			"ipMasq":      false, // one NAT rule per node instead (Setup)
			"hairpinMode": true,
			"ipam": map[string]any{
				"type":    "host-local",
				"ranges":  [][]map[string]string{{rng}},
				"routes":  []map[string]string{{"dst": "0.0.0.0/0"}},
				"dataDir": n.ipamDir,
			},
		}},
	}
	b, _ := json.Marshal(conf)
	if n.bridge, err = libcni.ConfListFromBytes(b); err != nil {
		return nil, fmt.Errorf("cni config: %w", err)
	}
	return n, nil
}

// natComment marks the node's NAT rule.
func (n *Network) natRule() []string {
	s := n.subnet.String()
	return []string{"POSTROUTING", "-s", s, "!", "-d", s, "-m", "comment", "--comment", "zlayer " + n.cfg.Node, "-j", "MASQUERADE"}
}

func (n *Network) ipt(args ...string) error { return n.iptTable("nat", args...) }

func (n *Network) iptFilter(args ...string) error { return n.iptTable("filter", args...) }

func (n *Network) iptTable(table string, args ...string) error {
	out, err := exec.Command(n.iptables, append([]string{"-w", "-t", table}, args...)...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("iptables -t %s %s: %v: %s", table, strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// Setup installs the node's NAT rule and its isolation chain with the
// jumps to it (once; they stay across agent restarts, as the containers
// they serve do).
func (n *Network) Setup() error {
	if err := os.MkdirAll(n.ipamDir, 0o700); err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	if n.ipt(append([]string{"-C"}, n.natRule()...)...) != nil {
		if err := n.ipt(append([]string{"-A"}, n.natRule()...)...); err != nil {
			return fmt.Errorf("network setup: %w", err)
		}
	}
	if err := n.setupIsolation(); err != nil {
		return fmt.Errorf("network setup: %w", err)
	}
	return nil
}

// Teardown removes what Setup, Isolate and the bridge plugin made for the
// node: the NAT rule, the isolation chains and the bridge. It is for tests and node decommissioning;
// containers must have been removed first.
func (n *Network) Teardown() error {
	var errs []error
	if err := n.teardownIsolation(); err != nil {
		errs = append(errs, err)
	}
	for n.ipt(append([]string{"-C"}, n.natRule()...)...) == nil {
		if err := n.ipt(append([]string{"-D"}, n.natRule()...)...); err != nil {
			errs = append(errs, err)
			break
		}
	}
	if _, err := net.InterfaceByName(BridgeName(n.cfg.Node)); err == nil {
		if out, err := exec.Command("ip", "link", "del", BridgeName(n.cfg.Node)).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("delete bridge: %v: %s", err, out))
		}
	}
	return errors.Join(errs...)
}

// Attachment is a container's place on the network.
type Attachment struct {
	IP      net.IP
	Gateway net.IP
	Mask    net.IPMask
}

func (n *Network) rt(id, nsPath string) *libcni.RuntimeConf {
	return &libcni.RuntimeConf{ContainerID: id, NetNS: nsPath, IfName: IfName}
}

// Attach connects the namespace at nsPath (container id) to the bridge.
// (Its loopback is up already: Create does that.) Running out of
// addresses is errkind.Exhausted. On error nothing is left attached.
func (n *Network) Attach(ctx context.Context, id, nsPath string) (a Attachment, err error) {
	res, err := n.cni.AddNetworkList(ctx, n.bridge, n.rt(id, nsPath))
	if err != nil {
		n.cni.DelNetworkList(context.WithoutCancel(ctx), n.bridge, n.rt(id, nsPath))
		if exhausted(err) {
			return a, fmt.Errorf("cni add: no free address in %s: %v: %w", n.subnet, err, errkind.Exhausted)
		}
		return a, fmt.Errorf("cni add: %w", err)
	}
	r, err := current.NewResultFromResult(res)
	if err != nil || len(r.IPs) == 0 {
		n.cni.DelNetworkList(context.WithoutCancel(ctx), n.bridge, n.rt(id, nsPath))
		return a, fmt.Errorf("cni add: result without an address (%v)", err)
	}
	ip := r.IPs[0]
	return Attachment{IP: ip.Address.IP, Gateway: ip.Gateway, Mask: ip.Address.Mask}, nil
}

// exhausted reports whether a CNI error is host-local's "range full". The
// plugin returns it as text with the generic code, so text is the only
// signal there is.
func exhausted(err error) bool {
	var te *types.Error
	msg := err.Error()
	if errors.As(err, &te) {
		msg = te.Msg + " " + te.Details
	}
	return strings.Contains(msg, "no IP addresses available")
}

// Detach disconnects container id and frees its address. The namespace may
// already be gone (after a crash); the address is still freed.
func (n *Network) Detach(ctx context.Context, id, nsPath string) error {
	if _, err := os.Stat(nsPath); err != nil {
		nsPath = ""
	}
	if err := n.cni.DelNetworkList(ctx, n.bridge, n.rt(id, nsPath)); err != nil {
		return fmt.Errorf("cni del %s: %w", id, err)
	}
	return nil
}

// Leases returns the container ids holding an address, from host-local's
// lease files, for cleanup after a crash.
func (n *Network) Leases() (map[string]net.IP, error) {
	dir := filepath.Join(n.ipamDir, NetworkName(n.cfg.Node))
	ents, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read leases: %w", err)
	}
	out := map[string]net.IP{}
	for _, e := range ents {
		ip := net.ParseIP(e.Name())
		if ip == nil {
			continue
		}
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			continue
		}
		id, _, _ := strings.Cut(string(b), "\n")
		out[strings.TrimSpace(id)] = ip
	}
	return out, nil
}

// OverlayAddress is the subnet's last host address, which zlayer-overlay
// gives its WireGuard device: containers never get it. A subnet smaller
// than /29 keeps none ("").
func (n *Network) OverlayAddress() string {
	ones, bits := n.subnet.Mask.Size()
	if ones > 29 {
		return ""
	}
	a, _ := netip.AddrFromSlice(n.subnet.IP.To4())
	v := a.As4()
	x := uint32(v[0])<<24 | uint32(v[1])<<16 | uint32(v[2])<<8 | uint32(v[3])
	x |= 1<<(bits-ones) - 2 // broadcast - 1
	return netip.AddrFrom4([4]byte{byte(x >> 24), byte(x >> 16), byte(x >> 8), byte(x)}).String()
}
