// Package runs follows one run of a job or cron job: its output (from the
// agent of the node it runs on, directly or through the scheduler), and its
// end (phase and exit code) from the scheduler. zlctl and zlayer-proxy use
// it; it starts nothing itself.
package runs

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/proto"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
)

// Finished reports whether a run in phase p has ended.
func Finished(p schedulerv1.ReplicaPhase) bool {
	switch p {
	case schedulerv1.ReplicaPhase_REPLICA_PHASE_SUCCEEDED, schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED,
		schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED, schedulerv1.ReplicaPhase_REPLICA_PHASE_LOST:
		return true
	}
	return false
}

// Wait follows the deployment until run id has ended and returns it.
func Wait(ctx context.Context, sched schedulerv1.SchedulerServiceClient, deployment, id string) (*schedulerv1.Replica, error) {
	stream, err := sched.WatchDeployment(ctx, &schedulerv1.WatchDeploymentRequest{Deployment: deployment})
	if err != nil {
		return nil, err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		for _, r := range msg.GetStatus().GetReplicas() {
			if r.GetId() == id && Finished(r.GetPhase()) {
				return r, nil
			}
		}
	}
}

// Logs opens a replica's output, following it; next returns lines until
// io.EOF.
type Logs func(ctx context.Context, id string) (next func() ([]*agentv1.LogEntry, error), err error)

// AgentLogs reads output from agent, for replicas on the agent's node,
// with req's options (its id is set by each call).
func AgentLogs(agent agentv1.AgentServiceClient, req *agentv1.StreamLogsRequest) Logs {
	return func(ctx context.Context, id string) (func() ([]*agentv1.LogEntry, error), error) {
		r := &agentv1.StreamLogsRequest{}
		if req != nil {
			r = proto.CloneOf(req)
		}
		r.Id = id
		st, err := agent.StreamLogs(ctx, r)
		if err != nil {
			return nil, err
		}
		return entries(st.Recv), nil
	}
}

// ClusterLogs reads output through the scheduler, for replicas on any
// node, with req's options; the id given to each call may also be
// deployment/service[/index].
func ClusterLogs(sched schedulerv1.SchedulerServiceClient, req *agentv1.StreamLogsRequest) Logs {
	return func(ctx context.Context, id string) (func() ([]*agentv1.LogEntry, error), error) {
		st, err := sched.ReplicaLogs(ctx, &schedulerv1.ReplicaLogsRequest{Target: id, Options: req})
		if err != nil {
			return nil, err
		}
		return entries(st.Recv), nil
	}
}

// entries adapts a log stream's Recv to the lines it carries.
func entries[M interface{ GetEntries() []*agentv1.LogEntry }](recv func() (M, error)) func() ([]*agentv1.LogEntry, error) {
	return func() ([]*agentv1.LogEntry, error) {
		m, err := recv()
		if err != nil {
			return nil, err
		}
		return m.GetEntries(), nil
	}
}

// Output copies the run's output to stdout and stderr, following it until
// ctx is done or the stream ends. Until the container exists (the run is
// being placed, or its image pulled) it retries; it returns at once on any
// error but "not found".
func Output(ctx context.Context, logs Logs, id string, stdout, stderr io.Writer) error {
	for {
		next, err := logs(ctx, id)
		if err == nil {
			var entries []*agentv1.LogEntry
			for entries, err = next(); err == nil; entries, err = next() {
				for _, e := range entries {
					w := stdout
					if e.GetStream() == agentv1.LogStream_LOG_STREAM_STDERR {
						w = stderr
					}
					line := e.GetText()
					if !e.GetPartial() && (len(line) == 0 || line[len(line)-1] != '\n') {
						line = append(line, '\n')
					}
					if _, werr := w.Write(line); werr != nil {
						return werr
					}
				}
			}
			if errors.Is(err, io.EOF) {
				return nil
			}
		}
		if ctx.Err() != nil {
			return nil
		}
		if status.Code(err) != codes.NotFound {
			return err
		}
		select {
		case <-ctx.Done():
			return nil
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// Follow streams the run's output and returns the ended run. The output is
// given up to two seconds after the end to drain.
func Follow(ctx context.Context, sched schedulerv1.SchedulerServiceClient, logs Logs, deployment, id string, stdout, stderr io.Writer) (*schedulerv1.Replica, error) {
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = Output(lctx, logs, id, stdout, stderr)
	}()
	final, err := Wait(ctx, sched, deployment, id)
	select {
	case <-done:
	case <-time.After(2 * time.Second):
	}
	stop()
	<-done
	return final, err
}
