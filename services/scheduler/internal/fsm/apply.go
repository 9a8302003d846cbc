package fsm

import (
	"encoding/base64"
	"fmt"
	"net/netip"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/errkind"
)

// txn applies one command to the in-memory state and records what it
// touched, so persist writes only that.
type txn struct {
	f           *FSM
	now         time.Time
	deployments map[string]bool
	replicas    map[string]bool
	nodes       map[string]bool
	events      []*schedulerv1.Event
}

func (t *txn) touchDeployment(name string) { mark(&t.deployments, name) }
func (t *txn) touchReplica(id string)      { mark(&t.replicas, id) }
func (t *txn) touchNode(name string)       { mark(&t.nodes, name) }

func mark(m *map[string]bool, k string) {
	if *m == nil {
		*m = map[string]bool{}
	}
	(*m)[k] = true
}

// event records something that happened.
func (t *txn) event(e *schedulerv1.Event) {
	t.f.eventSeq++
	e.Seq = t.f.eventSeq
	e.Time = ts(t.now)
	t.f.events = append(t.f.events, e)
	if over := len(t.f.events) - MaxEvents; over > 0 {
		t.f.events = slices.Delete(t.f.events, 0, over)
	}
	t.events = append(t.events, e)
}

func (t *txn) replicaEvent(r *schedulerv1.Replica, kind, format string, args ...any) {
	t.event(&schedulerv1.Event{
		Deployment: r.Deployment, Service: r.Service, Replica: r.Id, Node: r.Node,
		Kind: kind, Message: fmt.Sprintf(format, args...),
	})
}

func (t *txn) apply(cmd *schedulerv1.Command) Result {
	switch c := cmd.GetKind().(type) {
	case *schedulerv1.Command_PutDeployment:
		return t.putDeployment(c.PutDeployment)
	case *schedulerv1.Command_DeleteDeployment:
		return t.deleteDeployment(c.DeleteDeployment)
	case *schedulerv1.Command_Scale:
		return t.scale(c.Scale)
	case *schedulerv1.Command_Rollback:
		return t.rollback(c.Rollback)
	case *schedulerv1.Command_RegisterNode:
		return t.registerNode(c.RegisterNode)
	case *schedulerv1.Command_Heartbeat:
		return t.heartbeat(c.Heartbeat)
	case *schedulerv1.Command_SetNodeState:
		return t.setNodeState(c.SetNodeState)
	case *schedulerv1.Command_Plan:
		return t.plan(c.Plan)
	case *schedulerv1.Command_RunJob:
		return t.runJob(c.RunJob)
	case *schedulerv1.Command_JoinToken:
		return t.joinToken(c.JoinToken)
	case *schedulerv1.Command_Join:
		return t.join(c.Join)
	case *schedulerv1.Command_SetNodeOverlay:
		return t.setNodeOverlay(c.SetNodeOverlay)
	default:
		return Result{Err: fmt.Errorf("unknown command %T: %w", c, errkind.Invalid)}
	}
}

func (t *txn) putDeployment(c *schedulerv1.PutDeploymentCommand) Result {
	d := t.f.deployments[c.Name]
	if d == nil {
		d = &schedulerv1.Deployment{Name: c.Name, Scale: map[string]uint32{}}
		t.f.deployments[c.Name] = d
	}
	d.Deleting = false
	if d.Scale == nil {
		d.Scale = map[string]uint32{}
	}
	next := uint64(1)
	if n := len(d.Versions); n > 0 {
		next = d.Versions[n-1].Version + 1
	}
	t.supersede(d)
	v := &schedulerv1.DeploymentVersion{
		Version:       next,
		SpecYaml:      c.SpecYaml,
		FileName:      c.FileName,
		ServiceHashes: c.ServiceHashes,
		InitialScale:  c.InitialScale,
		CreatedAt:     ts(t.now),
		Outcome:       schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_IN_PROGRESS,
	}
	t.addVersion(d, v)
	// Scale: services that left the file lose their count; the deployer
	// says what each remaining service starts at.
	for svc := range d.Scale {
		if _, ok := c.ServiceHashes[svc]; !ok {
			delete(d.Scale, svc)
		}
	}
	for svc, n := range c.InitialScale {
		d.Scale[svc] = n
	}
	t.touchDeployment(d.Name)
	t.event(&schedulerv1.Event{Deployment: d.Name, Kind: "deployed",
		Message: fmt.Sprintf("version %d deployed from %s", next, c.FileName)})
	return Result{Version: next}
}

