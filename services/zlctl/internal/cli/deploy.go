package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/spec"
)

// readSpecFile reads FILE or "-" (stdin).
func readSpecFile(cmd *cobra.Command, path string) (string, []byte, error) {
	if path == "-" {
		b, err := io.ReadAll(cmd.InOrStdin())
		return "<stdin>", b, err
	}
	b, err := os.ReadFile(path)
	return path, b, err
}

// schedulerClient dials the local scheduler.
func (g *globals) scheduler() (schedulerv1.SchedulerServiceClient, func(), error) {
	cc, err := g.dial("scheduler")
	if err != nil {
		return nil, nil, err
	}
	return schedulerv1.NewSchedulerServiceClient(cc), func() { cc.Close() }, nil
}

// callScheduler calls one method of the local scheduler with req and
// returns its answer, or the error worded for people.
func callScheduler[Req, Resp any](ctx context.Context, g *globals, method func(schedulerv1.SchedulerServiceClient, context.Context, Req, ...grpc.CallOption) (Resp, error), req Req) (Resp, error) {
	client, closeFn, err := g.scheduler()
	if err != nil {
		var zero Resp
		return zero, err
	}
	defer closeFn()
	resp, err := method(client, ctx, req)
	if err != nil {
		return resp, g.rpcError("scheduler", err)
	}
	return resp, nil
}

// rpcError turns a gRPC error into text for people: the daemon's message,
// and for an unreachable daemon the socket tried.
func (g *globals) rpcError(component string, err error) error {
	st, ok := status.FromError(err)
	if !ok {
		return err
	}
	if st.Code() == codes.Unavailable {
		return fmt.Errorf("%s is not reachable on %s (is the node running? `zlctl node status`): %s", component, g.socket(component), st.Message())
	}
	return errors.New(st.Message())
}

func newDeployCmd(g *globals) *cobra.Command {
	var (
		detach  bool
		timeout time.Duration
	)
	cmd := &cobra.Command{
		Use:   "deploy FILE",
		Short: "Validate a deployment file and roll it out",
		Long: "Validates FILE (\"-\" for stdin) locally, sends it to the scheduler and shows\n" +
			"the rollout until it completes. Exits 1 with the reason when the rollout fails\n" +
			"(the deployment is then rolled back to its previous version).",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			name, data, err := readSpecFile(cmd, args[0])
			if err != nil {
				return err
			}
			if _, err := spec.Parse(name, data); err != nil {
				fmt.Fprintln(cmd.ErrOrStderr(), err)
				return &exitError{code: 1}
			}
			client, closeFn, err := g.scheduler()
			if err != nil {
				return err
			}
			defer closeFn()
			ctx := cmd.Context()
			resp, err := client.Deploy(ctx, &schedulerv1.DeployRequest{SpecYaml: data, FileName: name})
			if err != nil {
				return g.rpcError("scheduler", err)
			}
			out := cmd.OutOrStdout()
			if resp.Unchanged {
				fmt.Fprintf(out, "%s: unchanged (version %d)\n", resp.Deployment, resp.Version)
				if detach {
					return nil
				}
				// The file is what runs, or is being rolled out: say how that went.
			} else {
				fmt.Fprintf(out, "%s: version %d deployed (changed: %s)\n", resp.Deployment, resp.Version, strings.Join(resp.Changed, ", "))
			}
			if detach {
				return nil
			}
			return watchRollout(ctx, g, client, out, resp.Deployment, resp.Version, timeout)
		},
	}
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "return once the version is committed, without waiting for the rollout")
	cmd.Flags().DurationVar(&timeout, "timeout", 5*time.Minute, "give up waiting for the rollout after this long (the rollout goes on)")
	return cmd
}

// watchRollout prints progress until version completes, fails or is superseded.
func watchRollout(ctx context.Context, g *globals, client schedulerv1.SchedulerServiceClient, out io.Writer, dep string, version uint64, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	stream, err := client.WatchDeployment(ctx, &schedulerv1.WatchDeploymentRequest{Deployment: dep})
	if err != nil {
		return g.rpcError("scheduler", err)
	}
	start := time.Now()
	last := ""
	for {
		msg, err := stream.Recv()
		if err != nil {
			if status.Code(err) == codes.DeadlineExceeded || errors.Is(ctx.Err(), context.DeadlineExceeded) {
				return fmt.Errorf("rollout of %s version %d not complete after %s (it goes on: `zlctl status %s`)", dep, version, timeout, dep)
			}
			return g.rpcError("scheduler", err)
		}
		st := msg.GetStatus()
		if line := progressLine(st); line != last {
			fmt.Fprintf(out, "  %5.1fs  %s\n", time.Since(start).Seconds(), line)
			last = line
		}
		switch {
		case st.Version > version:
			// A newer version: ours failed and was rolled back, or someone
			// deployed over it. History says which.
			if h, herr := client.GetHistory(ctx, &schedulerv1.GetHistoryRequest{Deployment: dep}); herr == nil {
				for _, v := range h.Versions {
					if v.Version == version && v.Outcome == schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_FAILED {
						fmt.Fprintf(out, "rollout of version %d failed: %s\nrolled back: version %d runs the previous file\n", version, v.Reason, st.Version)
						return &exitError{code: 1}
					}
				}
			}
			fmt.Fprintf(out, "version %d was superseded by version %d\n", version, st.Version)
			return &exitError{code: 1}
		case st.Version == version && st.Outcome == schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_COMPLETE:
			fmt.Fprintf(out, "%s: version %d rolled out in %.1fs\n", dep, version, time.Since(start).Seconds())
			return nil
		case st.Version == version && st.Outcome == schedulerv1.RolloutOutcome_ROLLOUT_OUTCOME_FAILED:
			fmt.Fprintf(out, "rollout of version %d failed: %s\n", version, st.Reason)
			return &exitError{code: 1}
		}
	}
}

// progressLine summarises a status: per service updated/desired and healthy.
func progressLine(st *schedulerv1.DeploymentStatus) string {
	var parts []string
	for _, s := range st.Services {
		if s.Rtype != "service" {
			parts = append(parts, fmt.Sprintf("%s (%s)", s.Name, s.Rtype))
			continue
		}
		parts = append(parts, fmt.Sprintf("%s %d/%d updated, %d healthy", s.Name, s.Updated, s.Desired, s.Healthy))
	}
	pending := 0
	for _, r := range st.Replicas {
		if r.Phase == schedulerv1.ReplicaPhase_REPLICA_PHASE_PENDING && !r.DesiredStop {
			pending++
			if pending == 1 {
				parts = append(parts, "pending: "+r.Reason)
			}
		}
	}
	return strings.Join(parts, "; ")
}
