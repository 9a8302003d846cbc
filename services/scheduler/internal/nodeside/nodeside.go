// Package nodeside is the scheduler's work for its own node: it registers
// the node, makes the local agent run exactly the replicas the cluster state
// assigns to this node, and reports the agent's view back through batched
// heartbeats — one Raft entry per heartbeat interval, carrying only the
// replicas whose status changed, so status churn never floods the log.
package nodeside

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"sync/atomic"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/obs"
	"zlayer.dev/services/scheduler/internal/agentclient"
	"zlayer.dev/services/scheduler/internal/fsm"
	"zlayer.dev/services/scheduler/internal/health"
	"zlayer.dev/services/scheduler/internal/specinfo"
)

// Agent is the local agent as the node side uses it.
type Agent interface {
	// Run starts the replica if the agent does not have it yet (idempotent).
	Run(ctx context.Context, r *schedulerv1.Replica, deployment *specinfo.Deployment, svc specinfo.Service) error
	// Remove stops and removes the replica; a replica the agent does not
	// have is not an error.
	Remove(ctx context.Context, id string) error
	// List returns the status of every replica the agent has.
	List(ctx context.Context) (map[string]*schedulerv1.ReplicaStatus, error)
	// Exec runs argv in a replica's container and returns its exit code.
	Exec(ctx context.Context, replica string, argv []string) (int, error)
	// Stats returns each replica's CPU and memory use, in percent of its limits.
	Stats(ctx context.Context) (map[string][2]float64, error)
}

// Proposer commits a command.
type Proposer interface {
	Propose(ctx context.Context, data []byte) (any, error)
}

// Config tunes the node side.
type Config struct {
	Node      *schedulerv1.Node // the node as it registers itself
	Heartbeat time.Duration     // default 1s
	// LoadInterval is how often the node's load (proxy requests, replicas'
	// CPU and memory) goes out with a heartbeat; default 10s.
	LoadInterval time.Duration
	// Proxy is the local proxy, read for requests per second; may be nil.
	Proxy Proxy
}

// Runner keeps this node's agent in line with the state.
type Runner struct {
	cfg   Config
	log   *zap.Logger
	state *fsm.FSM
	raft  Proposer
	agent Agent
	specs *specinfo.Cache

	reported  map[string]*schedulerv1.ReplicaStatus // last status sent per replica
	started   map[string]time.Time                  // replicas asked to start, to avoid asking twice at once
	failures  chan failure                          // start failures, for the next heartbeat
	agentDown atomic.Bool                           // last sync could not reach the agent; heartbeats say so
	agentSeen atomic.Bool                           // a sync has tried the agent: agentDown means something
	inflight  sync.Map                              // replica id → true while the agent is asked to run or remove it
	health    *health.Prober                        // health checks of this node's running replicas
	calls     sync.WaitGroup                        // agent calls in the background (starts, removes)
	proxy     Proxy
	load      []*schedulerv1.ServiceLoad // measured, waiting for a heartbeat (guarded by mu)

	mu        sync.Mutex
	restarts  map[string]*restartState              // crash-loop bookkeeping per replica
	overrides map[string]*schedulerv1.ReplicaStatus // statuses reported instead of the agent's view
}

// New returns a Runner.
func New(cfg Config, log *zap.Logger, state *fsm.FSM, raft Proposer, agent Agent, specs *specinfo.Cache) *Runner {
	if cfg.Heartbeat <= 0 {
		cfg.Heartbeat = time.Second
	}
	if cfg.LoadInterval <= 0 {
		cfg.LoadInterval = 10 * time.Second
	}
	return &Runner{cfg: cfg, log: log.Named("nodeside"), state: state, raft: raft, agent: agent, specs: specs, health: health.New(agent),
		proxy: cfg.Proxy, reported: map[string]*schedulerv1.ReplicaStatus{}, started: map[string]time.Time{}, failures: make(chan failure, 128),
		restarts: map[string]*restartState{}, overrides: map[string]*schedulerv1.ReplicaStatus{}}
}

