package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"

	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
)

// newRoutesCmd shows the local proxy's route table: what each public
// endpoint routes to, how many replicas take traffic, and the request rate.
func newRoutesCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "routes",
		Short: "Show the local proxy's route table with live replica state and request rates",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			cc, err := g.dial("proxy")
			if err != nil {
				return err
			}
			defer cc.Close()
			client := proxyv1.NewProxyServiceClient(cc)
			list, err := client.ListRoutes(cmd.Context(), &proxyv1.ListRoutesRequest{})
			if err != nil {
				return g.rpcError("proxy", err)
			}
			out := cmd.OutOrStdout()
			if js, err := asJSON(output); err != nil || js {
				return jsonOr(err, out, list)
			}
			stats, err := client.GetStats(cmd.Context(), &proxyv1.GetStatsRequest{})
			if err != nil {
				return g.rpcError("proxy", err)
			}
			rps := map[string]float64{}
			for _, e := range stats.GetEndpoints() {
				rps[e.GetDeployment()+"/"+e.GetService()+"/"+e.GetEndpoint()] = e.GetRps()
			}
			fmt.Fprintf(out, "generation %d\n", list.GetGeneration())
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEPLOYMENT\tSERVICE\tENDPOINT\tPROTOCOL\tEXPOSE\tROUTE\tREPLICAS\tRPS\tBACKENDS")
			for _, rs := range list.GetRoutes() {
				r := rs.GetRoute()
				where := r.GetHost()
				switch r.GetProtocol() {
				case proxyv1.Protocol_PROTOCOL_TCP, proxyv1.Protocol_PROTOCOL_UDP:
					where = fmt.Sprintf(":%d", r.GetPublicPort())
				default:
					if where == "" {
						where = "*"
					}
					where += r.GetPath()
				}
				eligible := 0
				var backends []string
				for _, b := range rs.GetBackends() {
					mark := ""
					switch {
					case b.GetEjectedUntil() != nil:
						mark = " (ejected)"
					case !b.GetEligible():
						mark = " (out)"
					default:
						eligible++
					}
					backends = append(backends, b.GetReplicaId()+"@"+b.GetAddress()+mark)
				}
				if r.GetRtype() == proxyv1.ResourceType_RESOURCE_TYPE_JOB || r.GetRtype() == proxyv1.ResourceType_RESOURCE_TYPE_CRON {
					backends = []string{"runs " + enumWord(r.GetRtype(), "RESOURCE_TYPE_")}
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%d/%d\t%.1f\t%s\n", r.GetDeployment(), r.GetService(), r.GetEndpoint(),
					enumWord(r.GetProtocol(), "PROTOCOL_"), enumWord(r.GetExpose(), "EXPOSE_"), where, eligible, len(rs.GetBackends()),
					rps[r.GetDeployment()+"/"+r.GetService()+"/"+r.GetEndpoint()], orDash(strings.Join(backends, ", ")))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}
