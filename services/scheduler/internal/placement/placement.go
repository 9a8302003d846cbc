// Package placement chooses nodes for replicas. It is pure: it reads a
// snapshot of nodes and of what already runs on them and returns a choice
// or the reason there is none. It never talks to Raft or the network, so
// every decision can be replayed in a test.
package placement

import (
	"fmt"
	"slices"
	"strings"
)

// Node is a candidate node.
type Node struct {
	Name   string
	CPU    float64 // capacity in CPUs
	Memory int64   // capacity in bytes
	Ready  bool
	// AgentDown: the node's agent does not answer; nothing new goes there.
	AgentDown bool
	// Joined lists "deployment/service" names the node joined
	// ("deployment/*" for all of a deployment's services); placement prefers
	// it for those services.
	Joined []string
}

// Demand is what one replica asks for. Zero means unlimited: it takes no
// reserved capacity and fits anywhere.
type Demand struct {
	CPU    float64
	Memory int64
}

// Usage is what is already placed on a node.
type Usage struct {
	CPU      float64
	Memory   int64
	Replicas int            // all replicas
	Services map[string]int // "deployment/service" → replicas of it
}

// Cluster is the snapshot placement decides on. Place updates its usage as
// it places, so several replicas placed in a row spread out.
type Cluster struct {
	nodes []Node
	usage map[string]*Usage
}

// NewCluster returns a snapshot of nodes with nothing placed. Nodes are
// considered in name order.
func NewCluster(nodes []Node) *Cluster {
	c := &Cluster{nodes: slices.Clone(nodes), usage: map[string]*Usage{}}
	slices.SortFunc(c.nodes, func(a, b Node) int { return strings.Compare(a.Name, b.Name) })
	for _, n := range c.nodes {
		c.usage[n.Name] = &Usage{Services: map[string]int{}}
	}
	return c
}

// Add records a replica of service (deployment/service) already on node.
func (c *Cluster) Add(node, service string, d Demand) {
	u := c.usage[node]
	if u == nil {
		return // a node that is gone: its replicas no longer use capacity here
	}
	u.CPU += d.CPU
	u.Memory += d.Memory
	u.Replicas++
	u.Services[service]++
}

// Place chooses a node for one replica of service with demand d and records
// it. It returns the node, or "" and the reason nothing fits.
//
// Order: nodes that are ready and have room; among them those that joined
// the service; then fewest replicas of this service (spread); then most
// free memory; then fewest replicas in all; then name.
func (c *Cluster) Place(service string, d Demand) (string, string) {
	best := -1
	var reasons []string
	for i, n := range c.nodes {
		u := c.usage[n.Name]
		if !n.Ready {
			reasons = append(reasons, n.Name+": not ready")
			continue
		}
		if n.AgentDown {
			reasons = append(reasons, n.Name+": its agent does not answer")
			continue
		}
		if d.CPU > 0 && u.CPU+d.CPU > n.CPU+1e-9 {
			reasons = append(reasons, fmt.Sprintf("%s: %.2f of %.2f CPUs free", n.Name, max(n.CPU-u.CPU, 0), n.CPU))
			continue
		}
		if d.Memory > 0 && u.Memory+d.Memory > n.Memory {
			reasons = append(reasons, fmt.Sprintf("%s: %s of %s memory free", n.Name, mib(max(n.Memory-u.Memory, 0)), mib(n.Memory)))
			continue
		}
		if best < 0 || c.better(service, i, best) {
			best = i
		}
	}
	if best < 0 {
		if len(c.nodes) == 0 {
			return "", "no nodes in the cluster"
		}
		want := ""
		if d.CPU > 0 {
			want += fmt.Sprintf(" %.2f CPUs", d.CPU)
		}
		if d.Memory > 0 {
			want += " " + mib(d.Memory) + " memory"
		}
		if want == "" {
			return "", "no ready node (" + strings.Join(reasons, "; ") + ")"
		}
		return "", "no node has" + want + " free (" + strings.Join(reasons, "; ") + ")"
	}
	name := c.nodes[best].Name
	c.Add(name, service, d)
	return name, ""
}

func (c *Cluster) better(service string, i, j int) bool {
	a, b := c.nodes[i], c.nodes[j]
	ua, ub := c.usage[a.Name], c.usage[b.Name]
	if ja, jb := a.joined(service), b.joined(service); ja != jb {
		return ja
	}
	if sa, sb := ua.Services[service], ub.Services[service]; sa != sb {
		return sa < sb
	}
	if fa, fb := a.Memory-ua.Memory, b.Memory-ub.Memory; fa != fb {
		return fa > fb
	}
	if ua.Replicas != ub.Replicas {
		return ua.Replicas < ub.Replicas
	}
	return a.Name < b.Name
}

func mib(b int64) string {
	return fmt.Sprintf("%dMiB", b>>20)
}

// joined reports whether the node joined service ("deployment/service"),
// by name or through "deployment/*".
func (n *Node) joined(service string) bool {
	if slices.Contains(n.Joined, service) {
		return true
	}
	dep, _, ok := strings.Cut(service, "/")
	return ok && slices.Contains(n.Joined, dep+"/*")
}
