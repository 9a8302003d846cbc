package netns

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strings"
)

// Deployments are kept apart on the container network (SPEC.md, network:
// every service of a deployment reaches every other on the global overlay;
// nothing else reaches them unless an endpoint is public, which the proxy
// serves). Each agent enforces it for its own node in the filter table's
// FORWARD chain, through one chain of its own (isoChain):
//
//   - a container reaches the containers of its own deployment on any node,
//     and addresses outside every node's container subnet (the internet,
//     the LAN); other addresses in the container subnets are refused;
//   - a sender on the bridge the agent has not put in a deployment (a warm
//     namespace, a container whose rules are not in yet) reaches no
//     container subnet at all: the rules fail closed;
//   - traffic into the node's containers from off the bridge must come
//     from a container subnet: another node's container (checked by its
//     own agent, as the sender's) or another node's overlay device (its
//     proxy); the overlay admits from a peer only that peer's subnet;
//   - replies of allowed connections pass (conntrack).
//
// The node's own processes (its proxy, its health checks) reach the
// containers as local traffic, which never passes FORWARD. Traffic between
// containers on one bridge passes FORWARD through br_netfilter, which
// Setup turns on.

// Member is a container's address and the deployment it belongs to.
type Member struct {
	IP         netip.Addr
	Deployment string
}

// Isolation is what the node's rules are made from.
type Isolation struct {
	// Local are the node's containers that have an address.
	Local []Member
	// Cluster are the containers of every node, as the scheduler knows
	// them (running replicas); Local are added to them.
	Cluster []Member
	// Subnets are every node's container subnet; the node's own is added.
	Subnets []netip.Prefix
}

// isoChain is the node's chain in the filter table: "ZLISO-" and the same
// hash as the bridge name. A deployment's chain adds "-" and 8 hex digits
// of its name's hash (26 characters, within iptables' 28).
func isoChain(node string) string {
	return "ZLISO-" + strings.TrimPrefix(BridgeName(node), "zl")
}

func depChain(base, deployment string) string {
	h := sha256.Sum256([]byte(deployment))
	return base + "-" + hex.EncodeToString(h[:4])
}

// isoJumps are the FORWARD rules that send the bridge's traffic, both
// ways, through the node's chain.
func (n *Network) isoJumps() [][]string {
	br, c := BridgeName(n.cfg.Node), isoChain(n.cfg.Node)
	return [][]string{
		{"FORWARD", "-i", br, "-j", c},
		{"FORWARD", "-o", br, "-j", c},
	}
}

// bridgeNF is where the kernel says whether bridged IPv4 traffic passes
// iptables (br_netfilter).
const bridgeNF = "/proc/sys/net/bridge/bridge-nf-call-iptables"

// setupIsolation makes the node's chain (empty, so nothing is refused
// until Isolate fills it, unless rules from before a restart are still
// there: they are kept) and the jumps to it, and turns br_netfilter's
// iptables pass on.
func (n *Network) setupIsolation() error {
	b, err := os.ReadFile(bridgeNF)
	switch {
	case err != nil:
		return fmt.Errorf("containers on one node cannot be kept apart: %s: %v (load the br_netfilter module)", bridgeNF, err)
	case strings.TrimSpace(string(b)) != "1":
		if err := os.WriteFile(bridgeNF, []byte("1\n"), 0o644); err != nil {
			return fmt.Errorf("turn on %s: %w", bridgeNF, err)
		}
	}
	c := isoChain(n.cfg.Node)
	if n.iptFilter("-S", c) != nil {
		if err := n.iptFilter("-N", c); err != nil {
			return err
		}
	}
	for _, j := range n.isoJumps() {
		if n.iptFilter(append([]string{"-C"}, j...)...) == nil {
			continue
		}
		if err := n.iptFilter(append([]string{"-I", j[0], "1"}, j[1:]...)...); err != nil {
			return err
		}
	}
	return nil
}

// teardownIsolation removes the jumps and the node's chains.
func (n *Network) teardownIsolation() error {
	var errs []error
	for _, j := range n.isoJumps() {
		for n.iptFilter(append([]string{"-C"}, j...)...) == nil {
			if err := n.iptFilter(append([]string{"-D"}, j...)...); err != nil {
				errs = append(errs, err)
				break
			}
		}
	}
	chains, err := n.isoChains()
	if err != nil {
		return errors.Join(append(errs, err)...)
	}
	for _, c := range chains {
		n.iptFilter("-F", c) //nolint:errcheck // -X says what went wrong
	}
	for _, c := range chains {
		if err := n.iptFilter("-X", c); err != nil {
			errs = append(errs, err)
		}
	}
	n.isoMu.Lock()
	n.isoLast, n.isoDeps = "", nil
	n.isoMu.Unlock()
	return errors.Join(errs...)
}

// isoChains lists the node's chains in the filter table.
func (n *Network) isoChains() ([]string, error) {
	out, err := exec.Command(n.iptables, "-w", "-t", "filter", "-S").Output()
	if err != nil {
		return nil, fmt.Errorf("iptables -S: %w", err)
	}
	base := isoChain(n.cfg.Node)
	var chains []string
	for _, line := range strings.Split(string(out), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && f[0] == "-N" && (f[1] == base || strings.HasPrefix(f[1], base+"-")) {
			chains = append(chains, f[1])
		}
	}
	return chains, nil
}

