package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
)

// enumWord turns REPLICA_PHASE_RUNNING into "running".
func enumWord(s fmt.Stringer, prefix string) string {
	return strings.ReplaceAll(strings.ToLower(strings.TrimPrefix(s.String(), prefix)), "_", "-")
}

// asJSON reports whether -o asks for JSON; values other than table and
// json are an error.
func asJSON(output string) (bool, error) {
	switch output {
	case "json":
		return true, nil
	case "table":
		return false, nil
	}
	return false, fmt.Errorf("output %q: want table or json", output)
}

// jsonOr returns err, or prints m as JSON when there is none.
func jsonOr(err error, out io.Writer, m proto.Message) error {
	if err != nil {
		return err
	}
	return printJSON(out, m)
}

// printJSON writes a proto message as indented JSON.
func printJSON(out io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(out, string(b))
	return err
}

func newStatusCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "status [DEPLOYMENT]",
		Short: "Show deployments: services, endpoints and replicas",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &schedulerv1.GetStatusRequest{}
			if len(args) == 1 {
				req.Deployment = args[0]
			}
			resp, err := callScheduler(cmd.Context(), g, schedulerv1.SchedulerServiceClient.GetStatus, req)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if js, err := asJSON(output); err != nil || js {
				return jsonOr(err, out, resp)
			}
			if len(resp.Deployments) == 0 {
				fmt.Fprintln(out, "no deployments")
				return nil
			}
			for i, d := range resp.Deployments {
				if i > 0 {
					fmt.Fprintln(out)
				}
				printStatus(out, d)
			}
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func printStatus(out io.Writer, d *schedulerv1.DeploymentStatus) {
	state := enumWord(d.Outcome, "ROLLOUT_OUTCOME_")
	if d.Deleting {
		state = "deleting"
	}
	fmt.Fprintf(out, "deployment %s  version %d  %s", d.Name, d.Version, state)
	if d.Reason != "" {
		fmt.Fprintf(out, ": %s", d.Reason)
	}
	fmt.Fprintln(out)
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "SERVICE\tTYPE\tDESIRED\tRUNNING\tHEALTHY\tUPDATED\tIMAGE\tENDPOINTS")
	for _, s := range d.Services {
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%d\t%d\t%s\t%s\n", s.Name, s.Rtype, s.Desired, s.Running, s.Healthy, s.Updated, s.Image, orDash(strings.Join(s.Endpoints, ", ")))
	}
	tw.Flush()
	if len(d.Replicas) == 0 {
		return
	}
	fmt.Fprintln(out)
	tw = tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "REPLICA\tSERVICE\tINDEX\tVERSION\tNODE\tSTATE\tHEALTH\tIP\tRESTARTS\tAGE\tREASON")
	for _, r := range d.Replicas {
		state := enumWord(r.Phase, "REPLICA_PHASE_")
		if r.DesiredStop && r.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_STOPPED {
			state = "stopping"
		}
		age := "-"
		if r.CreatedAt != nil {
			age = time.Since(r.CreatedAt.AsTime()).Truncate(time.Second).String()
		}
		fmt.Fprintf(tw, "%s\t%s\t%d\t%d\t%s\t%s\t%s\t%s\t%d\t%s\t%s\n", r.Id, r.Service, r.Index, r.Version, orDash(r.Node), state,
			enumWord(r.Health, "HEALTH_"), orDash(r.Ip), r.Restarts, age, orDash(r.Reason))
	}
	tw.Flush()
}

func newScaleCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "scale DEPLOYMENT/SERVICE N",
		Short: "Set the replica count of a service",
		Args:  cobra.ExactArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			dep, svc, err := splitTarget(args[0])
			if err != nil {
				return err
			}
			n, err := strconv.ParseUint(args[1], 10, 32)
			if err != nil {
				return fmt.Errorf("replicas %q: want a whole number >= 0", args[1])
			}
			resp, err := callScheduler(cmd.Context(), g, schedulerv1.SchedulerServiceClient.Scale, &schedulerv1.ScaleRequest{Deployment: dep, Service: svc, Replicas: uint32(n)})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s/%s scaled from %d to %d replicas\n", dep, svc, resp.Previous, resp.Replicas)
			return nil
		},
	}
}

