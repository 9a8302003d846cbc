package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
)

func newJobCmd(g *globals) *cobra.Command {
	job := &cobra.Command{Use: "job", Short: "Run jobs and see their runs"}
	job.AddCommand(newJobRunCmd(g), newJobRunsCmd(g))
	return job
}

func splitTarget(s string) (string, string, error) {
	dep, svc, ok := strings.Cut(s, "/")
	if !ok || dep == "" || svc == "" || strings.Contains(svc, "/") {
		return "", "", fmt.Errorf("target %q: want DEPLOYMENT/SERVICE", s)
	}
	return dep, svc, nil
}

func finished(p schedulerv1.ReplicaPhase) bool {
	return p == schedulerv1.ReplicaPhase_REPLICA_PHASE_SUCCEEDED || p == schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED ||
		p == schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED || p == schedulerv1.ReplicaPhase_REPLICA_PHASE_LOST
}

func newJobRunCmd(g *globals) *cobra.Command {
	var detach bool
	cmd := &cobra.Command{
		Use:   "run DEPLOYMENT/SERVICE",
		Short: "Run a job now, stream its output and exit with its exit code",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dep, svc, err := splitTarget(args[0])
			if err != nil {
				return err
			}
			client, closeFn, err := g.scheduler()
			if err != nil {
				return err
			}
			defer closeFn()
			ctx := cmd.Context()
			resp, err := client.RunJob(ctx, &schedulerv1.RunJobRequest{Deployment: dep, Service: svc})
			if err != nil {
				return g.rpcError("scheduler", err)
			}
			run := resp.GetRun()
			where := run.GetNode()
			if where == "" {
				where = "no node yet: " + run.GetReason()
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "run %d of %s (%s) on %s\n", run.GetIndex(), args[0], run.GetId(), where)
			if detach {
				return nil
			}
			logsDone := make(chan struct{})
			lctx, stopLogs := context.WithCancel(ctx)
			defer stopLogs()
			go func() {
				defer close(logsDone)
				streamRunLogs(lctx, g, cmd.OutOrStdout(), cmd.ErrOrStderr(), run.GetId())
			}()
			final, err := waitRun(ctx, client, dep, run.GetId())
			if err != nil {
				return g.rpcError("scheduler", err)
			}
			select { // the last lines may still be on their way
			case <-logsDone:
			case <-time.After(2 * time.Second):
			}
			stopLogs()
			switch final.GetPhase() {
			case schedulerv1.ReplicaPhase_REPLICA_PHASE_SUCCEEDED:
				return nil
			case schedulerv1.ReplicaPhase_REPLICA_PHASE_FAILED:
				fmt.Fprintf(cmd.ErrOrStderr(), "run %d failed: %s\n", final.GetIndex(), final.GetReason())
				if code := final.GetExitCode(); code > 0 && code < 256 {
					return &exitError{code: int(code)}
				}
				return &exitError{code: 1}
			}
			fmt.Fprintf(cmd.ErrOrStderr(), "run %d ended %s: %s\n", final.GetIndex(), enumWord(final.GetPhase(), "REPLICA_PHASE_"), final.GetReason())
			return &exitError{code: 1}
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "start the run and return")
	return cmd
}

// waitRun follows the deployment until the run has finished.
func waitRun(ctx context.Context, client schedulerv1.SchedulerServiceClient, dep, id string) (*schedulerv1.Replica, error) {
	stream, err := client.WatchDeployment(ctx, &schedulerv1.WatchDeploymentRequest{Deployment: dep})
	if err != nil {
		return nil, err
	}
	for {
		msg, err := stream.Recv()
		if err != nil {
			return nil, err
		}
		for _, r := range msg.GetStatus().GetReplicas() {
			if r.GetId() == id && finished(r.GetPhase()) {
				return r, nil
			}
		}
	}
}

// streamRunLogs follows the run's output from this node's agent, once the
// container exists; it says so once if the run is on another node.
func streamRunLogs(ctx context.Context, g *globals, stdout, stderr io.Writer, id string) {
	c, closeFn, err := agentClient(g)
	if err != nil {
		return
	}
	defer closeFn()
	for {
		st, err := c.StreamLogs(ctx, &agentv1.StreamLogsRequest{Id: id, Follow: true})
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
					_, _ = w.Write(line)
				}
			}
			if errors.Is(err, io.EOF) {
				return
			}
		}
		if ctx.Err() != nil {
			return
		}
		if status.Code(err) != codes.NotFound {
			return
		}
		select { // not started yet (pulling), or on another node
		case <-ctx.Done():
			return
		case <-time.After(200 * time.Millisecond):
		}
	}
}

func newJobRunsCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "runs DEPLOYMENT/SERVICE",
		Short: "List a job's last runs with their exit codes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dep, svc, err := splitTarget(args[0])
			if err != nil {
				return err
			}
			client, closeFn, err := g.scheduler()
			if err != nil {
				return err
			}
			defer closeFn()
			resp, err := client.ListJobRuns(cmd.Context(), &schedulerv1.ListJobRunsRequest{Deployment: dep, Service: svc})
			if err != nil {
				return g.rpcError("scheduler", err)
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				return printJSON(out, resp)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RUN\tID\tTRIGGER\tNODE\tSTATE\tEXIT\tSTARTED\tREASON")
			for _, r := range resp.Runs {
				exit := "-"
				if finished(r.Phase) {
					exit = fmt.Sprint(r.ExitCode)
				}
				fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.Index, r.Id, r.Trigger, orDash(r.Node),
					enumWord(r.Phase, "REPLICA_PHASE_"), exit, r.CreatedAt.AsTime().Local().Format(time.DateTime), orDash(r.Reason))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}
