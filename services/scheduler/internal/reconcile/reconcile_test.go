package reconcile

import (
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/services/scheduler/internal/fsm"
	"zlayer.dev/services/scheduler/internal/placement"
)

// sim drives the real FSM and the real planner, with agents simulated at
// the edge: a test cannot run nodes here cheaply, and what an agent reports
// is exactly what this package reacts to.
type sim struct {
	t     *testing.T
	f     *fsm.FSM
	index uint64
	now   time.Time
	cfg   Config
	// specs: deployment file text → services. The "file" is a short key
	// such as "web:h1:3" (service:hash:replicas, comma-separated).
	failing map[string]bool                     // spec hashes whose replicas fail on start
	down    map[string]bool                     // nodes whose agents do not answer
	log     [][]byte                            // every command applied, in order
	crash   bool                                // running replicas of failing hashes fail too
	specFn  Specs                               // nil: specs
	load    map[string]*schedulerv1.ServiceLoad // node → load sent with its next heartbeat
	noAgent map[string]bool                     // nodes that heartbeat but whose agent does not answer
}

func newSim(t *testing.T, nodes ...string) *sim {
	t.Helper()
	f, err := fsm.Open(filepath.Join(t.TempDir(), "state.db"))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	s := &sim{t: t, f: f, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC),
		cfg:     Config{NodeTimeout: 5 * time.Second, MaxRolloutRestarts: 3, ReplaceFailedAfter: 10 * time.Second},
		failing: map[string]bool{}, down: map[string]bool{}}
	for _, n := range nodes {
		s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_RegisterNode{RegisterNode: &schedulerv1.RegisterNodeCommand{
			Node: &schedulerv1.Node{Name: n, Cpu: 4, MemoryBytes: 8 << 30},
		}}})
	}
	return s
}

func (s *sim) apply(c *schedulerv1.Command) fsm.Result {
	s.t.Helper()
	if c.ProposedAt == nil {
		c.ProposedAt = timestamppb.New(s.now)
	}
	data, err := proto.Marshal(c)
	if err != nil {
		s.t.Fatal(err)
	}
	s.index++
	s.log = append(s.log, data)
	return s.f.Apply(s.index, data).(fsm.Result)
}

// specs parses the test's tiny deployment format.
func specs(d *schedulerv1.Deployment, v *schedulerv1.DeploymentVersion) (map[string]Service, error) {
	out := map[string]Service{}
	for _, part := range strings.Split(string(v.SpecYaml), ",") {
		f := strings.Split(part, ":")
		out[f[0]] = Service{Name: f[0], Hash: f[1], RType: "service", Demand: placement.Demand{CPU: 0.5}}
	}
	return out, nil
}

func (s *sim) deploy(name, file string) uint64 {
	s.t.Helper()
	svcs, _ := specs(nil, &schedulerv1.DeploymentVersion{SpecYaml: []byte(file)})
	hashes, scale := map[string]string{}, map[string]uint32{}
	for _, part := range strings.Split(file, ",") {
		f := strings.Split(part, ":")
		var n uint32
		fmt.Sscan(f[2], &n)
		scale[f[0]] = n
	}
	for n, svc := range svcs {
		hashes[n] = svc.Hash
	}
	r := s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_PutDeployment{PutDeployment: &schedulerv1.PutDeploymentCommand{
		Name: name, SpecYaml: []byte(file), FileName: "test.yaml", ServiceHashes: hashes, InitialScale: scale,
	}}})
	if r.Err != nil {
		s.t.Fatal(r.Err)
	}
	return r.Version
}