// supersede ends the current version's rollout if it is still going.
func (t *txn) supersede(d *schedulerv1.Deployment) {
	if cur := version(d, d.Current); cur != nil && cur.Outcome == schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_IN_PROGRESS {
		cur.Outcome = schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_SUPERSEDED
	}
}

func (t *txn) addVersion(d *schedulerv1.Deployment, v *schedulerv1.DeploymentVersion) {
	d.Versions = append(d.Versions, v)
	if over := len(d.Versions) - MaxVersions; over > 0 {
		d.Versions = slices.Delete(d.Versions, 0, over)
	}
	d.Current = v.Version
}

func version(d *schedulerv1.Deployment, v uint64) *schedulerv1.DeploymentVersion {
	for _, x := range d.GetVersions() {
		if x.Version == v {
			return x
		}
	}
	return nil
}

func (t *txn) deleteDeployment(c *schedulerv1.DeleteDeploymentCommand) Result {
	d := t.f.deployments[c.Name]
	if d == nil {
		return Result{Err: fmt.Errorf("deployment %q: %w", c.Name, errkind.NotFound)}
	}
	d.Deleting = true
	d.JoinTokens = nil
	t.supersede(d)
	t.touchDeployment(d.Name)
	for _, id := range sortedKeys(t.f.replicas) {
		if r := t.f.replicas[id]; r.Deployment == d.Name {
			t.stopReplica(r, "deployment deleted")
		}
	}
	t.event(&schedulerv1.Event{Deployment: d.Name, Kind: "deleted", Message: "deployment deleted; stopping its replicas"})
	t.forgetDeploymentIfEmpty(d.Name)
	return Result{}
}

func (t *txn) forgetDeploymentIfEmpty(name string) {
	d := t.f.deployments[name]
	if d == nil || !d.Deleting {
		return
	}
	for _, r := range t.f.replicas {
		if r.Deployment == name {
			return
		}
	}
	delete(t.f.deployments, name)
	t.touchDeployment(name)
	t.forgetJoins(name)
	t.event(&schedulerv1.Event{Deployment: name, Kind: "removed", Message: "every replica stopped; deployment removed"})
}

func (t *txn) scale(c *schedulerv1.ScaleCommand) Result {
	d := t.f.deployments[c.Deployment]
	if d == nil || d.Deleting {
		return Result{Err: fmt.Errorf("deployment %q: %w", c.Deployment, errkind.NotFound)}
	}
	cur := version(d, d.Current)
	if _, ok := cur.GetServiceHashes()[c.Service]; !ok {
		return Result{Err: fmt.Errorf("service %q of deployment %q: %w", c.Service, c.Deployment, errkind.NotFound)}
	}
	prev := d.Scale[c.Service]
	d.Scale[c.Service] = c.Replicas
	t.touchDeployment(d.Name)
	if prev != c.Replicas {
		if d.ScaledAt == nil {
			d.ScaledAt = map[string]*timestamppb.Timestamp{}
		}
		d.ScaledAt[c.Service] = ts(t.now)
		t.event(&schedulerv1.Event{Deployment: d.Name, Service: c.Service, Kind: "scaled",
			Message: fmt.Sprintf("scaled from %d to %d replicas (%s)", prev, c.Replicas, c.Reason)})
	}
	return Result{Previous: prev}
}

