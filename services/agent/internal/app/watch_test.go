package app_test

import (
	"context"
	"testing"
	"time"

	"google.golang.org/protobuf/types/known/durationpb"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
)

// WatchReplicas sends the current replicas, then synced, then each change.
func TestWatch(t *testing.T) {
	a := startAgent(t)
	a.run(&agentv1.ReplicaSpec{Id: "before", Image: busyboxRef, Command: &agentv1.Argv{Values: []string{"sleep", "100000"}}})
	ctx, cancel := context.WithTimeout(context.Background(), 60*time.Second)
	defer cancel()
	w, err := a.c.WatchReplicas(ctx, &agentv1.WatchReplicasRequest{})
	if err != nil {
		t.Fatal(err)
	}
	next := func() *agentv1.WatchReplicasResponse {
		t.Helper()
		m, err := w.Recv()
		if err != nil {
			t.Fatal(err)
		}
		return m
	}
	if m := next(); m.GetReplica().GetSpec().GetId() != "before" {
		t.Fatalf("initial: %v", m)
	}
	if m := next(); !m.GetSynced() {
		t.Fatalf("want synced, got %v", m)
	}
	a.run(&agentv1.ReplicaSpec{Id: "after", Image: busyboxRef, Command: &agentv1.Argv{Values: []string{"sleep", "100000"}}})
	if m := next(); m.GetReplica().GetSpec().GetId() != "after" || m.GetReplica().GetState() != agentv1.ReplicaState_REPLICA_STATE_RUNNING {
		t.Fatalf("run event: %v", m)
	}
	if _, err := a.c.StopReplica(ctx, &agentv1.StopReplicaRequest{Id: "after", Grace: durationpb.New(0)}); err != nil {
		t.Fatal(err)
	}
	want := []agentv1.ReplicaState{agentv1.ReplicaState_REPLICA_STATE_STOPPING, agentv1.ReplicaState_REPLICA_STATE_EXITED}
	for _, s := range want {
		if m := next(); m.GetReplica().GetState() != s {
			t.Fatalf("want %v, got %v", s, m)
		}
	}
	if _, err := a.c.RemoveReplica(ctx, &agentv1.RemoveReplicaRequest{Id: "after"}); err != nil {
		t.Fatal(err)
	}
	if m := next(); !m.GetRemoved() || m.GetReplica().GetSpec().GetId() != "after" {
		t.Fatalf("remove event: %v", m)
	}
}