func newDeleteCmd(g *globals) *cobra.Command {
	var wait bool
	cmd := &cobra.Command{
		Use:   "delete DEPLOYMENT",
		Short: "Stop everything a deployment runs and forget it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, closeFn, err := g.scheduler()
			if err != nil {
				return err
			}
			defer closeFn()
			ctx := cmd.Context()
			if _, err := client.DeleteDeployment(ctx, &schedulerv1.DeleteDeploymentRequest{Deployment: args[0]}); err != nil {
				return g.rpcError("scheduler", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s: deleting\n", args[0])
			if !wait {
				return nil
			}
			stream, err := client.WatchDeployment(ctx, &schedulerv1.WatchDeploymentRequest{Deployment: args[0]})
			if err != nil {
				return g.rpcError("scheduler", err)
			}
			for {
				_, err := stream.Recv()
				// The stream ends when the deployment is gone; NotFound means
				// it was gone before the watch began.
				if err == io.EOF || status.Code(err) == codes.NotFound {
					fmt.Fprintf(cmd.OutOrStdout(), "%s: deleted\n", args[0])
					return nil
				} else if err != nil {
					return g.rpcError("scheduler", err)
				}
			}
		},
	}
	cmd.Flags().BoolVar(&wait, "wait", true, "wait until every replica is stopped")
	return cmd
}

func newRollbackCmd(g *globals) *cobra.Command {
	var to uint64
	var detach bool
	cmd := &cobra.Command{
		Use:   "rollback DEPLOYMENT",
		Short: "Deploy the previous version (or --to VERSION) again",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, closeFn, err := g.scheduler()
			if err != nil {
				return err
			}
			defer closeFn()
			resp, err := client.Rollback(cmd.Context(), &schedulerv1.RollbackRequest{Deployment: args[0], ToVersion: to})
			if err != nil {
				return g.rpcError("scheduler", err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "%s: version %d deployed with the file of version %d\n", args[0], resp.Version, resp.FromVersion)
			if detach {
				return nil
			}
			return watchRollout(cmd.Context(), g, client, out, args[0], resp.Version, 5*time.Minute)
		},
	}
	cmd.Flags().Uint64Var(&to, "to", 0, "the version to go back to (default: the last good one before the current)")
	cmd.Flags().BoolVarP(&detach, "detach", "d", false, "do not wait for the rollout")
	return cmd
}

func newHistoryCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "history DEPLOYMENT",
		Short: "List a deployment's versions",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			resp, err := callScheduler(cmd.Context(), g, schedulerv1.SchedulerServiceClient.GetHistory, &schedulerv1.GetHistoryRequest{Deployment: args[0]})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if js, err := asJSON(output); err != nil || js {
				return jsonOr(err, out, resp)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "VERSION\tCREATED\tFILE\tOUTCOME\tNOTE")
			for _, v := range resp.Versions {
				mark := ""
				if v.Version == resp.Current {
					mark = "* "
				}
				note := v.Reason
				if v.RolledBackFrom != 0 {
					note = strings.TrimSpace(fmt.Sprintf("rollback from version %d %s", v.RolledBackFrom, note))
				}
				fmt.Fprintf(tw, "%s%d\t%s\t%s\t%s\t%s\n", mark, v.Version, v.CreatedAt.AsTime().Local().Format(time.DateTime), v.FileName,
					enumWord(v.Outcome, "ROLLOUT_OUTCOME_"), orDash(note))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func newEventsCmd(g *globals) *cobra.Command {
	var (
		follow bool
		limit  uint32
		output string
	)
	cmd := &cobra.Command{
		Use:   "events [DEPLOYMENT]",
		Short: "Show what happened in the cluster (-f to follow)",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			client, closeFn, err := g.scheduler()
			if err != nil {
				return err
			}
			defer closeFn()
			req := &schedulerv1.ListEventsRequest{Follow: follow, Limit: limit}
			if len(args) == 1 {
				req.Deployment = args[0]
			}
			stream, err := client.ListEvents(cmd.Context(), req)
			if err != nil {
				return g.rpcError("scheduler", err)
			}
			out := cmd.OutOrStdout()
			enc := json.NewEncoder(out)
			for {
				msg, err := stream.Recv()
				if err == io.EOF {
					return nil
				}
				if err != nil {
					if cmd.Context().Err() != nil {
						return nil
					}
					return g.rpcError("scheduler", err)
				}
				e := msg.Event
				if output == "json" {
					b, _ := protojson.Marshal(e)
					if err := enc.Encode(json.RawMessage(b)); err != nil {
						return err
					}
					continue
				}
				subject := strings.Trim(strings.Join([]string{e.Deployment, e.Service, e.Replica}, "/"), "/")
				if subject == "" {
					subject = "node " + e.Node
				}
				fmt.Fprintf(out, "%s  %-11s %s: %s\n", e.Time.AsTime().Local().Format("15:04:05.000"), e.Kind, subject, e.Message)
			}
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new events")
	cmd.Flags().Uint32Var(&limit, "limit", 100, "how many past events to show")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json (one object per line)")
	return cmd
}