func (t *txn) rollback(c *schedulerv1.RollbackCommand) Result {
	d := t.f.deployments[c.Deployment]
	if d == nil || d.Deleting {
		return Result{Err: fmt.Errorf("deployment %q: %w", c.Deployment, errkind.NotFound)}
	}
	if c.FailedVersion != 0 && c.FailedVersion != d.Current {
		// A stale automatic rollback: the user deployed something newer.
		return Result{Err: fmt.Errorf("version %d is no longer current: %w", c.FailedVersion, errkind.Conflict)}
	}
	target := c.ToVersion
	if target == 0 {
		target = previousGood(d)
	}
	from := version(d, target)
	if from == nil || target == d.Current {
		return Result{Err: fmt.Errorf("deployment %q has no version %d to roll back to: %w", d.Name, target, errkind.Precondition)}
	}
	cur := version(d, d.Current)
	if c.FailedVersion != 0 {
		cur.Outcome = schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_FAILED
		cur.Reason = c.Reason
	} else {
		t.supersede(d)
	}
	next := d.Versions[len(d.Versions)-1].Version + 1
	v := proto.CloneOf(from)
	// Services the current file dropped get back the count they had.
	for svc := range v.ServiceHashes {
		if _, ok := d.Scale[svc]; !ok {
			d.Scale[svc] = from.InitialScale[svc]
		}
	}
	v.Version = next
	v.CreatedAt = ts(t.now)
	v.Outcome = schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_IN_PROGRESS
	v.Reason = ""
	v.RolledBackFrom = cur.Version
	t.addVersion(d, v)
	t.touchDeployment(d.Name)
	t.event(&schedulerv1.Event{Deployment: d.Name, Kind: "rollback",
		Message: fmt.Sprintf("rolled back from version %d to the file of version %d (now version %d): %s", cur.Version, target, next, c.Reason)})
	return Result{Version: next, Previous: uint32(target)}
}

// previousGood is the newest version before the current one whose rollout
// completed, or else simply the one before the current.
func previousGood(d *schedulerv1.Deployment) uint64 {
	var fallback uint64
	for i := len(d.Versions) - 1; i >= 0; i-- {
		v := d.Versions[i]
		if v.Version >= d.Current {
			continue
		}
		if fallback == 0 {
			fallback = v.Version
		}
		if v.Outcome == schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_COMPLETE {
			return v.Version
		}
	}
	return fallback
}

func (t *txn) registerNode(c *schedulerv1.RegisterNodeCommand) Result {
	in := c.GetNode()
	if in.GetName() == "" {
		return Result{Err: fmt.Errorf("register node: empty name: %w", errkind.Invalid)}
	}
	n := t.f.nodes[in.Name]
	isNew := n == nil
	wasDown := n.GetState() == schedulerv1.NodeState_NODE_STATE_DOWN
	joined, agentDown, overlay := n.GetJoinedServices(), n.GetAgentDown(), n.GetOverlay()
	n = proto.CloneOf(in)
	n.JoinedServices = joined // kept across restarts: joins come from JoinCommand only
	n.AgentDown = agentDown   // heartbeats say when it changes
	n.Overlay = overlay       // the overlay says when it changes
	n.State = schedulerv1.NodeState_NODE_STATE_READY
	n.LastHeartbeat = ts(t.now)
	t.f.nodes[n.Name] = n
	t.touchNode(n.Name)
	switch {
	case isNew:
		t.event(&schedulerv1.Event{Node: n.Name, Kind: "node-joined",
			Message: fmt.Sprintf("node joined with %.1f CPUs and %d MiB", n.Cpu, n.MemoryBytes>>20)})
	case wasDown:
		t.event(&schedulerv1.Event{Node: n.Name, Kind: "node-ready", Message: "node is back"})
	}
	return Result{}
}

