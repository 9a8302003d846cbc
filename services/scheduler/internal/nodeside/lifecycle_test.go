package nodeside

import (
	"strings"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/timestamppb"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/spec"
	"zlayer.dev/services/scheduler/internal/fsm"
)

func TestRestartDelayDoublesToCap(t *testing.T) {
	tests := []struct {
		n        uint32
		min, max time.Duration
	}{
		{1, time.Second, 1100 * time.Millisecond},
		{2, 2 * time.Second, 2200 * time.Millisecond},
		{4, 8 * time.Second, 8800 * time.Millisecond},
		{9, 256 * time.Second, 282 * time.Second},
		{10, restartCap, restartCap + restartCap/10},
		{60, restartCap, restartCap + restartCap/10},
	}
	for _, tt := range tests {
		for range 20 { // the jitter is random: every draw must be in bounds
			if d := restartDelay(tt.n); d < tt.min || d > tt.max {
				t.Fatalf("restartDelay(%d) = %s, want within [%s, %s]", tt.n, d, tt.min, tt.max)
			}
		}
	}
}

func TestDependencies(t *testing.T) {
	created := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	rep := &schedulerv1.Replica{Id: "api-0", Deployment: "shop", Service: "api", CreatedAt: timestamppb.New(created)}
	db := func(phase schedulerv1.ReplicaPhase, h schedulerv1.Health, stopping bool) *fsm.State {
		return &fsm.State{Replicas: map[string]*schedulerv1.Replica{"db-0": {
			Id: "db-0", Deployment: "shop", Service: "db", Phase: phase, Health: h, Ip: "10.0.0.2", DesiredStop: stopping,
		}}}
	}
	running, healthy := schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING, schedulerv1.Health_HEALTH_HEALTHY
	starting := schedulerv1.Health_HEALTH_STARTING
	dep := func(cond spec.Condition, onTimeout spec.FailureMode) *spec.Service {
		return &spec.Service{Depends: []spec.Dependency{{Service: "db", Condition: cond, Timeout: spec.Duration(time.Minute), OnTimeout: onTimeout}}}
	}
	tests := []struct {
		name       string
		st         *fsm.State
		svc        *spec.Service
		after      time.Duration
		wantStart  bool
		wantReason string
		wantNote   string
	}{
		{"started met", db(running, starting, false), dep(spec.ConditionStarted, spec.FailureFail), 0, true, "", ""},
		{"healthy waits", db(running, starting, false), dep(spec.ConditionHealthy, spec.FailureFail), 10 * time.Second, false, "waiting for db to be healthy (10s of 1m0s)", ""},
		{"healthy met", db(running, healthy, false), dep(spec.ConditionHealthy, spec.FailureFail), 0, true, "", ""},
		{"ready not while stopping", db(running, healthy, true), dep(spec.ConditionReady, spec.FailureFail), 0, false, "waiting for db to be ready", ""},
		{"timeout fails", &fsm.State{}, dep(spec.ConditionHealthy, spec.FailureFail), 2 * time.Minute, false, "dependency db not healthy after 1m0s (on_timeout: fail)", ""},
		{"timeout warns", &fsm.State{}, dep(spec.ConditionHealthy, spec.FailureWarn), 2 * time.Minute, true, "", "started although db is not healthy after 1m0s (on_timeout: warn)"},
		{"timeout continues", &fsm.State{}, dep(spec.ConditionHealthy, spec.FailureContinue), 2 * time.Minute, true, "", ""},
		{"other deployment does not count", &fsm.State{Replicas: map[string]*schedulerv1.Replica{"x": {Deployment: "other", Service: "db", Phase: running, Health: healthy}}},
			dep(spec.ConditionStarted, spec.FailureFail), 0, false, "waiting for db", ""},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			start, status, note := dependencies(tt.st, rep, tt.svc, created.Add(tt.after))
			if start != tt.wantStart || note != tt.wantNote {
				t.Fatalf("start %v note %q, want %v %q", start, note, tt.wantStart, tt.wantNote)
			}
			if tt.wantReason != "" && (status == nil || !strings.Contains(status.Reason, tt.wantReason)) {
				t.Fatalf("status %v, want reason containing %q", status, tt.wantReason)
			}
		})
	}
}
