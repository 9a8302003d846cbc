// Package reconcile decides what the cluster should do next. Plan is pure:
// from a copy of the state, the services of each deployment version and the
// leader's clock it returns the commands that move actual state toward the
// desired state — replicas to create, place, stop and forget, rollouts to
// finish or roll back, nodes to mark down. The leader proposes them; the
// state machine re-checks each part against the state when it applies it,
// so a plan computed on slightly old state is harmless.
//
// Rollouts replace replicas one at a time: a new replica is started at the
// index of an old one, and the old one is stopped only when the new one is
// healthy. A replica of the new version that fails (or restarts too often)
// while the rollout is in progress rolls the deployment back to its last
// good version.
package reconcile

import (
	"crypto/rand"
	"encoding/hex"
	"fmt"
	"math"
	"slices"
	"strings"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/services/scheduler/internal/fsm"
	"zlayer.dev/services/scheduler/internal/placement"
)

// Service is what the reconciler needs to know of one service's spec.
type Service struct {
	Name   string
	Hash   string
	RType  string // service, job or cron
	Demand placement.Demand
	// Next returns a cron service's first scheduled time after a time;
	// nil for other services.
	Next func(after time.Time) time.Time
	// Auto is set for adaptive services.
	Auto *Autoscale
	// JoinClosed: network.join.mode is closed, so joins (made before the
	// mode changed) do not steer its placement.
	JoinClosed bool
}

// Autoscale is an adaptive service's scaling rule (SPEC.md scale).
type Autoscale struct {
	Min, Max uint32
	Cooldown time.Duration
	// Targets per replica; zero means not a target.
	CPU, Memory, RPS float64
}

// Specs returns the services of version v of deployment d.
type Specs func(d *schedulerv1.Deployment, v *schedulerv1.DeploymentVersion) (map[string]Service, error)

// Config tunes the reconciler.
type Config struct {
	// NodeTimeout: a ready node silent this long is marked down.
	NodeTimeout time.Duration
	// MaxRolloutRestarts: a new-version replica restarted this often during
	// its rollout counts as failed.
	MaxRolloutRestarts uint32
	// ReplaceFailedAfter: a failed replica outside a rollout is removed and
	// replaced this long after it failed (it stays visible meanwhile, and a
	// replica that always fails is not replaced in a hot loop).
	ReplaceFailedAfter time.Duration
	// LoadFresh: node load measurements older than this are ignored by the
	// autoscaler.
	LoadFresh time.Duration
	// JobHistory is how many finished runs of each job are kept
	// (DefaultJobHistory when zero).
	JobHistory int
}

// DefaultJobHistory is how many finished runs of a job or cron job are kept
// when Config.JobHistory is zero.
const DefaultJobHistory = 10

// MaxIsolated is how many replicas isolated by on_panic: isolate are kept
// per service; older ones are removed.
const MaxIsolated = 3

// Phases.
const (
	pending  = schedulerv1.ReplicaPhase_REPLICA_PHASE_PENDING
	running  = schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING
	failed   = schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED
	stopped  = schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED
	lost     = schedulerv1.ReplicaPhase_REPLICA_PHASE_LOST
	inFlight = schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_IN_PROGRESS
)

func healthy(r *schedulerv1.Replica) bool {
	return r.Phase == running && r.Health == schedulerv1.Health_HEALTH_HEALTHY
}

// live replicas count toward their service: not told to stop, not gone.
func live(r *schedulerv1.Replica) bool {
	return !r.DesiredStop && r.Phase != stopped && r.Phase != lost && r.Phase != failed
}

// Plan returns the commands to propose, in order.
func Plan(s *fsm.State, specs Specs, now time.Time, cfg Config) []*schedulerv1.Command {
	p := &planner{s: s, specs: specs, now: now, cfg: cfg, plan: &schedulerv1.PlanCommand{}, cache: map[string]map[string]Service{}}
	return p.run()
}

type planner struct {
	s     *fsm.State
	specs Specs
	now   time.Time
	cfg   Config
	cmds  []*schedulerv1.Command
	plan  *schedulerv1.PlanCommand
	cache map[string]map[string]Service
	nodes *placement.Cluster
}

func (p *planner) services(d *schedulerv1.Deployment, version uint64) map[string]Service {
	key := fmt.Sprintf("%s@%d", d.Name, version)
	if svcs, ok := p.cache[key]; ok {
		return svcs
	}
	var svcs map[string]Service
	if v := fsm.Version(d, version); v != nil {
		svcs, _ = p.specs(d, v) // a version that does not parse has no services
	}
	p.cache[key] = svcs
	return svcs
}