func (t *txn) heartbeat(c *schedulerv1.HeartbeatCommand) Result {
	n := t.f.nodes[c.Node]
	if n == nil {
		return Result{Err: fmt.Errorf("node %q is not registered: %w", c.Node, errkind.NotFound)}
	}
	n.LastHeartbeat = ts(t.now)
	if n.State == schedulerv1.NodeState_NODE_STATE_DOWN {
		n.State = schedulerv1.NodeState_NODE_STATE_READY
		t.event(&schedulerv1.Event{Node: n.Name, Kind: "node-ready", Message: "node is back"})
	}
	if len(c.Load) > 0 {
		n.Load, n.LoadAt = c.Load, ts(t.now)
	}
	if c.AgentDown != nil && c.GetAgentDown() != n.AgentDown {
		n.AgentDown = c.GetAgentDown()
		if n.AgentDown {
			t.event(&schedulerv1.Event{Node: n.Name, Kind: "agent-down", Message: "the node's agent does not answer: no new replicas go there"})
		} else {
			t.event(&schedulerv1.Event{Node: n.Name, Kind: "agent-up", Message: "the node's agent answers again"})
		}
	}
	t.touchNode(n.Name)
	for _, s := range c.Statuses {
		r := t.f.replicas[s.Id]
		if r == nil || r.Node != c.Node {
			continue // forgotten meanwhile, or moved: the node will be told
		}
		t.updateReplica(r, s)
	}
	return Result{}
}

func (t *txn) updateReplica(r *schedulerv1.Replica, s *schedulerv1.ReplicaStatus) {
	if r.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_LOST {
		return // its node was declared down; a replacement exists
	}
	phase := s.Phase
	if r.DesiredStop && phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED {
		phase = schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPING
	}
	changed := phase != r.Phase || s.Health != r.Health
	prevPhase, prevHealth := r.Phase, r.Health
	r.Phase, r.Health = phase, s.Health
	r.Ip, r.Restarts, r.ExitCode = s.Ip, s.Restarts, s.ExitCode
	if s.Held != "" && r.Held == "" {
		r.Held = s.Held
		switch s.Held {
		case "isolate":
			t.replicaEvent(r, "isolated", "replica isolated for inspection (on_panic: isolate): %s", s.Reason)
		case "shutdown":
			t.replicaEvent(r, "shut-down", "replica left stopped (on_panic: shutdown): %s", s.Reason)
		case "init":
			t.replicaEvent(r, "init-failed", "replica left failed (on_init_failure: fail): %s", s.Reason)
		}
	}
	if s.Reason != "" || changed {
		r.Reason = s.Reason
	}
	t.touchReplica(r.Id)
	if !changed {
		return
	}
	r.ChangedAt = ts(t.now)
	if phase != prevPhase {
		switch phase {
		case schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING:
			if r.Reason != "" {
				t.replicaEvent(r, "started", "replica running at %s; %s", orNone(r.Ip), r.Reason)
			} else {
				t.replicaEvent(r, "started", "replica running at %s", orNone(r.Ip))
			}
		case schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED:
			t.replicaEvent(r, "failed", "replica failed (exit code %d): %s", r.ExitCode, r.Reason)
		case schedulerv1.ReplicaPhase_REPLICA_PHASE_SUCCEEDED:
			t.replicaEvent(r, "succeeded", "run %d succeeded", r.Index)
		case schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED:
			t.replicaEvent(r, "stopped", "replica stopped")
		case schedulerv1.ReplicaPhase_REPLICA_PHASE_STARTING:
			if r.Reason != "" {
				t.replicaEvent(r, "starting", "replica starting: %s", r.Reason)
			} else {
				t.replicaEvent(r, "starting", "replica starting")
			}
		}
	}
	if s.Health != prevHealth {
		switch s.Health {
		case schedulerv1.Health_HEALTH_HEALTHY:
			t.replicaEvent(r, "healthy", "replica healthy")
		case schedulerv1.Health_HEALTH_UNHEALTHY:
			t.replicaEvent(r, "unhealthy", "replica unhealthy: %s", r.Reason)
		}
	}
}

func orNone(s string) string {
	if s == "" {
		return "(no address)"
	}
	return s
}

