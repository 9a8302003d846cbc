package runner

import (
	"bytes"
	"encoding/json"
	"fmt"
	"maps"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"go.uber.org/zap"

	"zlayer.dev/services/agent/internal/atomicfile"
	"zlayer.dev/services/agent/internal/bundle"
	"zlayer.dev/services/agent/internal/netns"
)

// Name is one service name a deployment's containers resolve, such as
// db.global, with one of its addresses. The scheduler pushes the table;
// each container's /etc/hosts carries its own deployment's names.
type Name struct {
	Deployment string
	Name       string
	IP         string
}

// SetNames replaces the table of service names, the cluster's members and
// their overlays, the nodes' container subnets and the name of the node's
// overlay device, rewrites the hosts file of every container whose names changed
// and applies the node's isolation rules for them.
func (rn *Runner) SetNames(names []Name, members []netns.Member, subnets []netip.Prefix, overlayDevice string) error {
	byDep := byDeployment(names)
	members = membersOr(members, names)
	rn.mu.Lock()
	if overlayDevice == "" {
		// Not known to a scheduler that has just started: the device is
		// still there, and other nodes' traffic still comes through it.
		overlayDevice = rn.overlayDevice
	}
	old, oldMembers, oldSubnets, oldDevice := rn.names, rn.members, rn.subnets, rn.overlayDevice
	rn.names, rn.members, rn.subnets, rn.overlayDevice = byDep, members, subnets, overlayDevice
	verify := time.Since(rn.verified) >= verifyEvery
	if verify {
		rn.verified = time.Now()
	}
	cs := make([]*container, 0, len(rn.ctrs))
	for id, c := range rn.ctrs {
		if !rn.creating[id] {
			cs = append(cs, c)
		}
	}
	rn.mu.Unlock()
	if verify {
		if missing, err := rn.net.Verify(); err != nil {
			rn.log.Error("isolation rules", zap.Error(err))
		} else if missing {
			rn.log.Warn("isolation rules were removed by someone else; putting them back")
		}
	}
	// The rules first: a name must not resolve to an address its
	// containers are not yet let through to.
	ierr := rn.isolate()
	for _, c := range cs {
		c.mu.Lock()
		rec := c.rec
		c.mu.Unlock()
		dep := rec.Spec.Identity.Deployment
		if slices.Equal(old[dep], byDep[dep]) || rec.IP == "" || (rec.State != StateRunning && rec.State != StateCreating) {
			continue
		}
		if err := rn.writeHosts(rec); err != nil {
			rn.log.Warn("rewrite hosts", zap.String("container", rec.ID()), zap.Error(err))
		}
	}
	sameMembers := slices.EqualFunc(oldMembers, members, func(a, b netns.Member) bool {
		return a.IP == b.IP && slices.Equal(a.Groups, b.Groups)
	})
	if !maps.EqualFunc(old, byDep, slices.Equal) || !sameMembers || !slices.Equal(oldSubnets, subnets) || oldDevice != overlayDevice {
		// Kept for a restarted agent: its rules then let remote replicas
		// in from the start, not once the scheduler has pushed again.
		b, _ := json.Marshal(savedNames{Names: names, Members: members, Subnets: subnets, OverlayDevice: overlayDevice})
		if err := atomicfile.Write(rn.namesFile(), b, 0o600); err != nil {
			rn.log.Warn("save names", zap.Error(err))
		}
	}
	return ierr
}

// verifyEvery is how often SetNames (pushed every few seconds) checks that
// the isolation rules are still in place.
const verifyEvery = 10 * time.Second

// membersOr returns members or, when there are none, the members names
// imply: each name's address on its deployment's global overlay. Every
// running replica on the global overlay has a name, so with members empty
// the two agree; an older scheduler (or a table saved by an older agent)
// sends names only.
func membersOr(members []netns.Member, names []Name) []netns.Member {
	if len(members) > 0 {
		return members
	}
	var out []netns.Member
	for _, n := range names {
		if ip, err := netip.ParseAddr(n.IP); err == nil {
			out = append(out, netns.Member{IP: ip, Groups: []string{"global/" + n.Deployment}})
		}
	}
	return out
}

// byDeployment groups names by deployment, each group sorted.
func byDeployment(names []Name) map[string][]Name {
	byDep := map[string][]Name{}
	for _, n := range names {
		byDep[n.Deployment] = append(byDep[n.Deployment], n)
	}
	for _, ns := range byDep {
		slices.SortFunc(ns, func(a, b Name) int { return strings.Compare(a.Name+" "+a.IP, b.Name+" "+b.IP) })
	}
	return byDep
}

// savedNames is the last table SetNames got, on disk.
type savedNames struct {
	Names         []Name
	Members       []netns.Member
	Subnets       []netip.Prefix
	OverlayDevice string
}

func (rn *Runner) namesFile() string { return filepath.Join(rn.cfg.StateDir, "names.json") }

// loadNames takes the table saved by the last agent, if there is one.
func (rn *Runner) loadNames() {
	b, err := os.ReadFile(rn.namesFile())
	if err != nil {
		return
	}
	var sn savedNames
	if err := json.Unmarshal(b, &sn); err != nil {
		rn.log.Warn("saved names unreadable; waiting for the scheduler's", zap.Error(err))
		return
	}
	byDep := byDeployment(sn.Names)
	rn.mu.Lock()
	rn.names, rn.members, rn.subnets, rn.overlayDevice = byDep, membersOr(sn.Members, sn.Names), sn.Subnets, sn.OverlayDevice
	rn.mu.Unlock()
}

// hostsFile is a container's /etc/hosts: its own name, then its
// deployment's service names.
func (rn *Runner) hostsFile(rec Record) []byte {
	var b bytes.Buffer
	b.Write(bundle.Hosts(hostname(rec.Spec), net.ParseIP(rec.IP)))
	rn.mu.Lock()
	names := rn.names[rec.Spec.Identity.Deployment]
	rn.mu.Unlock()
	for _, n := range names {
		fmt.Fprintf(&b, "%s\t%s\n", n.IP, n.Name)
	}
	return b.Bytes()
}

// writeHosts rewrites the container's hosts file in place: it is bind
// mounted into the container, so it must keep its inode.
func (rn *Runner) writeHosts(rec Record) error {
	return os.WriteFile(filepath.Join(rn.dir(rec.ID()), "hosts"), rn.hostsFile(rec), 0o644)
}

// resolve looks a service name of the deployment up in the table; other
// names are returned as they are, for the system resolver.
func (rn *Runner) resolve(deployment, host string) string {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	for _, n := range rn.names[deployment] {
		if n.Name == host {
			return n.IP
		}
	}
	return host
}
