package reconcile

import (
	"errors"
	"slices"
	"testing"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/errkind"
)

func joinCmd(c *schedulerv1.JoinCommand) *schedulerv1.Command {
	return &schedulerv1.Command{Kind: &schedulerv1.Command_Join{Join: c}}
}

func tokenCmd(c *schedulerv1.JoinTokenCommand) *schedulerv1.Command {
	return &schedulerv1.Command{Kind: &schedulerv1.Command_JoinToken{JoinToken: c}}
}

// TestJoinedNodeIsPreferred: a node that joined a service with a token gets
// its replicas; bad tokens are refused; joins survive re-registration and
// end with leave or the deployment's deletion.
func TestJoinedNodeIsPreferred(t *testing.T) {
	s := newSim(t, "n1", "n2", "n3")
	s.deploy("app", "web:h1:1,db:h2:0")
	s.run(2)

	if r := s.apply(tokenCmd(&schedulerv1.JoinTokenCommand{Deployment: "app", Service: "db", Key: "k1"})); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := s.apply(tokenCmd(&schedulerv1.JoinTokenCommand{Deployment: "app", Service: "db", Key: "k1"})); !errors.Is(r.Err, errkind.Conflict) {
		t.Fatalf("duplicate key: err %v, want conflict", r.Err)
	}
	refused := []struct {
		name string
		cmd  *schedulerv1.JoinCommand
		want error
	}{
		{"unknown key", &schedulerv1.JoinCommand{Node: "n3", Deployment: "app", Service: "db", Key: "nope"}, errkind.Denied},
		{"token for another service", &schedulerv1.JoinCommand{Node: "n3", Deployment: "app", Service: "web", Key: "k1"}, errkind.Denied},
		{"unknown node", &schedulerv1.JoinCommand{Node: "n9", Deployment: "app", Service: "db", Key: "k1"}, errkind.NotFound},
		{"unknown deployment", &schedulerv1.JoinCommand{Node: "n3", Deployment: "other", Service: "db", Key: "k1"}, errkind.NotFound},
		{"unknown service", &schedulerv1.JoinCommand{Node: "n3", Deployment: "app", Service: "cache"}, errkind.NotFound},
		{"service token used for all", &schedulerv1.JoinCommand{Node: "n3", Deployment: "app", Service: "*", Key: "k1"}, errkind.Denied},
	}
	for _, tt := range refused {
		if r := s.apply(joinCmd(tt.cmd)); !errors.Is(r.Err, tt.want) {
			t.Errorf("%s: err %v, want %v", tt.name, r.Err, tt.want)
		}
	}
	if got := s.f.Copy().Nodes["n3"].JoinedServices; len(got) != 0 {
		t.Fatalf("refused joins left %v on n3", got)
	}

	if r := s.apply(joinCmd(&schedulerv1.JoinCommand{Node: "n3", Deployment: "app", Service: "db", Key: "k1"})); r.Err != nil {
		t.Fatal(r.Err)
	}
	s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_Scale{Scale: &schedulerv1.ScaleCommand{Deployment: "app", Service: "db", Replicas: 2}}})
	s.run(3)
	if got, want := s.summary("app"), "db/0:h2:running@n3 db/1:h2:running@n3 web/0:h1:running@n1"; got != want {
		t.Fatalf("after joining n3 to db and scaling db to 2:\n got %s\nwant %s", got, want)
	}

	// A node re-registers on every start: its joins stay.
	s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_RegisterNode{RegisterNode: &schedulerv1.RegisterNodeCommand{
		Node: &schedulerv1.Node{Name: "n3", Cpu: 4, MemoryBytes: 8 << 30},
	}}})
	if got := s.f.Copy().Nodes["n3"].JoinedServices; !slices.Equal(got, []string{"app/db"}) {
		t.Fatalf("after re-registering, n3 joined %v, want [app/db]", got)
	}

	// Revoking the token does not undo the join; leaving does.
	if r := s.apply(tokenCmd(&schedulerv1.JoinTokenCommand{Deployment: "app", Key: "k1", Revoke: true})); r.Err != nil {
		t.Fatal(r.Err)
	}
	if d, _ := s.f.Copy().FindJoinToken("k1"); d != nil {
		t.Fatal("revoked token still found")
	}
	if r := s.apply(joinCmd(&schedulerv1.JoinCommand{Node: "n2", Deployment: "app", Service: "db", Key: "k1"})); !errors.Is(r.Err, errkind.Denied) {
		t.Fatalf("join with a revoked token: err %v, want denied", r.Err)
	}
	if r := s.apply(joinCmd(&schedulerv1.JoinCommand{Node: "n3", Deployment: "app", Service: "db", Leave: true})); r.Err != nil {
		t.Fatal(r.Err)
	}
	if r := s.apply(joinCmd(&schedulerv1.JoinCommand{Node: "n3", Deployment: "app", Service: "db", Leave: true})); !errors.Is(r.Err, errkind.NotFound) {
		t.Fatalf("leaving twice: err %v, want not found", r.Err)
	}

	// An open join (no key, the proposer checked the mode) for every
	// service; deleting the deployment ends it.
	if r := s.apply(joinCmd(&schedulerv1.JoinCommand{Node: "n2", Deployment: "app", Service: "*"})); r.Err != nil {
		t.Fatal(r.Err)
	}
	if got := s.f.Copy().Nodes["n2"].JoinedServices; !slices.Equal(got, []string{"app/*"}) {
		t.Fatalf("n2 joined %v, want [app/*]", got)
	}
	s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_DeleteDeployment{DeleteDeployment: &schedulerv1.DeleteDeploymentCommand{Name: "app"}}})
	s.run(3)
	if got := s.f.Copy().Nodes["n2"].JoinedServices; len(got) != 0 {
		t.Fatalf("after deleting app, n2 still joined %v", got)
	}
}

// TestClosedServiceIgnoresJoins: joins made while a service was open stop
// steering its placement once its mode is closed.
func TestClosedServiceIgnoresJoins(t *testing.T) {
	s := newSim(t, "n1", "n2", "n3")
	s.specFn = func(d *schedulerv1.Deployment, v *schedulerv1.DeploymentVersion) (map[string]Service, error) {
		svcs, err := specs(d, v)
		if db, ok := svcs["db"]; ok {
			db.JoinClosed = true
			svcs["db"] = db
		}
		return svcs, err
	}
	s.deploy("app", "web:h1:0,db:h2:0")
	if r := s.apply(joinCmd(&schedulerv1.JoinCommand{Node: "n3", Deployment: "app", Service: "db"})); r.Err != nil {
		t.Fatal(r.Err)
	}
	s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_Scale{Scale: &schedulerv1.ScaleCommand{Deployment: "app", Service: "db", Replicas: 2}}})
	s.run(3)
	if got, want := s.summary("app"), "db/0:h2:running@n1 db/1:h2:running@n2"; got != want {
		t.Fatalf("closed db with n3 joined:\n got %s\nwant %s", got, want)
	}
}