// checkOverlay reports why node cannot take place in in the mesh beside
// the other nodes: what the overlays need (a WireGuard key, an IPv4 subnet
// with the device's address in it, a port), and no two nodes with one key
// or overlapping subnets, which would steal each other's traffic.
func checkOverlay(nodes map[string]*schedulerv1.Node, node string, in *schedulerv1.NodeOverlay) error {
	what := fmt.Sprintf("overlay of node %q", node)
	if key, err := base64.StdEncoding.DecodeString(in.GetPublicKey()); err != nil || len(key) != 32 {
		return fmt.Errorf("%s: public key %q is not a base64 WireGuard key: %w", what, in.GetPublicKey(), errkind.Invalid)
	}
	cidr, err := netip.ParsePrefix(in.GetContainerCidr())
	if err != nil || !cidr.Addr().Is4() {
		return fmt.Errorf("%s: container subnet %q: want an IPv4 CIDR: %w", what, in.GetContainerCidr(), errkind.Invalid)
	}
	if a, err := netip.ParseAddr(in.GetAddress()); err != nil || !cidr.Contains(a) {
		return fmt.Errorf("%s: device address %q is not in its subnet %s: %w", what, in.GetAddress(), cidr, errkind.Invalid)
	}
	if in.GetPort() == 0 || in.GetPort() > 65535 {
		return fmt.Errorf("%s: port %d: %w", what, in.GetPort(), errkind.Invalid)
	}
	for _, name := range sortedKeys(nodes) {
		o := nodes[name].GetOverlay()
		other, _ := netip.ParsePrefix(o.GetContainerCidr())
		switch {
		case name == node || o == nil:
		case o.PublicKey == in.PublicKey:
			return fmt.Errorf("%s: node %q has the same public key: %w", what, name, errkind.Conflict)
		case other.IsValid() && other.Overlaps(cidr):
			return fmt.Errorf("%s: its container subnet %s overlaps node %q's %s (give each node its own --container-cidr): %w",
				what, in.ContainerCidr, name, o.ContainerCidr, errkind.Conflict)
		}
	}
	return nil
}

// setNodeOverlay records a node's place in the WireGuard mesh. Two nodes
// with one key or one container subnet would steal each other's traffic.
func (t *txn) setNodeOverlay(c *schedulerv1.SetNodeOverlayCommand) Result {
	n := t.f.nodes[c.Node]
	if n == nil {
		return Result{Err: fmt.Errorf("node %q: %w", c.Node, errkind.NotFound)}
	}
	in := c.GetOverlay()
	if err := checkOverlay(t.f.nodes, c.Node, in); err != nil {
		return Result{Err: err}
	}
	if proto.Equal(n.Overlay, in) {
		return Result{}
	}
	n.Overlay = proto.CloneOf(in)
	t.touchNode(n.Name)
	t.event(&schedulerv1.Event{Node: n.Name, Kind: "overlay", Message: fmt.Sprintf("node joined the overlay with subnet %s", in.ContainerCidr)})
	return Result{}
}

func (t *txn) setNodeState(c *schedulerv1.SetNodeStateCommand) Result {
	n := t.f.nodes[c.Node]
	if n == nil {
		return Result{Err: fmt.Errorf("node %q: %w", c.Node, errkind.NotFound)}
	}
	if n.State == c.State {
		return Result{}
	}
	n.State = c.State
	t.touchNode(n.Name)
	if c.State != schedulerv1.NodeState_NODE_STATE_DOWN {
		t.event(&schedulerv1.Event{Node: n.Name, Kind: "node-ready", Message: c.Reason})
		return Result{}
	}
	t.event(&schedulerv1.Event{Node: n.Name, Kind: "node-down", Message: c.Reason})
	for _, id := range sortedKeys(t.f.replicas) {
		r := t.f.replicas[id]
		if r.Node != n.Name || r.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED {
			continue
		}
		r.Phase = schedulerv1.ReplicaPhase_REPLICA_PHASE_LOST
		r.Reason = "node " + n.Name + " is down"
		r.ChangedAt = ts(t.now)
		t.touchReplica(r.Id)
		t.replicaEvent(r, "lost", "replica lost: node %s is down", n.Name)
	}
	return Result{}
}

