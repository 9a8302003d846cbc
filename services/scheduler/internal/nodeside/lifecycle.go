package nodeside

import (
	"fmt"
	"math/rand/v2"
	"time"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/spec"
	"zlayer.dev/services/scheduler/internal/fsm"
)

// Crash-loop backoff of on_panic: restart: 1s, 2s, 4s … capped at 5m, with
// up to 10% jitter; a replica that ran this long before dying starts over.
const (
	restartBase  = time.Second
	restartCap   = 5 * time.Minute
	restartReset = 10 * time.Minute
)

// restartState is the crash-loop bookkeeping of one replica on this node.
type restartState struct {
	count     uint32    // restarts in place so far
	next      time.Time // zero, or when the pending restart may start
	lastStart time.Time
}

// restartDelay is the wait before restart n (1-based).
func restartDelay(n uint32) time.Duration {
	d := restartBase << min(n-1, 16)
	if d > restartCap || d <= 0 {
		d = restartCap
	}
	return d + time.Duration(rand.Int64N(int64(d/10)+1))
}

// onPanic applies the service's errors.on_panic policy to a replica whose
// process died (status is the agent's view: failed, with the exit). It
// returns the status to report instead, and whether the agent's container
// should be removed now (restart in place).
func (r *Runner) onPanic(rep *schedulerv1.Replica, svc *spec.Service, s *schedulerv1.ReplicaStatus, now time.Time) (*schedulerv1.ReplicaStatus, bool) {
	out := &schedulerv1.ReplicaStatus{Id: rep.Id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED, Ip: s.Ip, ExitCode: s.ExitCode, Reason: s.Reason}
	r.mu.Lock()
	defer r.mu.Unlock()
	rs := r.restarts[rep.Id]
	if rs == nil {
		rs = &restartState{lastStart: now}
		r.restarts[rep.Id] = rs
	}
	out.Restarts = rs.count
	switch svc.Errors.OnPanic.Action {
	case spec.PanicShutdown:
		out.Held, out.Reason = "shutdown", s.Reason+"; on_panic: shutdown leaves it stopped"
		return out, false
	case spec.PanicIsolate:
		out.Held, out.Reason = "isolate", s.Reason+"; on_panic: isolate keeps it for inspection and starts a replacement"
		return out, false
	}
	if !rs.next.IsZero() {
		return r.restarting(rep.Id, rs, s.Reason), false // already waiting
	}
	if now.Sub(rs.lastStart) >= restartReset {
		rs.count = 0
	}
	rs.count++
	delay := restartDelay(rs.count)
	rs.next = now.Add(delay)
	return r.restarting(rep.Id, rs, s.Reason), true
}

// onInitFailure applies errors.on_init_failure to a replica whose init
// steps failed (the agent removed it): fail keeps it failed (not replaced),
// restart starts it again at once, backoff after 1s, 2s, 4s … capped at 5m.
func (r *Runner) onInitFailure(rep *schedulerv1.Replica, svc *spec.Service, why string, now time.Time) *schedulerv1.ReplicaStatus {
	r.mu.Lock()
	defer r.mu.Unlock()
	rs := r.restarts[rep.Id]
	if rs == nil {
		rs = &restartState{lastStart: now}
		r.restarts[rep.Id] = rs
	}
	switch svc.Errors.OnInitFailure.Action {
	case spec.InitRestart:
		rs.count++
		rs.next = now
	case spec.InitBackoff:
		rs.count++
		rs.next = now.Add(restartDelay(rs.count))
	default:
		return &schedulerv1.ReplicaStatus{Id: rep.Id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED, ExitCode: -1,
			Restarts: rs.count, Held: "init", Reason: why + "; on_init_failure: fail"}
	}
	return &schedulerv1.ReplicaStatus{Id: rep.Id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_STARTING, Restarts: rs.count,
		Reason: fmt.Sprintf("%s; on_init_failure: %s, attempt %d at %s", why, svc.Errors.OnInitFailure.Action, rs.count+1, rs.next.Format("15:04:05"))}
}

// restarting is the status of a replica waiting to be restarted in place.
func (r *Runner) restarting(id string, rs *restartState, why string) *schedulerv1.ReplicaStatus {
	return &schedulerv1.ReplicaStatus{Id: id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_STARTING, Restarts: rs.count,
		Reason: fmt.Sprintf("%s; restart %d at %s (on_panic: restart)", why, rs.count, rs.next.Format("15:04:05"))}
}

// restartDue reports whether a replica removed for a restart may start
// again, and marks the start.
func (r *Runner) restartDue(id string, now time.Time) (due, pending bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	rs := r.restarts[id]
	if rs == nil || rs.next.IsZero() {
		return false, false
	}
	if now.Before(rs.next) {
		return false, true
	}
	rs.next, rs.lastStart = time.Time{}, now
	return true, true
}

// restartPending reports whether a restart in place is scheduled.
func (r *Runner) restartPending(id string) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	rs := r.restarts[id]
	return rs != nil && !rs.next.IsZero()
}

// restartCount is the replica's restarts in place so far.
func (r *Runner) restartCount(id string) uint32 {
	r.mu.Lock()
	defer r.mu.Unlock()
	if rs := r.restarts[id]; rs != nil {
		return rs.count
	}
	return 0
}

// dependencies checks the replica's depends against the cluster state. It
// returns start=true when the replica may start; otherwise status says what
// it waits for, or that it failed (on_timeout: fail). A note is set when it
// starts without a dependency (on_timeout: warn).
func dependencies(st *fsm.State, rep *schedulerv1.Replica, svc *spec.Service, now time.Time) (start bool, status *schedulerv1.ReplicaStatus, note string) {
	for _, dep := range svc.Depends {
		if dependencyMet(st, rep.Deployment, dep) {
			continue
		}
		waited := now.Sub(rep.CreatedAt.AsTime())
		if waited < dep.Timeout.D() {
			return false, &schedulerv1.ReplicaStatus{Id: rep.Id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_STARTING,
				Reason: fmt.Sprintf("waiting for %s to be %s (%s of %s)", dep.Service, dep.Condition, waited.Truncate(time.Second), dep.Timeout.D())}, ""
		}
		switch dep.OnTimeout {
		case spec.FailureWarn:
			note = fmt.Sprintf("started although %s is not %s after %s (on_timeout: warn)", dep.Service, dep.Condition, dep.Timeout.D())
		case spec.FailureContinue:
		default:
			return false, &schedulerv1.ReplicaStatus{Id: rep.Id, Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED, ExitCode: -1,
				Reason: fmt.Sprintf("dependency %s not %s after %s (on_timeout: fail)", dep.Service, dep.Condition, dep.Timeout.D())}, ""
		}
	}
	return true, nil, note
}

// dependencyMet reports whether some replica of dep.Service in deployment
// meets dep.Condition: started (its process runs), healthy (its checks
// pass), ready (healthy and routed by the proxy: not being stopped).
func dependencyMet(st *fsm.State, deployment string, dep spec.Dependency) bool {
	for _, r := range st.Replicas {
		if r.Deployment != deployment || r.Service != dep.Service || r.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING {
			continue
		}
		healthy := r.Health == schedulerv1.Health_HEALTH_HEALTHY
		switch dep.Condition {
		case spec.ConditionStarted:
			return true
		case spec.ConditionReady:
			if healthy && !r.DesiredStop && r.Ip != "" {
				return true
			}
		default:
			if healthy {
				return true
			}
		}
	}
	return false
}
