package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/runs"
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
			final, err := runs.Follow(ctx, client, runs.ClusterLogs(client, &agentv1.StreamLogsRequest{Follow: true}), dep, run.GetId(), cmd.OutOrStdout(), cmd.ErrOrStderr())
			if err != nil {
				return g.rpcError("scheduler", err)
			}
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
			resp, err := callScheduler(cmd.Context(), g, schedulerv1.SchedulerServiceClient.ListJobRuns, &schedulerv1.ListJobRunsRequest{Deployment: dep, Service: svc})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if js, err := asJSON(output); err != nil || js {
				return jsonOr(err, out, resp)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "RUN\tID\tTRIGGER\tNODE\tSTATE\tEXIT\tSTARTED\tREASON")
			for _, r := range resp.Runs {
				exit := "-"
				if runs.Finished(r.Phase) {
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
