package runner

import (
	"bytes"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.uber.org/zap"

	"zlayer.dev/services/agent/internal/bundle"
)

// Name is one service name a deployment's containers resolve, such as
// db.global, with one of its addresses. The scheduler pushes the table;
// each container's /etc/hosts carries its own deployment's names.
type Name struct {
	Deployment string
	Name       string
	IP         string
}

// SetNames replaces the table of service names and rewrites the hosts file
// of every container whose names changed.
func (rn *Runner) SetNames(names []Name) {
	byDep := map[string][]Name{}
	for _, n := range names {
		byDep[n.Deployment] = append(byDep[n.Deployment], n)
	}
	for _, ns := range byDep {
		slices.SortFunc(ns, func(a, b Name) int { return strings.Compare(a.Name+" "+a.IP, b.Name+" "+b.IP) })
	}
	rn.mu.Lock()
	old := rn.names
	rn.names = byDep
	cs := make([]*container, 0, len(rn.ctrs))
	for id, c := range rn.ctrs {
		if !rn.creating[id] {
			cs = append(cs, c)
		}
	}
	rn.mu.Unlock()
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