// openJoins drops from a node's joins the services whose current version
// is closed to joins.
func (p *planner) openJoins(joined []string) []string {
	out := joined[:0:0]
	for _, j := range joined {
		dep, svc, _ := strings.Cut(j, "/")
		if d := p.s.Deployments[dep]; d != nil && svc != fsm.AllServices && p.services(d, d.Current)[svc].JoinClosed {
			continue
		}
		out = append(out, j)
	}
	return out
}

func (p *planner) command(c *schedulerv1.Command) {
	c.ProposedAt = timestamppb.New(p.now)
	p.cmds = append(p.cmds, c)
}

func (p *planner) run() []*schedulerv1.Command {
	p.checkNodes()
	p.buildCluster()
	for _, name := range sortedKeys(p.s.Deployments) {
		p.deployment(p.s.Deployments[name])
	}
	p.placePending()
	pl := p.plan
	if len(pl.Create)+len(pl.Place)+len(pl.Stop)+len(pl.Forget)+len(pl.Outcomes)+len(pl.Pending)+len(pl.Cron) > 0 {
		p.command(&schedulerv1.Command{Kind: &schedulerv1.Command_Plan{Plan: pl}})
	}
	return p.cmds
}

// checkNodes marks silent nodes down.
func (p *planner) checkNodes() {
	for _, name := range sortedKeys(p.s.Nodes) {
		n := p.s.Nodes[name]
		if n.State != schedulerv1.NodeState_NODE_STATE_READY || p.cfg.NodeTimeout <= 0 {
			continue
		}
		if silent := p.now.Sub(n.LastHeartbeat.AsTime()); silent > p.cfg.NodeTimeout {
			reason := fmt.Sprintf("no heartbeat for %s (timeout %s)", silent.Truncate(100*time.Millisecond), p.cfg.NodeTimeout)
			p.command(&schedulerv1.Command{Kind: &schedulerv1.Command_SetNodeState{SetNodeState: &schedulerv1.SetNodeStateCommand{
				Node: n.Name, State: schedulerv1.NodeState_NODE_STATE_DOWN, Reason: reason,
			}}})
			n.State = schedulerv1.NodeState_NODE_STATE_DOWN // for the rest of this plan
			for _, r := range p.s.Replicas {
				if r.Node == n.Name && r.Phase != stopped {
					r.Phase = lost
				}
			}
		}
	}
}

func (p *planner) buildCluster() {
	var nodes []placement.Node
	for _, n := range p.s.Nodes {
		nodes = append(nodes, placement.Node{
			Name: n.Name, CPU: n.Cpu, Memory: int64(n.MemoryBytes),
			Ready: n.State == schedulerv1.NodeState_NODE_STATE_READY, AgentDown: n.AgentDown, Joined: p.openJoins(n.JoinedServices),
		})
	}
	p.nodes = placement.NewCluster(nodes)
	for _, r := range p.s.Replicas {
		if r.Node == "" || r.Phase == stopped || r.Phase == lost {
			continue
		}
		d := p.s.Deployments[r.Deployment]
		if d == nil {
			continue
		}
		p.nodes.Add(r.Node, r.Deployment+"/"+r.Service, p.services(d, r.Version)[r.Service].Demand)
	}
}

func (p *planner) deployment(d *schedulerv1.Deployment) {
	replicas := p.s.ReplicasOf(d.Name)
	for _, r := range replicas {
		if fsm.Forgettable(r) {
			p.plan.Forget = append(p.plan.Forget, r.Id)
		}
	}
	if d.Deleting {
		for _, r := range replicas {
			if !r.DesiredStop && r.Phase != lost {
				p.stop(r, "deployment deleted")
			}
		}
		return
	}
	cur := fsm.Version(d, d.Current)
	svcs := p.services(d, d.Current)
	if cur == nil || svcs == nil {
		return
	}
	// Replicas of services that left the file.
	for _, r := range replicas {
		if _, ok := svcs[r.Service]; !ok && !r.DesiredStop && !fsm.Forgettable(r) {
			p.stop(r, "service removed from the deployment")
		}
	}
	if cur.Outcome == inFlight {
		if reason := p.rolloutFailure(d, replicas, svcs); reason != "" {
			p.failRollout(d, cur, reason)
			return
		}
	}
	complete := true
	for _, name := range sortedKeys(svcs) {
		if !p.service(d, svcs[name], replicas) {
			complete = false
		}
		p.runs(d, svcs[name], replicas)
	}
	if cur.Outcome != inFlight {
		for _, name := range sortedKeys(svcs) {
			if svc := svcs[name]; svc.Auto != nil {
				p.autoscale(d, svc, replicas)
			}
		}
	}
	if cur.Outcome == inFlight && complete {
		p.plan.Outcomes = append(p.plan.Outcomes, &schedulerv1.RolloutResult{
			Deployment: d.Name, Version: d.Current, Outcome: schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_COMPLETE,
		})
	}
}