// step: one reconcile round, then every live agent reports.
func (s *sim) step() {
	s.t.Helper()
	s.now = s.now.Add(time.Second)
	fn := s.specFn
	if fn == nil {
		fn = specs
	}
	for _, c := range Plan(s.f.Copy(), fn, s.now, s.cfg) {
		if r := s.apply(c); r.Err != nil {
			s.t.Logf("command rejected: %v", r.Err)
		}
	}
	st := s.f.Copy()
	byNode := map[string][]*schedulerv1.ReplicaStatus{}
	for _, r := range st.Replicas {
		if r.Node == "" || s.down[r.Node] || s.noAgent[r.Node] && r.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING {
			continue // an agent that does not answer starts and stops nothing
		}
		var out *schedulerv1.ReplicaStatus
		switch {
		case r.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPING:
			out = &schedulerv1.ReplicaStatus{Id: r.Id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED}
		case r.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING && s.failing[r.SpecHash] && s.crash:
			out = &schedulerv1.ReplicaStatus{Id: r.Id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED, ExitCode: 3, Reason: "crashed"}
		case r.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_ASSIGNED && s.failing[r.SpecHash]:
			out = &schedulerv1.ReplicaStatus{Id: r.Id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED, ExitCode: 3, Reason: "exited"}
		case r.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_ASSIGNED:
			out = &schedulerv1.ReplicaStatus{Id: r.Id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING,
				Health: schedulerv1.Health_HEALTH_HEALTHY, Ip: "10.0.0.1"}
		}
		if out != nil {
			byNode[r.Node] = append(byNode[r.Node], out)
		}
	}
	for _, n := range sortedKeys(s.f.Copy().Nodes) {
		if s.down[n] {
			continue
		}
		var load []*schedulerv1.ServiceLoad
		if l := s.load[n]; l != nil {
			load = []*schedulerv1.ServiceLoad{l}
		}
		s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_Heartbeat{Heartbeat: &schedulerv1.HeartbeatCommand{
			Node: n, Statuses: byNode[n], Load: load, AgentDown: agentDown(s.noAgent, n),
		}}})
	}
}

// agentDown is what node n's heartbeat says of its agent: nothing when the
// test does not simulate agents.
func agentDown(noAgent map[string]bool, n string) *bool {
	if noAgent == nil {
		return nil
	}
	return proto.Bool(noAgent[n])
}

func (s *sim) run(steps int) {
	for range steps {
		s.step()
	}
}

// summary: service → sorted "index:hash:phase@node" of replicas not stopped.
func (s *sim) summary(dep string) string {
	var parts []string
	for _, r := range s.f.Copy().ReplicasOf(dep) {
		if r.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED {
			continue
		}
		phase := strings.ToLower(strings.TrimPrefix(r.Phase.String(), "REPLICA_PHASE_"))
		parts = append(parts, fmt.Sprintf("%s/%d:%s:%s@%s", r.Service, r.Index, r.SpecHash, phase, r.Node))
	}
	return strings.Join(parts, " ")
}

func (s *sim) outcome(dep string) (uint64, schedulerv1.RolloutOutcome, string) {
	d := s.f.Copy().Deployments[dep]
	if d == nil {
		return 0, 0, "gone"
	}
	v := fsm.Version(d, d.Current)
	return d.Current, v.Outcome, v.Reason
}

const complete = schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_COMPLETE

func TestDeployScaleDelete(t *testing.T) {
	s := newSim(t, "n1", "n2")
	s.deploy("app", "web:h1:3")
	s.run(3)
	if got, want := s.summary("app"), "web/0:h1:running@n1 web/1:h1:running@n2 web/2:h1:running@n1"; got != want {
		t.Fatalf("after deploy:\n got %s\nwant %s", got, want)
	}
	if v, o, _ := s.outcome("app"); v != 1 || o != complete {
		t.Fatalf("outcome = %d %v, want 1 complete", v, o)
	}
	s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_Scale{Scale: &schedulerv1.ScaleCommand{Deployment: "app", Service: "web", Replicas: 1}}})
	s.run(3)
	if got, want := s.summary("app"), "web/0:h1:running@n1"; got != want {
		t.Fatalf("after scale to 1:\n got %s\nwant %s", got, want)
	}
	if n := len(s.f.Copy().Replicas); n != 1 {
		t.Fatalf("%d replicas in state after scale-down, want the stopped ones forgotten", n)
	}
	s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_DeleteDeployment{DeleteDeployment: &schedulerv1.DeleteDeploymentCommand{Name: "app"}}})
	s.run(3)
	st := s.f.Copy()
	if len(st.Replicas) != 0 || st.Deployments["app"] != nil {
		t.Fatalf("after delete: %d replicas, deployment %v; want nothing", len(st.Replicas), st.Deployments["app"])
	}
}