// Isolate replaces the node's rules with those for in, in one
// iptables-restore transaction: there is never a moment with half of
// them. Rules equal to the last ones applied are not applied again.
// Chains of deployments the node no longer has are deleted.
func (n *Network) Isolate(in Isolation) error {
	rules, deps := n.isolationRules(in)
	n.isoMu.Lock()
	defer n.isoMu.Unlock()
	if rules == n.isoLast {
		return nil
	}
	cmd := exec.Command(n.iptables+"-restore", "-w", "--noflush")
	cmd.Stdin = strings.NewReader(rules)
	if out, err := cmd.CombinedOutput(); err != nil {
		n.isoLast = ""
		return fmt.Errorf("isolate deployments: %s-restore: %v: %s", n.iptables, err, strings.TrimSpace(string(out)))
	}
	n.isoLast = rules
	if n.isoDeps != nil && slices.Equal(deps, n.isoDeps) {
		return nil
	}
	// The first time, and when the node's deployments changed: chains
	// nothing jumps to any more are deleted.
	chains, err := n.isoChains()
	if err != nil {
		return fmt.Errorf("isolate deployments: %w", err)
	}
	base := isoChain(n.cfg.Node)
	var errs []error
	for _, c := range chains {
		if c != base && !slices.Contains(deps, c) {
			n.iptFilter("-F", c) //nolint:errcheck // -X says what went wrong
			if err := n.iptFilter("-X", c); err != nil {
				errs = append(errs, err)
			}
		}
	}
	if len(errs) > 0 {
		return fmt.Errorf("isolate deployments: old chains: %w", errors.Join(errs...))
	}
	n.isoDeps = deps
	return nil
}

// isolationRules returns the iptables-restore input for in and the
// deployment chains it makes, sorted.
func (n *Network) isolationRules(in Isolation) (string, []string) {
	base, br := isoChain(n.cfg.Node), BridgeName(n.cfg.Node)
	subnets := []netip.Prefix{netip.MustParsePrefix(n.subnet.String())}
	for _, s := range in.Subnets {
		if s = s.Masked(); s.Addr().Is4() && !slices.Contains(subnets, s) {
			subnets = append(subnets, s)
		}
	}
	slices.SortFunc(subnets, func(a, b netip.Prefix) int { return a.Addr().Compare(b.Addr()) })

	local := slices.Clone(in.Local)
	slices.SortFunc(local, func(a, b Member) int { return a.IP.Compare(b.IP) })
	local = slices.CompactFunc(local, func(a, b Member) bool { return a.IP == b.IP })
	members := map[string][]netip.Addr{}
	for _, m := range append(slices.Clone(in.Cluster), local...) {
		if m.IP.Is4() && !slices.Contains(members[m.Deployment], m.IP) {
			members[m.Deployment] = append(members[m.Deployment], m.IP)
		}
	}
	var deps []string
	depOf := map[string]string{}
	for _, m := range local {
		if _, ok := depOf[m.Deployment]; !ok {
			depOf[m.Deployment] = depChain(base, m.Deployment)
			deps = append(deps, depOf[m.Deployment])
		}
	}
	slices.Sort(deps)

	var b bytes.Buffer
	rule := func(chain string, args ...string) {
		fmt.Fprintf(&b, "-A %s %s\n", chain, strings.Join(args, " "))
	}
	b.WriteString("*filter\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n", base)
	for _, c := range deps {
		fmt.Fprintf(&b, ":%s - [0:0]\n", c)
	}
	rule(base, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN")
	// From the node's containers: each to its deployment's chain.
	for _, m := range local {
		if !m.IP.Is4() {
			continue
		}
		src := netip.PrefixFrom(m.IP, 32).String()
		rule(base, "-i", br, "-s", src, "-j", depOf[m.Deployment])
		rule(base, "-i", br, "-s", src, "-j", "RETURN")
	}
	// From the bridge, not a container the agent has placed.
	for _, s := range subnets {
		rule(base, "-i", br, "-d", s.String(), "-j", "REJECT", "--reject-with", "icmp-admin-prohibited")
	}
	rule(base, "-i", br, "-j", "RETURN")
	// Into the node's containers from elsewhere.
	for _, s := range subnets {
		rule(base, "-s", s.String(), "-j", "RETURN")
	}
	rule(base, "-j", "DROP")

	depNames := make([]string, 0, len(depOf))
	for d := range depOf {
		depNames = append(depNames, d)
	}
	slices.Sort(depNames)
	for _, d := range depNames {
		ips := members[d]
		slices.SortFunc(ips, netip.Addr.Compare)
		for _, ip := range ips {
			rule(depOf[d], "-d", netip.PrefixFrom(ip, 32).String(), "-j", "RETURN")
		}
		for _, s := range subnets {
			rule(depOf[d], "-d", s.String(), "-j", "REJECT", "--reject-with", "icmp-admin-prohibited")
		}
	}
	b.WriteString("COMMIT\n")
	return b.String(), deps
}