// rolloutFailure returns why the current version's rollout failed, or "".
func (p *planner) rolloutFailure(d *schedulerv1.Deployment, replicas []*schedulerv1.Replica, svcs map[string]Service) string {
	for _, r := range replicas {
		svc, ok := svcs[r.Service]
		if !ok || r.Version != d.Current || r.SpecHash != svc.Hash || r.DesiredStop || r.Run {
			continue
		}
		if r.Phase == failed {
			return fmt.Sprintf("replica %s of service %s failed (exit code %d): %s", r.Id, r.Service, r.ExitCode, r.Reason)
		}
		if r.Health == schedulerv1.Health_HEALTH_UNHEALTHY {
			return fmt.Sprintf("replica %s of service %s is unhealthy: %s", r.Id, r.Service, r.Reason)
		}
		if p.cfg.MaxRolloutRestarts > 0 && r.Restarts >= p.cfg.MaxRolloutRestarts {
			return fmt.Sprintf("replica %s of service %s restarted %d times", r.Id, r.Service, r.Restarts)
		}
	}
	return ""
}

func (p *planner) failRollout(d *schedulerv1.Deployment, cur *schedulerv1.DeploymentVersion, reason string) {
	for _, v := range d.Versions {
		if cur.RolledBackFrom != 0 {
			break // a failed rollback is not rolled back again: it stays failed for people to decide
		}
		if v.Version < cur.Version {
			p.command(&schedulerv1.Command{Kind: &schedulerv1.Command_Rollback{Rollback: &schedulerv1.RollbackCommand{
				Deployment: d.Name, FailedVersion: cur.Version, Reason: reason,
			}}})
			return
		}
	}
	// A first version (or a rollback) has nothing to go back to: it stays
	// failed; its failed replicas are replaced after ReplaceFailedAfter.
	p.plan.Outcomes = append(p.plan.Outcomes, &schedulerv1.RolloutResult{
		Deployment: d.Name, Version: cur.Version, Outcome: schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_FAILED, Reason: reason,
	})
}

