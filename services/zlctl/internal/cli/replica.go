package cli

import (
	"context"
	"strings"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/runs"
)

// replicaPath is how zlctl reaches a TARGET for logs and exec: through the
// scheduler, which finds the replica on whichever node of the cluster runs
// it, or through the local agent when this node runs no scheduler or the
// target is a container the scheduler does not know.
type replicaPath struct {
	sched  schedulerv1.SchedulerServiceClient // nil: through the agent
	agent  agentv1.AgentServiceClient
	id     string // the container id, through the agent
	close  func()
	caller string // "scheduler" or "agent", for error messages
}

func (g *globals) reach(ctx context.Context, target string) (*replicaPath, error) {
	sc, closeS, err := g.scheduler()
	if err != nil {
		return nil, err
	}
	_, ferr := sc.FindReplica(ctx, &schedulerv1.FindReplicaRequest{Target: target})
	if ferr == nil {
		return &replicaPath{sched: sc, close: closeS, caller: "scheduler"}, nil
	}
	closeS()
	code := status.Code(ferr)
	if code != codes.Unavailable && (code != codes.NotFound || strings.Contains(target, "/")) {
		return nil, g.rpcError("scheduler", ferr)
	}
	ac, closeA, err := agentClient(g)
	if err != nil {
		return nil, err
	}
	id, err := resolveTarget(ctx, ac, target)
	if err != nil {
		closeA()
		return nil, g.rpcError("agent", err)
	}
	return &replicaPath{agent: ac, id: id, close: closeA, caller: "agent"}, nil
}

// logs opens TARGET's output with req's options.
func (p *replicaPath) logs(ctx context.Context, target string, req *agentv1.StreamLogsRequest) (func() ([]*agentv1.LogEntry, error), error) {
	if p.sched != nil {
		return runs.ClusterLogs(p.sched, req)(ctx, target)
	}
	return runs.AgentLogs(p.agent, req)(ctx, p.id)
}

// execStream is one exec: send is called from one goroutine only.
type execStream struct {
	send func(*agentv1.ExecRequest) error
	recv func() (*agentv1.ExecResponse, error)
}

// exec opens an exec stream to TARGET; the caller sends start first.
func (p *replicaPath) exec(ctx context.Context, target string) (*execStream, error) {
	if p.sched != nil {
		st, err := p.sched.ReplicaExec(ctx)
		if err != nil {
			return nil, err
		}
		return &execStream{
			send: func(m *agentv1.ExecRequest) error {
				return st.Send(&schedulerv1.ReplicaExecRequest{Target: target, Exec: m})
			},
			recv: func() (*agentv1.ExecResponse, error) {
				m, err := st.Recv()
				return m.GetExec(), err
			},
		}, nil
	}
	st, err := p.agent.Exec(ctx)
	if err != nil {
		return nil, err
	}
	return &execStream{
		send: func(m *agentv1.ExecRequest) error {
			if s := m.GetStart(); s != nil {
				s.Id = p.id
			}
			return st.Send(m)
		},
		recv: st.Recv,
	}, nil
}
