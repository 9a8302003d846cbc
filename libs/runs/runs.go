// Package runs follows one run of a job or cron job: its output from the
// agent of the node it runs on, and its end (phase and exit code) from the
// scheduler. zlctl and zlayer-proxy use it; it starts nothing itself.
package runs

import (
	"context"
	"errors"
	"io"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

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

// Output copies the run's output from the agent to stdout and stderr,
// following it until ctx is done or the agent ends the stream. Until the
// container exists (the image is being pulled) it retries; it returns at
// once if the agent says anything but "not found".
func Output(ctx context.Context, agent agentv1.AgentServiceClient, id string, stdout, stderr io.Writer) error {
	for {
		st, err := agent.StreamLogs(ctx, &agentv1.StreamLogsRequest{Id: id, Follow: true})
		if err == nil {
			var m *agentv1.StreamLogsResponse
			for m, err = st.Recv(); err == nil; m, err = st.Recv() {
				for _, e := range m.GetEntries() {
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
func Follow(ctx context.Context, sched schedulerv1.SchedulerServiceClient, agent agentv1.AgentServiceClient, deployment, id string, stdout, stderr io.Writer) (*schedulerv1.Replica, error) {
	lctx, stop := context.WithCancel(ctx)
	defer stop()
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = Output(lctx, agent, id, stdout, stderr)
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
