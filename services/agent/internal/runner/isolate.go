package runner

import (
	"fmt"
	"net/netip"
	"slices"

	"go.uber.org/zap"

	"zlayer.dev/services/agent/internal/netns"
)

// The node's containers are kept apart by overlay (netns.Isolate). A
// container is placed in its overlays' rules as soon as it has an
// address and before anything runs in it: until then it reaches no
// container subnet (the rules fail closed for addresses nobody placed).

// placed is a container's address and the spec's word on its overlays.
type placed struct {
	ip netip.Addr
	s  Spec
}

// place records that the container of spec s has address ip.
func (rn *Runner) place(ip netip.Addr, s Spec) {
	rn.mu.Lock()
	rn.addrs[s.ID] = placed{ip: ip, s: s}
	rn.mu.Unlock()
}

// groups are the overlays of a placed container: its spec's, or, for a
// spec without them (from an older scheduler, or recorded before
// overlays), what the scheduler's members say of its address, or its
// deployment's global overlay.
func (p placed) groups(members map[netip.Addr][]string) []string {
	switch g, ok := members[p.ip]; {
	case p.s.GroupsSet:
		return p.s.Groups
	case ok:
		return g
	default:
		return []string{"global/" + p.s.Identity.Deployment}
	}
}

// unplace forgets the container's address. Its rules stay until the next
// isolate; the address is refused to a later holder until then, as no
// one placed it for them.
func (rn *Runner) unplace(id string) {
	rn.mu.Lock()
	delete(rn.addrs, id)
	rn.mu.Unlock()
}

// unplaceNow takes the container out of its overlays' rules at once
// and forgets the connections its address had, so that whoever gets the
// address next inherits neither. A failure is logged: the address is then
// still its old deployment's until a later isolate succeeds (every create
// does one before it runs anything).
func (rn *Runner) unplaceNow(id string, log *zap.Logger) {
	rn.mu.Lock()
	p, ok := rn.addrs[id]
	rn.mu.Unlock()
	rn.unplace(id)
	if err := rn.isolate(); err != nil {
		log.Warn("rules without the container", zap.Error(err))
	}
	if ok {
		if err := rn.net.Forget(p.ip); err != nil {
			log.Warn("forget the container's connections", zap.String("ip", p.ip.String()), zap.Error(err))
		}
	}
}

// isolate applies the rules for the node's placed containers, the
// cluster's members and the nodes' subnets. Calls are serialised, so
// the last snapshot taken is the last applied.
func (rn *Runner) isolate() error {
	rn.isoMu.Lock()
	defer rn.isoMu.Unlock()
	rn.mu.Lock()
	in := netns.Isolation{Subnets: slices.Clone(rn.subnets), OverlayDevice: rn.overlayDevice, Cluster: slices.Clone(rn.members)}
	byIP := map[netip.Addr][]string{}
	for _, m := range rn.members {
		byIP[m.IP] = m.Groups
	}
	for _, p := range rn.addrs {
		in.Local = append(in.Local, netns.Member{IP: p.ip, Groups: p.groups(byIP)})
	}
	rn.mu.Unlock()
	if err := rn.net.Isolate(in); err != nil {
		return fmt.Errorf("keep deployments apart: %w", err)
	}
	return nil
}
