package netns

import (
	"bytes"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"

	"github.com/vishvananda/netlink"
	"golang.org/x/sys/unix"
)

// Containers are kept apart by overlay (SPEC.md, network): every service
// of a deployment reaches every other on the deployment's global overlay,
// unless it is off it (global.enabled: false); a service's replicas reach
// each other on its service overlay, unless that is off; nothing else
// reaches them unless an endpoint is public, which the proxy serves. Each
// agent enforces it for its own node in the filter table's FORWARD chain,
// through one chain of its own (isoChain) and ipsets of addresses (one per
// overlay with containers on the node) and of subnets, which change
// without the rules:
//
//   - a container reaches the containers it shares an overlay with, on any
//     node, and addresses outside every node's container subnet (the
//     internet, the LAN); other addresses in the container subnets are
//     refused;
//   - a sender on the bridge the agent has not put on an overlay (a warm
//     namespace, a container whose rules are not in yet) reaches no
//     container subnet at all: the rules fail closed;
//   - traffic into the node's containers from off the bridge must come
//     through the node's overlay device from a container subnet: another
//     node's container (checked by its own agent, as the sender's) or
//     another node's overlay device (its proxy); WireGuard admits from a
//     peer only that peer's subnet;
//   - replies of allowed connections pass (conntrack).
//
// The node's own processes (its proxy, its health checks) reach the
// containers as local traffic, which never passes FORWARD. Traffic between
// containers on one bridge passes FORWARD through br_netfilter, which
// Setup turns on.

// Member is a container's address and the overlays it is on (such as
// "global/app" and "service/app/web"): containers reach each other when
// they share one.
type Member struct {
	IP     netip.Addr
	Groups []string
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
	// OverlayDevice is the node's WireGuard device, the only way in for
	// other nodes' traffic to the node's containers. "": there is none.
	OverlayDevice string
}

// ValidIfName reports whether s can name a network interface.
func ValidIfName(s string) bool {
	return s != "" && len(s) < 16 && s != "." && s != ".." && !strings.ContainsAny(s, "/: \t\n")
}

// Names. The node's chain in the filter table is "ZLISO-" and the hash in
// the bridge name. The ipsets are the bridge name and "-nets" (every node's
// container subnet, hash:net) or "-s" and a slot's number (hash:ip).
//
// A slot holds one overlay that has containers on the node: the addresses
// of its containers on any node. The rules name the slots, never the
// overlays, so an overlay's first container on the node only fills a free
// slot's set, through netlink, as every other start does: no iptables run
// on the start path. The rules change only when the node needs more slots
// than they have (minSlots, doubled).
func isoChain(node string) string {
	return "ZLISO-" + strings.TrimPrefix(BridgeName(node), "zl")
}

func netsSet(node string) string { return BridgeName(node) + "-nets" }

func slotSet(node string, i int) string { return BridgeName(node) + "-s" + strconv.Itoa(i) }

// minSlots is how many slots the rules have at first.
const minSlots = 16

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
	if errors.Is(err, os.ErrNotExist) {
		// A kernel with br_netfilter as a module (Debian's) has it
		// unloaded until something needs it.
		if mp, lerr := exec.LookPath("modprobe"); lerr == nil {
			if out, merr := exec.Command(mp, "br_netfilter").CombinedOutput(); merr != nil {
				err = fmt.Errorf("%w; modprobe br_netfilter: %v: %s", err, merr, strings.TrimSpace(string(out)))
			} else {
				b, err = os.ReadFile(bridgeNF)
			}
		}
	}
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

// teardownIsolation removes the jumps, the node's chains and its ipsets.
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
	if err := n.dropChains(chains); err != nil {
		errs = append(errs, err)
	}
	sets, err := n.isoSets()
	if err != nil {
		errs = append(errs, err)
	}
	for name := range sets {
		if err := netlink.IpsetDestroy(name); err != nil {
			errs = append(errs, fmt.Errorf("destroy ipset %s: %w", name, err))
		}
	}
	n.isoMu.Lock()
	n.iso = isoView{}
	n.isoMu.Unlock()
	return errors.Join(errs...)
}

