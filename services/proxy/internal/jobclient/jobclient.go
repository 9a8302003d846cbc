// Package jobclient runs job endpoints for the proxy: it asks the local
// scheduler for a run of the job on this node, then follows the run's
// output through the local agent and its end through the scheduler. The
// request body is not passed to the run (runs have no standard input yet);
// a client that goes away does not stop the run.
package jobclient

import (
	"context"
	"errors"
	"fmt"
	"io"

	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/runs"
	"zlayer.dev/services/proxy/internal/httpproxy"
)

var _ httpproxy.JobRunner = (*Client)(nil)

// Client implements httpproxy.JobRunner over the node's sockets.
type Client struct {
	node  string
	sched schedulerv1.SchedulerServiceClient
	agent agentv1.AgentServiceClient
}

// New returns a Client for node, on connections to its scheduler and agent.
func New(node string, sched, agent grpc.ClientConnInterface) *Client {
	return &Client{node: node, sched: schedulerv1.NewSchedulerServiceClient(sched), agent: agentv1.NewAgentServiceClient(agent)}
}

// RunJob starts a run on this node and returns its output and end.
func (c *Client) RunJob(ctx context.Context, req httpproxy.JobRequest) (httpproxy.JobRun, error) {
	resp, err := c.sched.RunJob(ctx, &schedulerv1.RunJobRequest{Deployment: req.Deployment, Service: req.Service, Node: c.node, Trigger: "http"})
	if status.Code(err) == codes.Unavailable {
		return httpproxy.JobRun{}, errors.New("the node's scheduler is not reachable: " + status.Convert(err).Message())
	}
	if err != nil {
		return httpproxy.JobRun{}, errors.New(status.Convert(err).Message())
	}
	id := resp.GetRun().GetId()
	pr, pw := io.Pipe()
	type end struct {
		code int
		err  error
	}
	ended := make(chan end, 1)
	go func() {
		// A run that outlives the client keeps running: the output is then
		// simply not read any more.
		final, err := runs.Follow(context.WithoutCancel(ctx), c.sched, runs.AgentLogs(c.agent, &agentv1.StreamLogsRequest{Follow: true}), req.Deployment, id, pw, pw)
		pw.Close()
		switch {
		case err != nil:
			ended <- end{err: fmt.Errorf("follow run %s: %s", id, status.Convert(err).Message())}
		case final.GetPhase() == schedulerv1.ReplicaPhase_REPLICA_PHASE_SUCCEEDED:
			ended <- end{code: 0}
		case final.GetPhase() == schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED && final.GetExitCode() >= 0:
			ended <- end{code: int(final.GetExitCode())}
		default:
			ended <- end{err: fmt.Errorf("run %s ended %s: %s", id, final.GetPhase(), final.GetReason())}
		}
	}()
	return httpproxy.JobRun{
		Output: pr,
		Wait: func() (int, error) {
			e := <-ended
			return e.code, e.err
		},
	}, nil
}