// stopReplica marks r to be stopped. A replica that never reached a node
// is stopped at once.
func (t *txn) stopReplica(r *schedulerv1.Replica, reason string) {
	if r.DesiredStop {
		return
	}
	r.DesiredStop = true
	r.Reason = reason
	r.ChangedAt = ts(t.now)
	switch r.Phase {
	case schedulerv1.ReplicaPhase_REPLICA_PHASE_PENDING, schedulerv1.ReplicaPhase_REPLICA_PHASE_LOST,
		schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED:
		r.Phase = schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED
	default:
		r.Phase = schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPING
	}
	t.touchReplica(r.Id)
	t.replicaEvent(r, "stopping", "stopping replica: %s", reason)
}

func (t *txn) plan(c *schedulerv1.PlanCommand) Result {
	for _, tick := range c.Cron {
		d := t.f.deployments[tick.Deployment]
		if d == nil || d.Deleting {
			continue
		}
		if last := d.CronLast[tick.Service]; last != nil && !tick.ScheduledAt.AsTime().After(last.AsTime()) {
			continue // already recorded: a stale plan
		}
		if d.CronLast == nil {
			d.CronLast = map[string]*timestamppb.Timestamp{}
		}
		d.CronLast[tick.Service] = tick.ScheduledAt
		t.touchDeployment(d.Name)
		if tick.RunId == "" {
			t.event(&schedulerv1.Event{Deployment: d.Name, Service: tick.Service, Kind: "cron-skipped",
				Message: fmt.Sprintf("run due at %s skipped: %s", tick.ScheduledAt.AsTime().UTC().Format(time.RFC3339), tick.Reason)})
		}
	}
	for _, in := range c.Create {
		d := t.f.deployments[in.Deployment]
		if t.f.replicas[in.Id] != nil || d == nil || d.Deleting || (!in.Run && t.slotTaken(in)) {
			continue
		}
		if in.Run {
			if last := d.CronLast[in.Service]; last == nil {
				continue // a cron run comes with its tick
			}
			in = proto.CloneOf(in)
			in.Index = t.nextRun(in.Deployment, in.Service)
		}
		r := proto.CloneOf(in)
		r.CreatedAt, r.ChangedAt = ts(t.now), ts(t.now)
		r.Phase = schedulerv1.ReplicaPhase_REPLICA_PHASE_PENDING
		if r.Node != "" {
			if n := t.f.nodes[r.Node]; n == nil || n.State != schedulerv1.NodeState_NODE_STATE_READY {
				r.Node, r.Reason = "", "chosen node "+r.Node+" is not ready"
			} else {
				r.Phase = schedulerv1.ReplicaPhase_REPLICA_PHASE_ASSIGNED
			}
		}
		t.f.replicas[r.Id] = r
		t.touchReplica(r.Id)
		if r.Run {
			t.replicaEvent(r, "run", "run %d started by %s", r.Index, r.Trigger)
		}
		if r.Node != "" {
			t.replicaEvent(r, "placed", "replica %d of version %d placed on %s", r.Index, r.Version, r.Node)
		} else {
			t.replicaEvent(r, "pending", "replica %d of version %d pending: %s", r.Index, r.Version, r.Reason)
		}
	}
	for _, p := range c.Place {
		r := t.f.replicas[p.Replica]
		n := t.f.nodes[p.Node]
		if r == nil || r.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_PENDING || r.DesiredStop ||
			n == nil || n.State != schedulerv1.NodeState_NODE_STATE_READY {
			continue
		}
		r.Node, r.Phase, r.Reason, r.ChangedAt = p.Node, schedulerv1.ReplicaPhase_REPLICA_PHASE_ASSIGNED, "", ts(t.now)
		t.touchReplica(r.Id)
		t.replicaEvent(r, "placed", "replica placed on %s", p.Node)
	}
	for _, p := range c.Pending {
		r := t.f.replicas[p.Replica]
		if r == nil || r.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_PENDING || r.Reason == p.Reason {
			continue
		}
		r.Reason = p.Reason
		t.touchReplica(r.Id)
	}
	for _, s := range c.Stop {
		if r := t.f.replicas[s.Replica]; r != nil {
			t.stopReplica(r, s.Reason)
		}
	}
	emptied := map[string]bool{}
	for _, id := range c.Forget {
		r := t.f.replicas[id]
		if r == nil || !Forgettable(r) {
			continue
		}
		delete(t.f.replicas, id)
		t.touchReplica(id)
		emptied[r.Deployment] = true
	}
	for _, name := range sortedKeys(emptied) {
		t.forgetDeploymentIfEmpty(name)
	}
	for _, o := range c.Outcomes {
		d := t.f.deployments[o.Deployment]
		v := version(d, o.Version)
		if v == nil || v.Outcome != schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_IN_PROGRESS {
			continue
		}
		v.Outcome, v.Reason = o.Outcome, o.Reason
		t.touchDeployment(d.Name)
		msg := fmt.Sprintf("rollout of version %d %s", o.Version, strings.TrimPrefix(strings.ToLower(o.Outcome.String()), "rollout_outcome_"))
		if o.Reason != "" {
			msg += ": " + o.Reason
		}
		t.event(&schedulerv1.Event{Deployment: d.Name, Kind: "rollout", Message: msg})
	}
	return Result{}
}