// dropChains flushes and deletes chains (all flushed first: one may jump
// to another).
func (n *Network) dropChains(chains []string) error {
	for _, c := range chains {
		n.iptFilter("-F", c) //nolint:errcheck // -X says what went wrong
	}
	var errs []error
	for _, c := range chains {
		if err := n.iptFilter("-X", c); err != nil {
			errs = append(errs, err)
		}
	}
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

// isoView is what the node's rules and sets hold, as this Network made
// or read them.
type isoView struct {
	slots int                   // slots the rules have (or will have, !ruled); 0: not read yet
	dev   string                // the overlay device the rules let in
	ruled bool                  // the rules for slots and dev are in force
	group []string              // slot → overlay; "" is free
	ips   []map[netip.Addr]bool // slot → its set's entries
	nets  map[netip.Prefix]bool // the subnets set's entries
}

// isoSets reads the node's ipsets from the kernel.
func (n *Network) isoSets() (map[string]*netlink.IPSetResult, error) {
	all, err := netlink.IpsetListAll()
	if err != nil {
		return nil, fmt.Errorf("list ipsets: %w", err)
	}
	out := map[string]*netlink.IPSetResult{}
	for i := range all {
		name := all[i].SetName
		if !strings.HasPrefix(name, BridgeName(n.cfg.Node)+"-") {
			continue
		}
		// A large set comes in several messages, one result each.
		if r := out[name]; r != nil {
			r.Entries = append(r.Entries, all[i].Entries...)
		} else {
			out[name] = &all[i]
		}
	}
	return out, nil
}

// Isolate makes the node's rules and sets say in. Addresses move in and
// out of the slots' ipsets through netlink, without a process; the rules
// change (one iptables-restore transaction, never half applied) only when
// the node needs more slots. An address leaves its old set before it
// joins its new one, so in between it is refused, never let through.
// Addresses in the node's own subnet count only as Local says: the agent,
// not a table that may lag, knows whose they are.
func (n *Network) Isolate(in Isolation) error {
	if in.OverlayDevice != "" && !ValidIfName(in.OverlayDevice) {
		return fmt.Errorf("isolate deployments: overlay device %q: not an interface name", in.OverlayDevice)
	}
	own := netip.MustParsePrefix(n.subnet.String())
	nets := map[netip.Prefix]bool{own: true}
	for _, p := range in.Subnets {
		if p = p.Masked(); p.Addr().Is4() {
			nets[p] = true
		}
	}
	want := map[string]map[netip.Addr]bool{} // overlay → addresses
	for _, m := range in.Local {
		// A container on no overlay is in no slot: it fails closed.
		for _, g := range m.Groups {
			if m.IP.Is4() && g != "" {
				if want[g] == nil {
					want[g] = map[netip.Addr]bool{}
				}
				want[g][m.IP] = true
			}
		}
	}
	for _, m := range in.Cluster {
		for _, g := range m.Groups {
			if set := want[g]; set != nil && g != "" && m.IP.Is4() && !own.Contains(m.IP) {
				set[m.IP] = true
			}
		}
	}
	n.isoMu.Lock()
	defer n.isoMu.Unlock()
	if err := n.isolate(nets, want, in.Local, in.OverlayDevice); err != nil {
		n.iso = isoView{} // read the kernel's state again next time
		return fmt.Errorf("isolate deployments: %w", err)
	}
	return nil
}

func (n *Network) isolate(nets map[netip.Prefix]bool, want map[string]map[netip.Addr]bool, local []Member, dev string) error {
	node := n.cfg.Node
	v := &n.iso
	if v.slots == 0 {
		if err := n.readIsolation(local); err != nil {
			return err
		}
	}
	// Slots: an overlay keeps its own; one the node no longer has frees
	// it; a new one takes the first free slot, the rules growing when
	// there is none.
	slot := map[string]int{}
	for i, g := range v.group {
		if g != "" && want[g] != nil {
			slot[g] = i
		} else {
			v.group[i] = ""
		}
	}
	var added []string
	for g := range want {
		if _, ok := slot[g]; !ok {
			added = append(added, g)
		}
	}
	slices.Sort(added)
	slots, err := v.grow(node, len(slot)+len(added))
	if err != nil {
		return err
	}
	for _, g := range added {
		i := slices.Index(v.group, "")
		v.group[i], slot[g] = g, i
	}
	// Sets are emptied of leavers before anyone joins.
	for i, have := range v.ips {
		for a := range have {
			if !want[v.group[i]][a] {
				if err := ipsetChange(false, slotSet(node, i), netip.PrefixFrom(a, 32)); err != nil {
					return err
				}
				delete(have, a)
			}
		}
	}
	for p := range v.nets {
		if !nets[p] {
			if err := ipsetChange(false, netsSet(node), p); err != nil {
				return err
			}
			delete(v.nets, p)
		}
	}
	for g, ips := range want {
		i := slot[g]
		for a := range ips {
			if !v.ips[i][a] {
				if err := ipsetChange(true, slotSet(node, i), netip.PrefixFrom(a, 32)); err != nil {
					return err
				}
				v.ips[i][a] = true
			}
		}
	}
	for p := range nets {
		if !v.nets[p] {
			if err := ipsetChange(true, netsSet(node), p); err != nil {
				return err
			}
			v.nets[p] = true
		}
	}
	if slots == v.slots && dev == v.dev && v.ruled {
		return nil
	}
	cmd := exec.Command(n.iptables+"-restore", "-w", "--noflush")
	cmd.Stdin = strings.NewReader(n.isolationRules(slots, dev))
	if out, err := cmd.CombinedOutput(); err != nil {
		return fmt.Errorf("%s-restore: %v: %s", n.iptables, err, strings.TrimSpace(string(out)))
	}
	v.slots, v.dev, v.ruled = slots, dev, true
	// Chains of an older agent's rules, which nothing refers to now.
	chains, err := n.isoChains()
	if err != nil {
		return err
	}
	return n.dropChains(slices.DeleteFunc(chains, func(c string) bool { return c == isoChain(node) }))
}

// ipsetChange adds p to set or deletes it: an address (a /32, in a slot's
// hash:ip set) or a subnet (in the hash:net set). Adding what is there
// already is not an error.
func ipsetChange(add bool, set string, p netip.Prefix) error {
	e := &netlink.IPSetEntry{IP: p.Addr().AsSlice()}
	if p.Bits() < 32 {
		e.CIDR = uint8(p.Bits())
	}
	op, verb := netlink.IpsetDel, "delete"
	if add {
		op, verb, e.Replace = netlink.IpsetAdd, "add", true
	}
	if err := op(set, e); err != nil {
		return fmt.Errorf("ipset %s: %s %s: %w", set, verb, p, err)
	}
	return nil
}

// grow makes room for need slots: the slot count the rules need (at least
// the current one and minSlots, doubled until need fits), the view padded
// with free slots and their sets made. It returns that count.
func (v *isoView) grow(node string, need int) (int, error) {
	slots := max(v.slots, minSlots)
	for slots < need {
		slots *= 2
	}
	for i := len(v.group); i < slots; i++ {
		if err := netlink.IpsetCreate(slotSet(node, i), "hash:ip", netlink.IpsetCreateOptions{Replace: true}); err != nil {
			return 0, fmt.Errorf("create ipset %s: %w", slotSet(node, i), err)
		}
		v.group, v.ips = append(v.group, ""), append(v.ips, map[netip.Addr]bool{})
	}
	return slots, nil
}

// readIsolation starts the view from the kernel: the sets a previous agent
// left, each slot given to an overlay all its local addresses are on.
func (n *Network) readIsolation(local []Member) error {
	node := n.cfg.Node
	have, err := n.isoSets()
	if err != nil {
		return err
	}
	v := isoView{nets: map[netip.Prefix]bool{}}
	if r, ok := have[netsSet(node)]; ok {
		for _, e := range r.Entries {
			if a, ok := netip.AddrFromSlice(e.IP.To4()); ok {
				v.nets[netip.PrefixFrom(a, int(e.CIDR))] = true
			}
		}
	} else if err := netlink.IpsetCreate(netsSet(node), "hash:net", netlink.IpsetCreateOptions{}); err != nil {
		return fmt.Errorf("create ipset %s: %w", netsSet(node), err)
	}
	groupsOf := map[netip.Addr][]string{}
	for _, m := range local {
		groupsOf[m.IP] = m.Groups
	}
	taken := map[string]bool{}
	for i := 0; ; i++ {
		r, ok := have[slotSet(node, i)]
		if !ok {
			break
		}
		ips := map[netip.Addr]bool{}
		// The overlay every local address in the set is on; with none, the
		// slot is free and its entries go.
		var common []string
		first := true
		for _, e := range r.Entries {
			a, ok := netip.AddrFromSlice(e.IP.To4())
			if !ok {
				continue
			}
			ips[a] = true
			if gs, local := groupsOf[a]; local {
				if first {
					common, first = slices.Clone(gs), false
				} else {
					common = slices.DeleteFunc(common, func(g string) bool { return !slices.Contains(gs, g) })
				}
			}
		}
		group := ""
		for _, g := range common {
			if !taken[g] {
				group = g
				break
			}
		}
		taken[group] = group != ""
		v.group, v.ips = append(v.group, group), append(v.ips, ips)
	}
	// The rules are rewritten once (their slot count is not read back):
	// slots the sets had, at least minSlots.
	if v.slots, err = v.grow(node, len(v.group)); err != nil {
		return err
	}
	n.iso = v
	return nil
}

// Verify puts back what someone else took away, such as a firewall's
// reload flushing FORWARD or the node's chain: the jumps and the chain are
// made again and the next Isolate rewrites the rules. (The ipsets cannot
// be destroyed while the rules refer to them.) It reports whether anything
// was missing.
func (n *Network) Verify() (bool, error) {
	n.isoMu.Lock()
	defer n.isoMu.Unlock()
	if !n.iso.ruled {
		return false, nil
	}
	intact := true
	for _, j := range n.isoJumps() {
		if n.iptFilter(append([]string{"-C"}, j...)...) != nil {
			intact = false
		}
	}
	out, err := exec.Command(n.iptables, "-w", "-t", "filter", "-S", isoChain(n.cfg.Node)).Output()
	base := isoChain(n.cfg.Node)
	want := strings.Count(n.isolationRules(n.iso.slots, n.iso.dev), "-A "+base+" ")
	if err != nil || strings.Count(string(out), "-A "+base+" ") != want {
		intact = false
	}
	if intact {
		return false, nil
	}
	n.iso.ruled = false
	if err := n.setupIsolation(); err != nil {
		return true, fmt.Errorf("verify isolation: %w", err)
	}
	return true, nil
}

// Forget deletes the connections tracked from or to ip, so that replies
// of a removed container's connections are not let through to whoever
// gets its address next (the rules let established connections pass).
func (n *Network) Forget(ip netip.Addr) error {
	var filters []netlink.CustomConntrackFilter
	for _, t := range []netlink.ConntrackFilterType{netlink.ConntrackOrigSrcIP, netlink.ConntrackOrigDstIP} {
		f := &netlink.ConntrackFilter{}
		if err := f.AddIP(t, ip.AsSlice()); err != nil {
			return fmt.Errorf("forget %s: %w", ip, err)
		}
		filters = append(filters, f)
	}
	if _, err := netlink.ConntrackDeleteFilters(netlink.ConntrackTable, unix.AF_INET, filters...); err != nil {
		return fmt.Errorf("forget %s: conntrack: %w", ip, err)
	}
	return nil
}

// isolationRules returns the iptables-restore input for the node's chains
// with slots slots, letting other nodes in through dev.
func (n *Network) isolationRules(slots int, dev string) string {
	node := n.cfg.Node
	base, br, nets := isoChain(node), BridgeName(node), netsSet(node)
	var b bytes.Buffer
	rule := func(chain string, args ...string) {
		fmt.Fprintf(&b, "-A %s %s\n", chain, strings.Join(args, " "))
	}
	reject := []string{"-j", "REJECT", "--reject-with", "icmp-admin-prohibited"}
	b.WriteString("*filter\n")
	fmt.Fprintf(&b, ":%s - [0:0]\n", base)
	rule(base, "-m", "conntrack", "--ctstate", "RELATED,ESTABLISHED", "-j", "RETURN")
	// From the node's containers: to a container on an overlay they share.
	for i := range slots {
		set := slotSet(node, i)
		rule(base, "-i", br, "-m", "set", "--match-set", set, "src", "-m", "set", "--match-set", set, "dst", "-j", "RETURN")
	}
	// To no other container; to the world outside the subnets.
	rule(base, append([]string{"-i", br, "-m", "set", "--match-set", nets, "dst"}, reject...)...)
	rule(base, "-i", br, "-j", "RETURN")
	// Into the node's containers from elsewhere: other nodes, through the
	// overlay.
	if dev != "" {
		rule(base, "-i", dev, "-m", "set", "--match-set", nets, "src", "-j", "RETURN")
	}
	rule(base, "-j", "DROP")
	b.WriteString("COMMIT\n")
	return b.String()
}