func TestRollingUpdateOneAtATime(t *testing.T) {
	s := newSim(t, "n1", "n2")
	s.deploy("app", "web:h1:3")
	s.run(3)
	s.deploy("app", "web:h2:3")
	var newHealthySeen []int
	for i := 0; i < 20; i++ {
		s.step()
		st := s.f.Copy()
		oldLive, newUnhealthy, newHealthy := 0, 0, 0
		for _, r := range st.Replicas {
			if r.DesiredStop || r.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED {
				continue
			}
			switch {
			case r.SpecHash == "h1":
				oldLive++
			case r.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING:
				newHealthy++
			default:
				newUnhealthy++
			}
		}
		if newUnhealthy > 1 {
			t.Fatalf("step %d: %d new replicas starting at once, want one at a time", i, newUnhealthy)
		}
		if oldLive+newHealthy < 2 {
			t.Fatalf("step %d: only %d serving replicas during the rollout", i, oldLive+newHealthy)
		}
		newHealthySeen = append(newHealthySeen, newHealthy)
	}
	if got, want := s.summary("app"), "web/0:h2:running@n2 web/1:h2:running@n1 web/2:h2:running@n1"; got != want {
		t.Fatalf("after rollout:\n got %s\nwant %s", got, want)
	}
	if v, o, _ := s.outcome("app"); v != 2 || o != complete {
		t.Fatalf("outcome = %d %v, want 2 complete", v, o)
	}
	// Redeploying the same spec changes nothing on the nodes.
	before := s.summary("app")
	s.deploy("app", "web:h2:3")
	s.run(3)
	if s.summary("app") != before {
		t.Fatalf("unchanged service was replaced: %s → %s", before, s.summary("app"))
	}
}

func TestBrokenVersionRollsBack(t *testing.T) {
	s := newSim(t, "n1")
	s.deploy("app", "web:good:2,db:d1:1")
	s.run(3)
	s.failing["bad"] = true
	s.deploy("app", "web:bad:2,db:d1:1")
	s.run(8)
	d := s.f.Copy().Deployments["app"]
	v2 := fsm.Version(d, 2)
	if v2.Outcome != schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_FAILED || !strings.Contains(v2.Reason, "failed (exit code 3)") {
		t.Fatalf("version 2 = %v %q, want failed with the replica's exit code", v2.Outcome, v2.Reason)
	}
	v, o, _ := s.outcome("app")
	if v != 3 || o != complete || fsm.Version(d, 3).RolledBackFrom != 2 {
		t.Fatalf("current = %d %v, want 3 (a rollback of 2) complete; replicas %s", v, o, s.summary("app"))
	}
	if got, want := s.summary("app"), "db/0:d1:running@n1 web/0:good:running@n1 web/1:good:running@n1"; got != want {
		t.Fatalf("after rollback:\n got %s\nwant %s", got, want)
	}
}

func TestLostNodeReplicasMove(t *testing.T) {
	s := newSim(t, "n1", "n2")
	s.deploy("app", "web:h1:2")
	s.run(3)
	s.down["n2"] = true
	s.run(8) // past the 5s node timeout
	st := s.f.Copy()
	if st.Nodes["n2"].State != schedulerv1.NodeState_NODE_STATE_DOWN {
		t.Fatalf("n2 state %v, want down", st.Nodes["n2"].State)
	}
	if got, want := s.summary("app"), "web/0:h1:running@n1 web/1:h1:running@n1"; got != want {
		t.Fatalf("after losing n2:\n got %s\nwant %s", got, want)
	}
}

// TestNoPlacementOnNodeWithoutAgent: a node whose agent does not answer
// keeps its running replicas (they run without the agent) but gets no new
// ones; once the agent answers, it does again.
func TestNoPlacementOnNodeWithoutAgent(t *testing.T) {
	s := newSim(t, "n1", "n2")
	s.noAgent = map[string]bool{}
	s.deploy("app", "web:h1:2")
	s.run(3)
	s.noAgent["n1"] = true
	s.run(1) // a heartbeat says so
	s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_Scale{Scale: &schedulerv1.ScaleCommand{Deployment: "app", Service: "web", Replicas: 4}}})
	s.run(4)
	if got, want := s.summary("app"), "web/0:h1:running@n1 web/1:h1:running@n2 web/2:h1:running@n2 web/3:h1:running@n2"; got != want {
		t.Fatalf("n1's agent down, scaled to 4:\n got %s\nwant %s", got, want)
	}
	if !s.f.Copy().Nodes["n1"].AgentDown {
		t.Fatal("n1 not marked agent_down")
	}
	s.noAgent["n1"] = false
	s.run(1)
	s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_Scale{Scale: &schedulerv1.ScaleCommand{Deployment: "app", Service: "web", Replicas: 5}}})
	s.run(3)
	if got, want := s.summary("app"), "web/0:h1:running@n1 web/1:h1:running@n2 web/2:h1:running@n2 web/3:h1:running@n2 web/4:h1:running@n1"; got != want {
		t.Fatalf("n1's agent back, scaled to 5:\n got %s\nwant %s", got, want)
	}
}