// propose commits c, giving up after timeout: a heartbeat lost with a
// dead leader must not hold back the next one.
func (r *Runner) propose(ctx context.Context, c *schedulerv1.Command, timeout time.Duration) error {
	c.ProposedAt = timestamppb.Now()
	data, err := proto.Marshal(c)
	if err != nil {
		return err
	}
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	res, err := r.raft.Propose(ctx, data)
	if err != nil {
		return err
	}
	if fr, ok := res.(fsm.Result); ok && fr.Err != nil {
		return fr.Err
	}
	return nil
}

// Run registers the node, then syncs and heartbeats until ctx is done.
func (r *Runner) Run(ctx context.Context) error {
	for {
		err := r.propose(ctx, &schedulerv1.Command{Kind: &schedulerv1.Command_RegisterNode{RegisterNode: &schedulerv1.RegisterNodeCommand{Node: r.cfg.Node}}}, 5*time.Second)
		if err == nil {
			break
		}
		r.log.Info("node registration waits for the cluster", zap.Error(err))
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(r.cfg.Heartbeat):
		}
	}
	r.log.Info("node registered", zap.String(obs.KeyNode, r.cfg.Node.Name))
	// Heartbeats run on their own: a sync blocked on a slow agent call must
	// never make the node look dead. Load is measured on its own too, so a
	// slow proxy or agent never delays a heartbeat; the next heartbeat
	// carries the result.
	hbDone := every(ctx, r.cfg.Heartbeat, func() {
		if err := r.heartbeat(ctx); err != nil {
			r.log.Warn("heartbeat not committed", zap.Error(err))
		}
	})
	loadDone := every(ctx, r.cfg.LoadInterval, func() {
		mctx, cancel := context.WithTimeout(ctx, r.cfg.LoadInterval)
		defer cancel()
		r.putLoad(r.measureLoad(mctx, r.state.Copy(), r.cfg.LoadInterval))
	})
	defer func() {
		<-hbDone
		<-loadDone
		r.health.Stop()
		r.calls.Wait() // ctx is done: they return promptly
	}()
	tick := time.NewTicker(r.cfg.Heartbeat)
	defer tick.Stop()
	for {
		changed := r.state.Changed()
		r.sync(ctx)
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		case <-changed:
		}
	}
}

// agentState is what a heartbeat says of the agent: nothing until a sync
// has tried it (the node's stored flag stays, so a restarted scheduler does
// not report a dead agent as alive meanwhile).
func (r *Runner) agentState() *bool {
	if !r.agentSeen.Load() {
		return nil
	}
	down := r.agentDown.Load()
	return &down
}

// every runs fn each interval in its own goroutine until ctx is done; the
// returned channel is closed when it has stopped.
func every(ctx context.Context, interval time.Duration, fn func()) <-chan struct{} {
	done := make(chan struct{})
	go func() {
		defer close(done)
		tick := time.NewTicker(interval)
		defer tick.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-tick.C:
				fn()
			}
		}
	}()
	return done
}

