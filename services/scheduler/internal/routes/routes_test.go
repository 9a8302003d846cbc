package routes

import (
	"fmt"
	"testing"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/services/scheduler/internal/fsm"
	"zlayer.dev/services/scheduler/internal/specinfo"
)

const appYAML = `version: v1
deployment: app
services:
  web:
    image:
      name: demo:1
    endpoints:
      - name: http
        protocol: http
        port: 8080
        expose: public
    scale:
      mode: fixed
      replicas: 3
`

func TestTableKeepsReachableRunningReplicas(t *testing.T) {
	running := schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING
	healthy := schedulerv1.Health_HEALTH_HEALTHY
	st := &fsm.State{
		Deployments: map[string]*schedulerv1.Deployment{"app": {Name: "app", Current: 1,
			Versions: []*schedulerv1.DeploymentVersion{{Version: 1, FileName: "app.yaml", SpecYaml: []byte(appYAML)}}}},
		Replicas: map[string]*schedulerv1.Replica{
			"a": {Id: "a", Deployment: "app", Service: "web", Index: 0, Node: "n1", Ip: "10.0.0.2", Phase: running, Health: healthy},
			"b": {Id: "b", Deployment: "app", Service: "web", Index: 1, Node: "n2", Ip: "10.1.0.2", Phase: running, Health: healthy},
			"c": {Id: "c", Deployment: "app", Service: "web", Index: 2, Node: "n1", Ip: "10.0.0.3", Phase: schedulerv1.ReplicaPhase_REPLICA_PHASE_STARTING},
			"d": {Id: "d", Deployment: "app", Service: "web", Index: 3, Node: "n1", Ip: "10.0.0.4", Phase: running, Health: healthy, DesiredStop: true},
		},
	}
	tests := []struct {
		name      string
		reachable func(string) bool
		want      string
	}{
		{"every node", nil, "a@10.0.0.2:8080 ready, b@10.1.0.2:8080 ready, d@10.0.0.4:8080 draining"},
		{"this node only", func(n string) bool { return n == "n1" }, "a@10.0.0.2:8080 ready, d@10.0.0.4:8080 draining"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			table := Table(st, &specinfo.Cache{}, tt.reachable)
			if len(table) != 1 {
				t.Fatalf("%d routes, want 1", len(table))
			}
			got := ""
			for i, b := range table[0].Backends {
				state := "ready"
				if !b.Ready {
					state = "draining"
				}
				if i > 0 {
					got += ", "
				}
				got += fmt.Sprintf("%s@%s %s", b.ReplicaId, b.Address, state)
			}
			if got != tt.want {
				t.Errorf("backends:\n got %s\nwant %s", got, tt.want)
			}
		})
	}
}
