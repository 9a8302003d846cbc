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

// place records that the container id has address ip on the overlays
// groups.
func (rn *Runner) place(id string, ip netip.Addr, groups []string) {
	rn.mu.Lock()
	rn.addrs[id] = netns.Member{IP: ip, Groups: groups}
	rn.mu.Unlock()
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
	m, placed := rn.addrs[id]
	rn.mu.Unlock()
	rn.unplace(id)
	if err := rn.isolate(); err != nil {
		log.Warn("rules without the container", zap.Error(err))
	}
	if placed {
		if err := rn.net.Forget(m.IP); err != nil {
			log.Warn("forget the container's connections", zap.String("ip", m.IP.String()), zap.Error(err))
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
	in := netns.Isolation{Subnets: slices.Clone(rn.subnets), OverlayDevice: rn.overlayDevice}
	for _, m := range rn.addrs {
		in.Local = append(in.Local, m)
	}
	in.Cluster = slices.Clone(rn.members)
	rn.mu.Unlock()
	if err := rn.net.Isolate(in); err != nil {
		return fmt.Errorf("keep deployments apart: %w", err)
	}
	return nil
}