// sync starts assigned replicas the agent lacks and removes replicas the
// state no longer wants here.
func (r *Runner) sync(ctx context.Context) {
	st := r.state.Copy()
	if n := st.Nodes[r.cfg.Node.Name]; n == nil {
		return
	}
	have, err := r.agent.List(ctx)
	defer r.agentSeen.Store(true)
	if err != nil {
		if !r.agentDown.Swap(true) {
			r.log.Warn("agent unreachable; no new replicas will be placed on this node until it answers", zap.Error(err))
		}
		return
	}
	if r.agentDown.Swap(false) {
		r.log.Info("agent reachable again")
	}
	now := time.Now()
	for id, rep := range st.Replicas {
		if rep.Node != r.cfg.Node.Name {
			continue
		}
		log := r.log.With(zap.String(obs.KeyDeployment, rep.Deployment), zap.String(obs.KeyService, rep.Service), zap.String(obs.KeyReplica, id))
		s, onAgent := have[id]
		if rep.DesiredStop || rep.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_LOST {
			if onAgent {
				r.remove(ctx, id, log)
			}
			r.setOverride(id, nil)
			continue
		}
		if rep.Held != "" || rep.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_SUCCEEDED ||
			(rep.Run && rep.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED) {
			continue // kept as it is: by its on_panic policy, or a finished run
		}
		parsed, svc, ok := r.serviceOf(st, rep)
		if !ok {
			continue
		}
		switch {
		case onAgent && s.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED && rep.Run:
			// A run ended: exit code 0 is success. Runs are not restarted;
			// their containers stay (with their logs) until pruned.
			out := proto.CloneOf(s)
			if s.ExitCode == 0 {
				out.Phase, out.Reason = schedulerv1.ReplicaPhase_REPLICA_PHASE_SUCCEEDED, ""
			}
			r.setOverride(id, out)
		case onAgent && s.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED:
			// The process died: the service's on_panic policy decides.
			out, removeNow := r.onPanic(rep, svc.Spec, s, now)
			if r.setOverride(id, out) {
				log.Info("replica process ended", zap.String("reason", out.Reason), zap.String("held", out.Held), zap.Uint32("restarts", out.Restarts))
			}
			if removeNow {
				r.remove(ctx, id, log)
			}
		case onAgent && s.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING && !rep.Run && r.unhealthy(id) && !rollingOut(st, rep):
			// Unhealthy past its retries: treated as a panic, so restart
			// recovers it and isolate replaces it. (During its own rollout
			// it is reported as is: the rollout rolls back instead.)
			res, _ := r.health.Result(id)
			sick := proto.CloneOf(s)
			sick.Reason = "unhealthy: " + res.Reason
			out, removeNow := r.onPanic(rep, svc.Spec, sick, now)
			if out.Held == "shutdown" {
				r.setOverride(id, nil) // shutdown concerns a dead process: an unhealthy one is left running
				continue
			}
			if r.setOverride(id, out) {
				log.Info("replica unhealthy", zap.String("reason", out.Reason), zap.String("held", out.Held), zap.Uint32("restarts", out.Restarts))
			}
			if removeNow {
				r.remove(ctx, id, log)
			}
		case onAgent && r.restartPending(id):
			// Being removed for a restart in place: keep saying so.
		case onAgent:
			r.setOverride(id, nil) // the agent's view is the truth now
		default:
			if _, busy := r.inflight.Load(id); busy {
				continue // a start or a removal is under way
			}
			due, pending := r.restartDue(id, now)
			switch {
			case pending && !due:
				continue // waiting out the crash-loop backoff
			case !due && rep.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_ASSIGNED && rep.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_STARTING:
				continue // neither new (assigned, or starting: waiting for dependencies) nor being restarted
			case !due:
				if t, ok := r.started[id]; ok && now.Sub(t) < 30*time.Second {
					continue
				}
				start, status, note := dependencies(st, rep, svc.Spec, now)
				if !start {
					r.setOverride(id, status)
					continue
				}
				if note != "" {
					log.Warn("starting without a dependency", zap.String("reason", note))
					r.setOverride(id, &schedulerv1.ReplicaStatus{Id: id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_STARTING, Reason: note})
				}
			}
			r.start(ctx, log, rep, parsed, svc)
		}
	}
	// Replicas the agent runs that the state does not place here.
	for id := range have {
		rep := st.Replicas[id]
		if rep == nil || rep.Node != r.cfg.Node.Name {
			r.remove(ctx, id, r.log.With(zap.String(obs.KeyReplica, id)))
		}
	}
	for id, t := range r.started {
		if _, ok := st.Replicas[id]; !ok || time.Since(t) > time.Minute {
			delete(r.started, id)
		}
	}
}