func TestPendingUntilCapacity(t *testing.T) {
	s := newSim(t) // no nodes yet
	s.deploy("app", "web:h1:1")
	s.run(2)
	st := s.f.Copy()
	var r *schedulerv1.Replica
	for _, x := range st.Replicas {
		r = x
	}
	if r == nil || r.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_PENDING || r.Reason != "no nodes in the cluster" {
		t.Fatalf("replica = %v, want pending with a reason", r)
	}
	s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_RegisterNode{RegisterNode: &schedulerv1.RegisterNodeCommand{
		Node: &schedulerv1.Node{Name: "late", Cpu: 1, MemoryBytes: 1 << 30},
	}}})
	s.run(3)
	if got, want := s.summary("app"), "web/0:h1:running@late"; got != want {
		t.Fatalf("got %s, want %s", got, want)
	}
}

func TestStateSurvivesRestartAndSnapshot(t *testing.T) {
	dir := t.TempDir()
	path := filepath.Join(dir, "state.db")
	f, err := fsm.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	s := &sim{t: t, f: f, now: time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC), cfg: Config{NodeTimeout: 5 * time.Second},
		failing: map[string]bool{}, down: map[string]bool{}}
	s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_RegisterNode{RegisterNode: &schedulerv1.RegisterNodeCommand{Node: &schedulerv1.Node{Name: "n1", Cpu: 2, MemoryBytes: 1 << 30}}}})
	s.deploy("app", "web:h1:2")
	s.run(3)
	snap, err := f.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	applied := f.AppliedIndex()
	f.Close()

	g, err := fsm.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer g.Close()
	if g.AppliedIndex() != applied {
		t.Fatalf("applied index %d after reopen, want %d", g.AppliedIndex(), applied)
	}
	snap2, err := g.Snapshot()
	if err != nil {
		t.Fatal(err)
	}
	if !proto.Equal(unmarshalSnap(t, snap), unmarshalSnap(t, snap2)) {
		t.Fatal("state after reopen differs from before")
	}
	// A replayed entry is skipped.
	if r := g.Apply(applied, []byte("garbage")).(fsm.Result); r.Err == nil {
		t.Fatal("replayed index was applied again")
	}
	// Restore into a fresh state file gives the same state.
	h, err := fsm.Open(filepath.Join(dir, "other.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close()
	if err := h.Restore(applied, snap); err != nil {
		t.Fatal(err)
	}
	snap3, _ := h.Snapshot()
	if !proto.Equal(unmarshalSnap(t, snap), unmarshalSnap(t, snap3)) || h.AppliedIndex() != applied {
		t.Fatal("restored state differs")
	}
}

func unmarshalSnap(t *testing.T, b []byte) *schedulerv1.Snapshot {
	t.Helper()
	s := &schedulerv1.Snapshot{}
	if err := proto.Unmarshal(b, s); err != nil {
		t.Fatal(err)
	}
	return s
}

// TestApplyIsDeterministic replays every command of a busy scenario into a
// second state machine: both must hold exactly the same state, as every
// Raft member must.
func TestApplyIsDeterministic(t *testing.T) {
	s := newSim(t, "n1", "n2", "n3")
	s.deploy("app", "web:h1:4,db:d1:2")
	s.run(3)
	s.deploy("app", "web:h2:4,db:d1:2")
	s.run(10)
	s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_DeleteDeployment{DeleteDeployment: &schedulerv1.DeleteDeploymentCommand{Name: "app"}}})
	s.run(3)
	other, err := fsm.Open(filepath.Join(t.TempDir(), "replay.db"))
	if err != nil {
		t.Fatal(err)
	}
	defer other.Close()
	for i, data := range s.log {
		other.Apply(uint64(i+1), data)
	}
	a, _ := s.f.Snapshot()
	b, _ := other.Snapshot()
	if string(a) != string(b) {
		t.Fatal("replaying the same commands gave a different state")
	}
	if len(unmarshalSnap(t, a).Events) < 20 {
		t.Fatal("the scenario recorded too few events to mean anything")
	}
}

