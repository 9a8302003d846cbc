package cli

import (
	"context"
	"fmt"
	"strconv"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
)

// agentClient dials the local agent.
func agentClient(g *globals) (agentv1.AgentServiceClient, func(), error) {
	cc, err := g.dial("agent")
	if err != nil {
		return nil, nil, err
	}
	return agentv1.NewAgentServiceClient(cc), func() { cc.Close() }, nil
}

// resolveTarget turns TARGET into a container id on this node: a
// container id as is, or deployment/service[/index] matched against the
// node's replicas (the first index when none is given).
func resolveTarget(ctx context.Context, c agentv1.AgentServiceClient, target string) (string, error) {
	parts := strings.Split(target, "/")
	if len(parts) == 1 {
		return target, nil
	}
	if len(parts) > 3 || parts[0] == "" || parts[1] == "" {
		return "", fmt.Errorf("target %q: want a container id or deployment/service[/index]", target)
	}
	index := -1
	if len(parts) == 3 {
		n, err := strconv.Atoi(parts[2])
		if err != nil || n < 0 {
			return "", fmt.Errorf("target %q: index %q is not a number", target, parts[2])
		}
		index = n
	}
	l, err := c.ListReplicas(ctx, &agentv1.ListReplicasRequest{})
	if err != nil {
		return "", err
	}
	best := ""
	bestIndex := int32(-1)
	for _, r := range l.GetReplicas() {
		id := r.GetSpec().GetIdentity()
		if id.GetDeployment() != parts[0] || id.GetService() != parts[1] {
			continue
		}
		if index >= 0 && id.GetIndex() != int32(index) {
			continue
		}
		if best == "" || id.GetIndex() < bestIndex {
			best, bestIndex = r.GetSpec().GetId(), id.GetIndex()
		}
	}
	if best == "" {
		return "", fmt.Errorf("target %q: no such replica on this node", target)
	}
	return best, nil
}

// psState is the state column: the state word, with the exit code once
// exited.
func psState(r *agentv1.Replica) string {
	s := enumWord(r.GetState(), "REPLICA_STATE_")
	if e := r.GetExit(); e != nil {
		s += fmt.Sprintf(" (%d)", e.GetCode())
		if e.GetOomKilled() {
			s += " oom"
		}
	}
	return s
}

// psDuration is a short human duration: 45s, 12m, 3h, 2d.
func psDuration(d time.Duration) string {
	switch {
	case d < time.Minute:
		return fmt.Sprintf("%ds", int(d.Seconds()))
	case d < time.Hour:
		return fmt.Sprintf("%dm", int(d.Minutes()))
	case d < 48*time.Hour:
		return fmt.Sprintf("%dh", int(d.Hours()))
	}
	return fmt.Sprintf("%dd", int(d.Hours()/24))
}

// psBytes is a short binary size: 512Ki, 12.3Mi.
func psBytes(n uint64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	v, i := float64(n), -1
	for v >= unit && i < 3 {
		v /= unit
		i++
	}
	return fmt.Sprintf("%.1f%si", v, string("KMGT"[i]))
}

func newPsCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "ps",
		Short: "List this node's containers",
		Long: "Lists the local agent's containers: id, deployment/service/index, image, state\n" +
			"(with the exit code once exited), address, uptime, CPU (percent of the limit,\n" +
			"or of one CPU without one) and memory (with the limit).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, closeFn, err := agentClient(g)
			if err != nil {
				return err
			}
			defer closeFn()
			l, err := c.ListReplicas(cmd.Context(), &agentv1.ListReplicasRequest{})
			if err != nil {
				return g.rpcError("agent", err)
			}
			st, err := c.GetStats(cmd.Context(), &agentv1.GetStatsRequest{})
			if err != nil {
				return g.rpcError("agent", err)
			}
			if output == "json" {
				if err := printJSON(cmd.OutOrStdout(), l); err != nil {
					return err
				}
				return printJSON(cmd.OutOrStdout(), st)
			}
			if output != "table" {
				return fmt.Errorf("output %q: want table or json", output)
			}
			stats := map[string]*agentv1.ReplicaStats{}
			for _, s := range st.GetStats() {
				stats[s.GetId()] = s
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tREPLICA\tIMAGE\tSTATE\tIP\tUPTIME\tCPU\tMEM")
			now := time.Now()
			for _, r := range l.GetReplicas() {
				id := r.GetSpec().GetIdentity()
				replica := "-"
				if id.GetService() != "" {
					replica = fmt.Sprintf("%s/%s/%d", id.GetDeployment(), id.GetService(), id.GetIndex())
				}
				uptime, cpu, mem := "-", "-", "-"
				if r.GetState() == agentv1.ReplicaState_REPLICA_STATE_RUNNING && r.GetStartedAt() != nil {
					uptime = psDuration(now.Sub(r.GetStartedAt().AsTime()))
				}
				if s, ok := stats[r.GetSpec().GetId()]; ok {
					cpu = fmt.Sprintf("%.1f%%", s.GetCpuPercent())
					mem = psBytes(s.GetMemoryBytes())
					if s.GetMemoryLimitBytes() > 0 {
						mem += "/" + psBytes(s.GetMemoryLimitBytes())
					}
				}
				ip := r.GetIp()
				if ip == "" {
					ip = "-"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", r.GetSpec().GetId(), replica, r.GetSpec().GetImage(),
					psState(r), ip, uptime, cpu, mem)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}
