package server

import (
	"testing"

	"google.golang.org/protobuf/proto"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	"zlayer.dev/services/agent/internal/runner"
)

// Every wire state but UNSPECIFIED has exactly one runner state.
func TestStateMapping(t *testing.T) {
	seen := map[agentv1.ReplicaState]runner.State{}
	for s := runner.StateCreating; s <= runner.StateLost; s++ {
		p := StateToProto(s)
		if p == agentv1.ReplicaState_REPLICA_STATE_UNSPECIFIED {
			t.Errorf("%v has no wire state", s)
		}
		if other, dup := seen[p]; dup {
			t.Errorf("%v and %v both map to %v", s, other, p)
		}
		seen[p] = s
	}
	for v, name := range agentv1.ReplicaState_name {
		if v == 0 {
			continue
		}
		if _, ok := seen[agentv1.ReplicaState(v)]; !ok {
			t.Errorf("wire state %s has no runner state", name)
		}
	}
}

func TestSpecRoundTrip(t *testing.T) {
	in := &agentv1.ReplicaSpec{
		Id:         "web-0",
		Identity:   &agentv1.ReplicaIdentity{Deployment: "d", Service: "web", Index: 2},
		Image:      "127.0.0.1:5000/demo-http:1",
		PullPolicy: agentv1.PullPolicy_PULL_POLICY_NEVER,
		Command:    &agentv1.Argv{Values: []string{"httpd"}},
		Args:       &agentv1.Argv{}, // present and empty: no args
		Env:        map[string]string{"A": "$E:B"},
		Resources:  &agentv1.Resources{Cpu: 0.5, MemoryBytes: 64 << 20},
		Endpoints:  []*agentv1.Endpoint{{Name: "http", Protocol: "http", Port: 80}},
	}
	s := SpecFromProto(in)
	if s.Args == nil || len(s.Args) != 0 || s.Command[0] != "httpd" {
		t.Fatalf("argv presence lost: %+v", s)
	}
	if out := SpecToProto(s); !proto.Equal(in, out) {
		t.Fatalf("round trip:\n in %v\nout %v", in, out)
	}
	if s := SpecFromProto(&agentv1.ReplicaSpec{Id: "x"}); s.Command != nil || s.Args != nil {
		t.Fatalf("absent argv became present: %+v", s)
	}
}