// TestFullClusterRolloutMakesRoom: with no room for a new replica beside
// the old one, the old one goes first and the rollout completes.
func TestFullClusterRolloutMakesRoom(t *testing.T) {
	s := newSim(t)
	s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_RegisterNode{RegisterNode: &schedulerv1.RegisterNodeCommand{
		Node: &schedulerv1.Node{Name: "small", Cpu: 0.5, MemoryBytes: 1 << 30},
	}}})
	s.deploy("app", "web:h1:1")
	s.run(3)
	s.deploy("app", "web:h2:1")
	s.run(8)
	if v, o, _ := s.outcome("app"); v != 2 || o != complete {
		t.Fatalf("outcome %d %v, want 2 complete; replicas %s", v, o, s.summary("app"))
	}
}

// TestFailedRollbackIsNotRolledBackAgain: when the file a rollback went
// back to fails too, the deployment stops at that failed version.
func TestFailedRollbackIsNotRolledBackAgain(t *testing.T) {
	s := newSim(t, "n1")
	s.deploy("app", "web:good:1")
	s.run(3)
	s.failing["good"], s.failing["bad"], s.crash = true, true, true // the old file broke meanwhile
	s.deploy("app", "web:bad:1")
	s.run(20)
	d := s.f.Copy().Deployments["app"]
	if len(d.Versions) != 3 {
		t.Fatalf("%d versions, want 3 (good, bad, its rollback): rollbacks looped", len(d.Versions))
	}
	if v := fsm.Version(d, 3); v.Outcome != schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_FAILED || v.RolledBackFrom != 2 {
		t.Fatalf("version 3 = %v from %d, want a failed rollback of 2", v.Outcome, v.RolledBackFrom)
	}
}

func TestAutoscaleFollowsRequests(t *testing.T) {
	s := newSim(t, "n1", "n2")
	s.cfg.LoadFresh = 30 * time.Second
	s.specFn = func(d *schedulerv1.Deployment, v *schedulerv1.DeploymentVersion) (map[string]Service, error) {
		svcs, err := specs(d, v)
		web := svcs["web"]
		web.Auto = &Autoscale{Min: 1, Max: 5, Cooldown: 5 * time.Second, RPS: 10}
		svcs["web"] = web
		return svcs, err
	}
	s.deploy("app", "web:h1:1")
	s.run(3)
	count := func() uint32 { return s.f.Copy().Deployments["app"].Scale["web"] }
	// 35 requests/s over both nodes' proxies: 4 replicas of 10/s.
	s.load = map[string]*schedulerv1.ServiceLoad{
		"n1": {Deployment: "app", Service: "web", Rps: 20, Replicas: 1},
		"n2": {Deployment: "app", Service: "web", Rps: 15},
	}
	s.run(2)
	if got := count(); got != 4 {
		t.Fatalf("scale %d under 35 rps, want 4", got)
	}
	s.load["n1"].Rps, s.load["n2"].Rps = 200, 200 // far beyond max
	s.run(2)
	if got := count(); got != 4 {
		t.Fatalf("scale %d inside the cooldown, want still 4", got)
	}
	s.run(8)
	if got := count(); got != 5 {
		t.Fatalf("scale %d after the cooldown under 400 rps, want max 5", got)
	}
	s.load["n1"].Rps, s.load["n2"].Rps = 0, 0
	s.run(8)
	if got := count(); got != 1 {
		t.Fatalf("scale %d with no load, want min 1", got)
	}
	events, _ := s.f.Events("app", 0, 0)
	found := false
	for _, e := range events {
		found = found || strings.Contains(e.Message, "autoscaler: 35.0 requests/s for a target of 10.0 per replica")
	}
	if !found {
		t.Error("no event says why the autoscaler scaled")
	}
}

