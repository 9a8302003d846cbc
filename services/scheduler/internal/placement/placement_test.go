package placement

import (
	"strings"
	"testing"
)

const gib = 1 << 30

func TestPlace(t *testing.T) {
	type step struct {
		service  string
		demand   Demand
		wantNode string
		wantWhy  string // substring of the reason; only when wantNode is ""
	}
	tests := []struct {
		name  string
		nodes []Node
		pre   map[string][]string // node → services already there (no demand)
		steps []step
	}{
		{
			name:  "spreads replicas of one service",
			nodes: []Node{{Name: "a", CPU: 4, Memory: 8 * gib, Ready: true}, {Name: "b", CPU: 4, Memory: 8 * gib, Ready: true}, {Name: "c", CPU: 4, Memory: 8 * gib, Ready: true}},
			steps: []step{{"d/web", Demand{}, "a", ""}, {"d/web", Demand{}, "b", ""}, {"d/web", Demand{}, "c", ""}, {"d/web", Demand{}, "a", ""}},
		},
		{
			name:  "respects cpu capacity",
			nodes: []Node{{Name: "a", CPU: 1, Memory: 8 * gib, Ready: true}, {Name: "b", CPU: 2, Memory: 8 * gib, Ready: true}},
			steps: []step{
				{"d/x", Demand{CPU: 1.5}, "b", ""},
				{"d/x", Demand{CPU: 1}, "a", ""},
				{"d/x", Demand{CPU: 1}, "", "no node has 1.00 CPUs free (a: 0.00 of 1.00 CPUs free; b: 0.50 of 2.00 CPUs free)"},
			},
		},
		{
			name:  "respects memory capacity",
			nodes: []Node{{Name: "a", CPU: 4, Memory: 1 * gib, Ready: true}},
			steps: []step{
				{"d/x", Demand{Memory: gib / 2}, "a", ""},
				{"d/x", Demand{Memory: gib}, "", "a: 512MiB of 1024MiB memory free"},
			},
		},
		{
			name:  "skips nodes that are down",
			nodes: []Node{{Name: "a", CPU: 4, Memory: gib, Ready: false}, {Name: "b", CPU: 4, Memory: gib, Ready: true}},
			steps: []step{{"d/x", Demand{}, "b", ""}, {"d/x", Demand{}, "b", ""}},
		},
		{
			name:  "no ready node",
			nodes: []Node{{Name: "a", CPU: 4, Memory: gib, Ready: false}},
			steps: []step{{"d/x", Demand{}, "", "no ready node (a: not ready)"}},
		},
		{
			name:  "empty cluster",
			steps: []step{{"d/x", Demand{}, "", "no nodes in the cluster"}},
		},
		{
			name:  "prefers joined nodes",
			nodes: []Node{{Name: "a", CPU: 4, Memory: 8 * gib, Ready: true}, {Name: "b", CPU: 4, Memory: 8 * gib, Ready: true, Joined: []string{"d/db"}}},
			steps: []step{{"d/db", Demand{}, "b", ""}, {"d/db", Demand{}, "b", ""}, {"d/web", Demand{}, "a", ""}},
		},
		{
			name: "a global join covers every service of its deployment only",
			nodes: []Node{{Name: "a", CPU: 4, Memory: 8 * gib, Ready: true, Joined: []string{"e/*"}},
				{Name: "b", CPU: 4, Memory: 8 * gib, Ready: true, Joined: []string{"d/*"}}},
			steps: []step{{"d/db", Demand{}, "b", ""}, {"d/web", Demand{}, "b", ""}, {"e/web", Demand{}, "a", ""}, {"f/web", Demand{}, "a", ""}},
		},
		{
			name:  "existing replicas count for spread",
			nodes: []Node{{Name: "a", CPU: 4, Memory: 8 * gib, Ready: true}, {Name: "b", CPU: 4, Memory: 8 * gib, Ready: true}},
			pre:   map[string][]string{"a": {"d/web", "d/web"}},
			steps: []step{{"d/web", Demand{}, "b", ""}, {"d/web", Demand{}, "b", ""}, {"d/web", Demand{}, "a", ""}},
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := NewCluster(tt.nodes)
			for node, svcs := range tt.pre {
				for _, s := range svcs {
					c.Add(node, s, Demand{})
				}
			}
			for i, s := range tt.steps {
				node, why := c.Place(s.service, s.demand)
				if node != s.wantNode {
					t.Fatalf("step %d: Place(%s) = %q (%s), want %q", i, s.service, node, why, s.wantNode)
				}
				if s.wantNode == "" && !strings.Contains(why, s.wantWhy) {
					t.Fatalf("step %d: reason %q, want it to contain %q", i, why, s.wantWhy)
				}
			}
		})
	}
}