// unhealthy reports whether the replica's health check says unhealthy.
func (r *Runner) unhealthy(id string) bool {
	res, ok := r.health.Result(id)
	return ok && res.Health == schedulerv1.Health_HEALTH_UNHEALTHY
}

// rollingOut reports whether rep belongs to its deployment's version that
// is still being rolled out.
func rollingOut(st *fsm.State, rep *schedulerv1.Replica) bool {
	d := st.Deployments[rep.Deployment]
	v := fsm.Version(d, d.GetCurrent())
	return v != nil && rep.Version == v.Version && v.Outcome == schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_IN_PROGRESS
}

// serviceOf returns the parsed file and service a replica runs.
func (r *Runner) serviceOf(st *fsm.State, rep *schedulerv1.Replica) (*specinfo.Deployment, specinfo.Service, bool) {
	v := fsm.Version(st.Deployments[rep.Deployment], rep.Version)
	if v == nil {
		return nil, specinfo.Service{}, false
	}
	parsed, err := r.specs.Get(v.FileName, v.SpecYaml)
	if err != nil {
		r.log.Error("stored deployment file does not parse", zap.String(obs.KeyDeployment, rep.Deployment), zap.Error(err))
		return nil, specinfo.Service{}, false
	}
	svc, ok := parsed.Services[rep.Service]
	return parsed, svc, ok && svc.Spec != nil
}

// start asks the agent to run rep in the background (it includes the image
// pull: the loop never blocks on it), once at a time per replica.
func (r *Runner) start(ctx context.Context, log *zap.Logger, rep *schedulerv1.Replica, parsed *specinfo.Deployment, svc specinfo.Service) {
	id := rep.Id
	if _, busy := r.inflight.LoadOrStore(id, true); busy {
		return
	}
	r.started[id] = time.Now()
	r.calls.Add(1)
	go func() {
		defer r.calls.Done()
		defer r.inflight.Delete(id)
		err := r.agent.Run(ctx, proto.CloneOf(rep), parsed, svc)
		switch {
		case err == nil:
		case errors.Is(err, agentclient.ErrInitFailed):
			out := r.onInitFailure(rep, svc.Spec, err.Error(), time.Now())
			log.Info("init failed", zap.String("reason", out.Reason), zap.String("held", out.Held), zap.Uint32("restarts", out.Restarts))
			r.setOverride(id, out)
		default:
			log.Warn("start replica", zap.Error(err))
			r.reportFailure(id, err)
		}
	}()
}

// setOverride sets (or, with nil, clears) the status reported for a replica
// instead of the agent's view; it reports whether anything changed.
func (r *Runner) setOverride(id string, s *schedulerv1.ReplicaStatus) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	prev, had := r.overrides[id]
	if s == nil {
		delete(r.overrides, id)
		return had
	}
	r.overrides[id] = s
	return !had || !proto.Equal(prev, s)
}

func (r *Runner) override(id string) *schedulerv1.ReplicaStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.overrides[id]
}

// remove asks the agent to stop and remove replica id, in the background
// (stopping waits for the replica's grace period), once at a time per id.
func (r *Runner) remove(ctx context.Context, id string, log *zap.Logger) {
	if _, busy := r.inflight.LoadOrStore(id, true); busy {
		return
	}
	r.calls.Add(1)
	go func() {
		defer r.calls.Done()
		defer r.inflight.Delete(id)
		if err := r.agent.Remove(ctx, id); err != nil && ctx.Err() == nil {
			log.Warn("remove replica", zap.Error(err))
		}
	}()
}

