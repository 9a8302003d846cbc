package runner

import (
	"fmt"
	"net/netip"
	"testing"

	"zlayer.dev/services/agent/internal/netns"
)

// TestPlacedGroups: a spec's overlays count when given, even none; a spec
// without them takes the scheduler's word for its address, or its
// deployment's global overlay.
func TestPlacedGroups(t *testing.T) {
	ip := netip.MustParseAddr("10.88.0.5")
	members := map[netip.Addr][]string{ip: {"service/app/web"}}
	spec := func(set bool, groups ...string) Spec {
		return Spec{ID: "c", Identity: Identity{Deployment: "app", Service: "web"}, Groups: groups, GroupsSet: set}
	}
	tests := []struct {
		name    string
		p       placed
		members map[netip.Addr][]string
		want    string
	}{
		{"given", placed{ip, spec(true, "global/app", "service/app/web")}, members, "[global/app service/app/web]"},
		{"given as none", placed{ip, spec(true)}, members, "[]"},
		{"not given, in members", placed{ip, spec(false)}, members, "[service/app/web]"},
		{"not given, unknown", placed{ip, spec(false)}, nil, "[global/app]"},
	}
	for _, tt := range tests {
		if got := fmt.Sprint(tt.p.groups(tt.members)); got != tt.want {
			t.Errorf("%s: %s, want %s", tt.name, got, tt.want)
		}
	}
}

// TestMembersOr: members win; without them the names imply members on
// their deployments' global overlays.
func TestMembersOr(t *testing.T) {
	names := []Name{{Deployment: "app", Name: "web.global", IP: "10.88.0.5"}, {Deployment: "b", Name: "db.global", IP: "10.89.0.2"}}
	if got := fmt.Sprint(membersOr(nil, names)); got != "[{10.88.0.5 [global/app]} {10.89.0.2 [global/b]}]" {
		t.Errorf("from names: %s", got)
	}
	given := []netns.Member{{IP: netip.MustParseAddr("10.88.0.5"), Groups: []string{"service/app/web"}}}
	if got := fmt.Sprint(membersOr(given, names)); got != "[{10.88.0.5 [service/app/web]}]" {
		t.Errorf("given: %s", got)
	}
}
