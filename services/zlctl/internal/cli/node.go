package cli

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/grpc"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/status"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
	overlayv1 "zlayer.dev/libs/api/zlayer/overlay/v1"
	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	registryv1 "zlayer.dev/libs/api/zlayer/registry/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	typesv1 "zlayer.dev/libs/api/zlayer/types/v1"
)

// components are the five daemons of a node, in the order zlctl shows them.
var components = []string{"scheduler", "agent", "registry", "proxy", "overlay"}

// getInfo calls component's GetInfo on cc.
func getInfo(ctx context.Context, component string, cc *grpc.ClientConn) (*typesv1.DaemonInfo, error) {
	switch component {
	case "agent":
		r, err := agentv1.NewAgentServiceClient(cc).GetInfo(ctx, &agentv1.GetInfoRequest{})
		return r.GetInfo(), err
	case "scheduler":
		r, err := schedulerv1.NewSchedulerServiceClient(cc).GetInfo(ctx, &schedulerv1.GetInfoRequest{})
		return r.GetInfo(), err
	case "proxy":
		r, err := proxyv1.NewProxyServiceClient(cc).GetInfo(ctx, &proxyv1.GetInfoRequest{})
		return r.GetInfo(), err
	case "overlay":
		r, err := overlayv1.NewOverlayServiceClient(cc).GetInfo(ctx, &overlayv1.GetInfoRequest{})
		return r.GetInfo(), err
	case "registry":
		r, err := registryv1.NewRegistryServiceClient(cc).GetInfo(ctx, &registryv1.GetInfoRequest{})
		return r.GetInfo(), err
	}
	return nil, fmt.Errorf("unknown component %q", component)
}

// daemonStatus is one row of `zlctl node status`.
type daemonStatus struct {
	Component string `json:"component"`
	Status    string `json:"status"` // serving, not-serving or down
	Socket    string `json:"socket"`
	Version   string `json:"version,omitempty"`
	Node      string `json:"node,omitempty"`
	PID       int32  `json:"pid,omitempty"`
	Uptime    string `json:"uptime,omitempty"`
	Error     string `json:"error,omitempty"`
}

func probe(ctx context.Context, g *globals, component string) daemonStatus {
	st := daemonStatus{Component: component, Socket: g.socket(component), Status: "down"}
	cc, err := g.dial(component)
	if err != nil {
		st.Error = err.Error()
		return st
	}
	defer cc.Close()
	ctx, cancel := context.WithTimeout(ctx, 3*time.Second)
	defer cancel()
	h, err := healthpb.NewHealthClient(cc).Check(ctx, &healthpb.HealthCheckRequest{})
	if err != nil {
		st.Error = status.Convert(err).Message()
		return st
	}
	st.Status = "not-serving"
	if h.GetStatus() == healthpb.HealthCheckResponse_SERVING {
		st.Status = "serving"
	}
	info, err := getInfo(ctx, component, cc)
	if err != nil {
		st.Error = status.Convert(err).Message()
		return st
	}
	st.Version = info.GetVersion()
	st.Node = info.GetNode()
	st.PID = info.GetPid()
	st.Uptime = info.GetUptime().AsDuration().Truncate(time.Second).String()
	return st
}

func newNodeCmd(g *globals) *cobra.Command {
	node := &cobra.Command{Use: "node", Short: "Inspect the local node and the cluster's nodes"}
	var output string
	statusCmd := &cobra.Command{
		Use:   "status",
		Short: "Show the health of the local node's five daemons",
		Long: "Asks each daemon of the local node (its socket in --run-dir) for its health and\n" +
			"version. Exits 1 if any daemon is down or not serving.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rows := make([]daemonStatus, len(components))
			for i, c := range components {
				rows[i] = probe(cmd.Context(), g, c)
			}
			out := cmd.OutOrStdout()
			switch output {
			case "json":
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				if err := enc.Encode(rows); err != nil {
					return err
				}
			case "table":
				tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "COMPONENT\tSTATUS\tVERSION\tPID\tUPTIME\tSOCKET")
				for _, r := range rows {
					pid := "-"
					if r.PID != 0 {
						pid = fmt.Sprint(r.PID)
					}
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\n", r.Component, r.Status, orDash(r.Version), pid, orDash(r.Uptime), r.Socket)
				}
				if err := tw.Flush(); err != nil {
					return err
				}
				for _, r := range rows {
					if r.Error != "" {
						fmt.Fprintf(out, "%s: %s\n", r.Component, r.Error)
					}
				}
			default:
				return fmt.Errorf("output %q: want table or json", output)
			}
			for _, r := range rows {
				if r.Status != "serving" {
					return &exitError{code: 1}
				}
			}
			return nil
		},
	}
	statusCmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	node.AddCommand(statusCmd, newNodeLsCmd(g), newNodeJoinCmd(g), newNodeLeaveCmd(g))
	return node
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func newNodeLsCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List the cluster's nodes",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			resp, err := callScheduler(cmd.Context(), g, schedulerv1.SchedulerServiceClient.ListNodes, &schedulerv1.ListNodesRequest{})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if js, err := asJSON(output); err != nil || js {
				return jsonOr(err, out, resp)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NODE\tSTATE\tCPUS\tMEMORY\tREPLICAS\tLAST HEARTBEAT\tSUBNET\tJOINED")
			for _, n := range resp.Nodes {
				state := enumWord(n.State, "NODE_STATE_")
				if n.AgentDown {
					state += " (agent down)"
				}
				// SUBNET: the node's container subnet, once its overlay reported
				// its place in the mesh.
				fmt.Fprintf(tw, "%s\t%s\t%.1f\t%dMiB\t%d\t%s ago\t%s\t%s\n", n.Name, state, n.Cpu, n.MemoryBytes>>20,
					resp.Replicas[n.Name], time.Since(n.LastHeartbeat.AsTime()).Truncate(100*time.Millisecond),
					orDash(n.GetOverlay().GetContainerCidr()), orDash(strings.Join(n.JoinedServices, ",")))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}