// checkHealth keeps a health check running for each running replica of a
// service that has one, and puts the checks' results into have. Replicas
// of services without a check are healthy once running, as the agent says.
func (r *Runner) checkHealth(ctx context.Context, st *fsm.State, have map[string]*schedulerv1.ReplicaStatus) {
	var targets []health.Target
	for id, s := range have {
		rep := st.Replicas[id]
		if rep == nil || s.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING {
			continue
		}
		v := fsm.Version(st.Deployments[rep.Deployment], rep.Version)
		if v == nil {
			continue
		}
		parsed, err := r.specs.Get(v.FileName, v.SpecYaml)
		if err != nil {
			continue
		}
		svc, ok := parsed.Services[rep.Service]
		if !ok || svc.Spec.Health == nil {
			continue
		}
		targets = append(targets, health.Target{ID: id, IP: s.Ip, Health: svc.Spec.Health, Endpoints: svc.Spec.Endpoints})
		s.Health = schedulerv1.Health_HEALTH_STARTING
		if res, ok := r.health.Result(id); ok {
			s.Health = res.Health
			if res.Reason != "" {
				s.Reason = res.Reason
			}
		}
	}
	r.health.Sync(ctx, targets)
}

// forget drops the bookkeeping of a replica the state no longer has.
func (r *Runner) forget(id string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	delete(r.restarts, id)
	delete(r.overrides, id)
}

// failure is a replica that could not be started, reported at the next
// heartbeat.
type failure struct {
	id  string
	err error
}

func (r *Runner) reportFailure(id string, err error) {
	select {
	case r.failures <- failure{id, err}:
	default:
	}
}

// heartbeat proposes the node's liveness and every status change since
// the last heartbeat.
func (r *Runner) heartbeat(ctx context.Context) error {
	st := r.state.Copy()
	lctx, cancel := context.WithTimeout(ctx, r.cfg.Heartbeat/2)
	have, err := r.agent.List(lctx)
	cancel()
	if err != nil {
		// The node lives but its agent does not answer (in time): say
		// nothing of the replicas, keep the node alive.
		have = nil
	}
	r.checkHealth(ctx, st, have)
	var changes []*schedulerv1.ReplicaStatus
	for id, rep := range st.Replicas {
		if rep.Node != r.cfg.Node.Name {
			continue
		}
		var cur *schedulerv1.ReplicaStatus
		if o := r.override(id); o != nil && !rep.DesiredStop {
			cur = o
		} else if s, ok := have[id]; ok {
			if s.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED && !rep.DesiredStop && rep.Held == "" {
				continue // the next sync applies the on_panic policy first
			}
			s.Restarts = r.restartCount(id)
			cur = s
		} else if _, busy := r.inflight.Load(id); !busy && have != nil {
			// Gone from the agent, and no start or removal of it is under
			// way that could still change that.
			switch {
			case rep.DesiredStop || rep.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPING:
				cur = &schedulerv1.ReplicaStatus{Id: id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED}
			case rep.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING || rep.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_STARTING:
				cur = &schedulerv1.ReplicaStatus{Id: id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED, ExitCode: -1,
					Reason: "the agent no longer has this replica"}
			}
		}
		if cur == nil {
			continue
		}
		if prev := r.reported[id]; prev == nil || !proto.Equal(prev, cur) || rep.Phase != cur.Phase {
			changes = append(changes, cur)
		}
	}
drain:
	for {
		select {
		case f := <-r.failures:
			changes = append(changes, &schedulerv1.ReplicaStatus{Id: f.id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED, Reason: f.err.Error(), ExitCode: -1})
		default:
			break drain
		}
	}
	load := r.takeLoad()
	if err := r.propose(ctx, &schedulerv1.Command{Kind: &schedulerv1.Command_Heartbeat{Heartbeat: &schedulerv1.HeartbeatCommand{
		Node: r.cfg.Node.Name, Statuses: changes, Load: load, AgentDown: r.agentState(),
	}}}, r.cfg.Heartbeat); err != nil {
		if load != nil {
			r.putLoad(load) // it goes with the next heartbeat
		}
		return fmt.Errorf("heartbeat: %w", err)
	}
	for _, c := range changes {
		r.reported[c.Id] = c
	}
	for id := range r.reported {
		if _, ok := st.Replicas[id]; !ok {
			delete(r.reported, id)
			r.forget(id)
		}
	}
	return nil
}