// service plans one service and reports whether it is fully rolled out:
// exactly the desired count of healthy replicas of the current spec.
func (p *planner) service(d *schedulerv1.Deployment, svc Service, all []*schedulerv1.Replica) bool {
	want := int(d.Scale[svc.Name])
	if svc.RType != "service" {
		want = 0 // jobs and cron jobs run on trigger, not as standing replicas
	}
	cur := map[int][]*schedulerv1.Replica{}
	old := map[int][]*schedulerv1.Replica{}
	rolling := false // a new-spec replica is replacing an old one and is not healthy yet
	done := true
	held := map[int]bool{} // indices whose failed replica waits to be replaced
	var isolated []*schedulerv1.Replica
	defer func() {
		// Keep the newest MaxIsolated isolated replicas of a service: a
		// replica that dies again and again must not pile up containers.
		slices.SortFunc(isolated, func(a, b *schedulerv1.Replica) int { return b.ChangedAt.AsTime().Compare(a.ChangedAt.AsTime()) })
		for _, r := range isolated[min(len(isolated), MaxIsolated):] {
			p.stop(r, fmt.Sprintf("only the newest %d isolated replicas are kept", MaxIsolated))
		}
	}()
	for _, r := range all {
		if r.Service != svc.Name || r.Run {
			continue
		}
		if r.Phase == failed && !r.DesiredStop && r.Held == "isolate" {
			isolated = append(isolated, r)
			continue // kept for inspection; not live, so its index is refilled
		}
		if r.Phase == failed && !r.DesiredStop && r.Held != "" {
			held[int(r.Index)] = true // left failed on purpose (on_panic: shutdown, on_init_failure: fail): not replaced
			continue
		}
		if r.Phase == failed && !r.DesiredStop {
			// Failed outside a rollout: remove it after a while (at once
			// if it runs an old spec); its slot is refilled then.
			if r.SpecHash != svc.Hash || p.now.Sub(r.ChangedAt.AsTime()) >= p.cfg.ReplaceFailedAfter {
				p.stop(r, "replica failed: "+r.Reason)
			} else {
				held[int(r.Index)] = true
			}
			done = false
			continue
		}
		if !live(r) {
			continue
		}
		i := int(r.Index)
		if r.SpecHash == svc.Hash {
			cur[i] = append(cur[i], r)
		} else {
			old[i] = append(old[i], r)
		}
	}
	for i, rs := range cur {
		if len(old[i]) > 0 && !healthy(rs[0]) {
			rolling = true
		}
	}
	for i := 0; i < want; i++ {
		c, o := cur[i], old[i]
		for _, extra := range c[min(len(c), 1):] {
			p.stop(extra, "duplicate replica for its index")
		}
		switch {
		case len(c) > 0:
			if c[0].Phase == pending && len(o) > 0 {
				// No room for a new replica beside the old one: let the
				// old one go first (one replica unavailable at a time).
				for _, r := range o {
					p.stop(r, "making room for "+c[0].Id+": "+c[0].Reason)
				}
				done = false
				continue
			}
			if !healthy(c[0]) {
				done = false
				continue
			}
			for _, r := range o {
				p.stop(r, fmt.Sprintf("replaced by %s (version %d)", c[0].Id, c[0].Version))
				done = false
			}
		case len(o) > 0:
			done = false
			if rolling {
				continue // one replica at a time
			}
			p.create(d, svc, i)
			rolling = true
		case held[i]:
			done = false
		default:
			done = false
			p.create(d, svc, i)
		}
	}
	for i, rs := range cur {
		if i >= want {
			for _, r := range rs {
				p.stop(r, "scaled down")
			}
			done = false
		}
	}
	for i, rs := range old {
		if i >= want {
			for _, r := range rs {
				p.stop(r, "scaled down")
			}
			done = false
		}
	}
	return done
}

// autoscale follows an adaptive service's load: for each target, the count
// that brings the per-replica load to it (ceil(current × load / target); for
// rps, ceil(total rps / target)); the largest wins, within min..max, at most
// once per cooldown.
func (p *planner) autoscale(d *schedulerv1.Deployment, svc Service, all []*schedulerv1.Replica) {
	a := svc.Auto
	current := d.Scale[svc.Name]
	if at := d.ScaledAt[svc.Name]; at != nil && p.now.Sub(at.AsTime()) < a.Cooldown {
		return
	}
	up := 0
	for _, r := range all {
		if r.Service == svc.Name && !r.Run && live(r) && r.Phase == running {
			up++
		}
	}
	var rps, cpu, mem float64
	measured := uint32(0)
	fresh := false
	for _, n := range p.s.Nodes {
		if n.LoadAt == nil || p.now.Sub(n.LoadAt.AsTime()) > p.cfg.LoadFresh {
			continue
		}
		for _, l := range n.Load {
			if l.Deployment == d.Name && l.Service == svc.Name {
				fresh = true
				rps += l.Rps
				cpu += l.CpuPercent
				mem += l.MemoryPercent
				measured += l.Replicas
			}
		}
	}
	if !fresh || up == 0 || int(current) != up {
		return // nothing measured, or a change is still being carried out
	}
	want, why := uint32(0), ""
	consider := func(n uint32, reason string) {
		if n > want {
			want, why = n, reason
		}
	}
	if a.RPS > 0 {
		consider(uint32(math.Ceil(rps/a.RPS)), fmt.Sprintf("%.1f requests/s for a target of %.1f per replica", rps, a.RPS))
	}
	if a.CPU > 0 && measured > 0 {
		avg := cpu / float64(measured)
		consider(uint32(math.Ceil(float64(current)*avg/a.CPU)), fmt.Sprintf("cpu %.0f%% per replica for a target of %.0f%%", avg, a.CPU))
	}
	if a.Memory > 0 && measured > 0 {
		avg := mem / float64(measured)
		consider(uint32(math.Ceil(float64(current)*avg/a.Memory)), fmt.Sprintf("memory %.0f%% per replica for a target of %.0f%%", avg, a.Memory))
	}
	want = min(max(want, a.Min), a.Max)
	if want == current {
		return
	}
	p.command(&schedulerv1.Command{Kind: &schedulerv1.Command_Scale{Scale: &schedulerv1.ScaleCommand{
		Deployment: d.Name, Service: svc.Name, Replicas: want, Reason: "autoscaler: " + why,
	}}})
}