// TestCronRunsOnScheduleAndCatchesUpOnce: a cron service runs when its
// schedule comes, never overlaps its own run (the skip is recorded), and
// after a gap with no leader runs once, late, for the newest missed time.
func TestCronRunsOnScheduleAndCatchesUpOnce(t *testing.T) {
	s := newSim(t, "n1")
	every := 10 * time.Second
	s.specFn = func(d *schedulerv1.Deployment, v *schedulerv1.DeploymentVersion) (map[string]Service, error) {
		svcs, err := specs(d, v)
		c := svcs["tick"]
		c.RType = "cron"
		c.Next = func(after time.Time) time.Time { return after.Truncate(every).Add(every) }
		svcs["tick"] = c
		return svcs, err
	}
	s.deploy("app", "tick:c1:0")
	runs := func() (all, active int) {
		for _, r := range s.f.Copy().Replicas {
			if r.Run {
				all++
				if r.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_SUCCEEDED && r.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED {
					active++
				}
			}
		}
		return all, active
	}
	// The simulated agent never finishes a run: every later tick is skipped.
	s.run(25)
	if all, active := runs(); all != 1 || active != 1 {
		t.Fatalf("%d runs (%d active), want the one run that never ends", all, active)
	}
	events, _ := s.f.Events("app", 0, 0)
	ran, skipped := 0, 0
	for _, e := range events {
		switch e.Kind {
		case "run":
			ran++
		case "cron-skipped":
			skipped++
			if !strings.Contains(e.Message, "previous run is still running") {
				t.Errorf("skip reason %q", e.Message)
			}
		}
	}
	if ran != 1 || skipped < 1 {
		t.Fatalf("%d runs, %d skips: want exactly one run (never overlapping) and the later ticks skipped", ran, skipped)
	}
	// A leader gap of 35s (several ticks) is not caught up.
	d := s.f.Copy().Deployments["app"]
	last := d.CronLast["tick"].AsTime()
	for _, r := range s.f.Copy().Replicas {
		if r.Run {
			s.apply(&schedulerv1.Command{Kind: &schedulerv1.Command_Plan{Plan: &schedulerv1.PlanCommand{Stop: []*schedulerv1.StopReplica{{Replica: r.Id, Reason: "test"}}}}})
		}
	}
	s.run(2) // the stopped run is forgotten
	s.now = last.Add(every*3 + 5*time.Second + 500*time.Millisecond)
	before, _ := runs()
	for _, c := range Plan(s.f.Copy(), s.specFn, s.now, s.cfg) {
		s.apply(c)
	}
	after, _ := runs()
	// The newest tick (last+30s) was 5.5s ago: less than the interval, so it
	// runs once, late; the two before it are dropped, not run.
	if after != before+1 {
		t.Fatalf("after a gap: %d new runs, want exactly 1 (late)", after-before)
	}
}

// TestQuietHeartbeatsWakeNobody: a heartbeat that only says "alive" does not
// wake the state's watchers; one carrying a change, or bringing a node
// back, does.
func TestQuietHeartbeatsWakeNobody(t *testing.T) {
	s := newSim(t, "n1")
	s.deploy("app", "web:h1:1")
	s.run(3)
	woke := func(c *schedulerv1.Command) bool {
		ch := s.f.Changed()
		s.apply(c)
		select {
		case <-ch:
			return true
		default:
			return false
		}
	}
	hb := func(h *schedulerv1.HeartbeatCommand) *schedulerv1.Command {
		return &schedulerv1.Command{Kind: &schedulerv1.Command_Heartbeat{Heartbeat: h}}
	}
	if woke(hb(&schedulerv1.HeartbeatCommand{Node: "n1"})) {
		t.Error("a heartbeat with nothing new woke the watchers")
	}
	var id string
	for rid := range s.f.Copy().Replicas {
		id = rid
	}
	failed := &schedulerv1.ReplicaStatus{Id: id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED, ExitCode: 1, Reason: "crashed"}
	if !woke(hb(&schedulerv1.HeartbeatCommand{Node: "n1", Statuses: []*schedulerv1.ReplicaStatus{failed}})) {
		t.Error("a heartbeat with a replica's change did not wake the watchers")
	}
	if !woke(hb(&schedulerv1.HeartbeatCommand{Node: "n1", AgentDown: proto.Bool(true)})) {
		t.Error("a heartbeat saying the agent is down did not wake the watchers")
	}
	if !woke(&schedulerv1.Command{Kind: &schedulerv1.Command_Scale{Scale: &schedulerv1.ScaleCommand{Deployment: "app", Service: "web", Replicas: 2}}}) {
		t.Error("a scale did not wake the watchers")
	}
}