// slotTaken reports whether a live replica already fills in's slot with
// the same spec: a plan computed before an earlier plan was applied (a
// retried proposal, a new leader) must not start a duplicate.
func (t *txn) slotTaken(in *schedulerv1.Replica) bool {
	for _, r := range t.f.replicas {
		if r.Deployment == in.Deployment && r.Service == in.Service && r.Index == in.Index && r.SpecHash == in.SpecHash &&
			!r.DesiredStop && !Forgettable(r) && r.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED {
			return true
		}
	}
	return false
}

func (t *txn) runJob(c *schedulerv1.RunJobCommand) Result {
	d := t.f.deployments[c.Deployment]
	if d == nil || d.Deleting {
		return Result{Err: fmt.Errorf("deployment %q: %w", c.Deployment, errkind.NotFound)}
	}
	hash, ok := version(d, d.Current).GetServiceHashes()[c.Service]
	if !ok {
		return Result{Err: fmt.Errorf("service %q of deployment %q: %w", c.Service, c.Deployment, errkind.NotFound)}
	}
	if t.f.replicas[c.ReplicaId] != nil {
		return Result{} // a retried proposal
	}
	r := &schedulerv1.Replica{
		Id: c.ReplicaId, Deployment: d.Name, Service: c.Service, Index: t.nextRun(d.Name, c.Service),
		Version: d.Current, SpecHash: hash, Run: true, Trigger: c.Trigger,
		Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_PENDING, Reason: "waiting for a node",
		CreatedAt: ts(t.now), ChangedAt: ts(t.now),
	}
	if c.Node != "" {
		n := t.f.nodes[c.Node]
		if n == nil || n.State != schedulerv1.NodeState_NODE_STATE_READY {
			return Result{Err: fmt.Errorf("node %q is not ready to run %s/%s: %w", c.Node, d.Name, c.Service, errkind.Unavailable)}
		}
		r.Node, r.Phase, r.Reason = c.Node, schedulerv1.ReplicaPhase_REPLICA_PHASE_ASSIGNED, ""
	}
	t.f.replicas[r.Id] = r
	t.touchReplica(r.Id)
	t.replicaEvent(r, "run", "run %d started by %s", r.Index, c.Trigger)
	return Result{}
}

// nextRun numbers a job's runs from 1.
func (t *txn) nextRun(deployment, service string) uint32 {
	var n uint32
	for _, r := range t.f.replicas {
		if r.Run && r.Deployment == deployment && r.Service == service {
			n = max(n, r.Index)
		}
	}
	return n + 1
}

// Forgettable reports whether r may be removed from the state: it is gone
// from its node (stopped), or its node is down (lost), or it failed and
// was told to stop.
func Forgettable(r *schedulerv1.Replica) bool {
	switch r.Phase {
	case schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED, schedulerv1.ReplicaPhase_REPLICA_PHASE_LOST:
		return true
	}
	return false
}