// runs keeps the newest JobHistory finished runs of a job or cron job, and
// starts a cron job's run when its schedule comes.
func (p *planner) runs(d *schedulerv1.Deployment, svc Service, all []*schedulerv1.Replica) {
	var finished []*schedulerv1.Replica
	active := false
	for _, r := range all {
		if !r.Run || r.Service != svc.Name || r.DesiredStop {
			continue
		}
		switch r.Phase {
		case schedulerv1.ReplicaPhase_REPLICA_PHASE_SUCCEEDED, failed:
			finished = append(finished, r)
		case stopped, lost:
		default:
			active = true
		}
	}
	slices.SortFunc(finished, func(a, b *schedulerv1.Replica) int { return int(b.Index) - int(a.Index) })
	keep := p.cfg.JobHistory
	if keep <= 0 {
		keep = DefaultJobHistory
	}
	for _, r := range finished[min(len(finished), keep):] {
		p.stop(r, fmt.Sprintf("only the last %d runs are kept", keep))
	}
	if svc.Next == nil {
		return
	}
	last := fsm.Version(d, d.Current).GetCreatedAt().AsTime()
	if t, ok := d.CronLast[svc.Name]; ok {
		last = t.AsTime()
	}
	due := svc.Next(last)
	if due.IsZero() || due.After(p.now) {
		return
	}
	// The newest scheduled time that has come: earlier ones missed while no
	// leader ran the schedule are dropped (at most one run, late).
	for range 10000 {
		n := svc.Next(due)
		if n.IsZero() || n.After(p.now) {
			break
		}
		due = n
	}
	// The newest time that came runs (late, if a leader was missing: it
	// is less than one interval ago by construction); older ones are not.
	tick := &schedulerv1.CronTick{Deployment: d.Name, Service: svc.Name, ScheduledAt: timestamppb.New(due)}
	if active {
		tick.Reason = "the previous run is still running"
	} else {
		r := &schedulerv1.Replica{
			Id: fmt.Sprintf("%s-%s-run-%s", d.Name, svc.Name, randomSuffix()), Deployment: d.Name, Service: svc.Name,
			Version: d.Current, SpecHash: svc.Hash, Run: true, Trigger: "cron",
		}
		r.Node, r.Reason = p.nodes.Place(d.Name+"/"+svc.Name, svc.Demand)
		tick.RunId = r.Id
		p.plan.Create = append(p.plan.Create, r)
	}
	p.plan.Cron = append(p.plan.Cron, tick)
}

func (p *planner) stop(r *schedulerv1.Replica, reason string) {
	r.DesiredStop = true
	p.plan.Stop = append(p.plan.Stop, &schedulerv1.StopReplica{Replica: r.Id, Reason: reason})
}

func (p *planner) create(d *schedulerv1.Deployment, svc Service, index int) {
	r := &schedulerv1.Replica{
		Id:         fmt.Sprintf("%s-%s-%d-%s", d.Name, svc.Name, index, randomSuffix()),
		Deployment: d.Name,
		Service:    svc.Name,
		Index:      uint32(index),
		Version:    d.Current,
		SpecHash:   svc.Hash,
	}
	r.Node, r.Reason = p.nodes.Place(d.Name+"/"+svc.Name, svc.Demand)
	p.plan.Create = append(p.plan.Create, r)
}

// placePending tries again to place replicas that fit nowhere before.
func (p *planner) placePending() {
	ids := sortedKeys(p.s.Replicas)
	for _, id := range ids {
		r := p.s.Replicas[id]
		if r.Phase != pending || r.DesiredStop {
			continue
		}
		d := p.s.Deployments[r.Deployment]
		if d == nil {
			continue
		}
		node, reason := p.nodes.Place(r.Deployment+"/"+r.Service, p.services(d, r.Version)[r.Service].Demand)
		if node != "" {
			p.plan.Place = append(p.plan.Place, &schedulerv1.Placement{Replica: r.Id, Node: node})
		} else if reason != r.Reason {
			p.plan.Pending = append(p.plan.Pending, &schedulerv1.Placement{Replica: r.Id, Reason: reason})
		}
	}
}

func randomSuffix() string {
	var b [3]byte
	_, _ = rand.Read(b[:])
	return hex.EncodeToString(b[:])
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
