package cli

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
)

// Join tokens and node joins (SPEC.md, network.join).

func newTokenCmd(g *globals) *cobra.Command {
	token := &cobra.Command{
		Use:   "token",
		Short: "Manage join tokens",
		Long: "A service whose network.join.mode is token accepts nodes that present one of\n" +
			"its join tokens (zlctl node join TOKEN on that node); placement then prefers\n" +
			"those nodes for the service. Tokens are secrets; they last until revoked or\n" +
			"the deployment is deleted.",
	}
	create := &cobra.Command{
		Use:   "create DEPLOYMENT/SERVICE",
		Short: "Make a join token for a service and print it",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dep, svc, err := splitTarget(args[0])
			if err != nil {
				return err
			}
			resp, err := callScheduler(cmd.Context(), g, schedulerv1.SchedulerServiceClient.CreateJoinToken, &schedulerv1.CreateJoinTokenRequest{Deployment: dep, Service: svc})
			if err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), resp.GetToken())
			return nil
		},
	}
	var output string
	ls := &cobra.Command{
		Use:   "ls [DEPLOYMENT]",
		Short: "List join tokens",
		Args:  cobra.MaximumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			js, err := asJSON(output)
			if err != nil {
				return err
			}
			req := &schedulerv1.ListJoinTokensRequest{}
			if len(args) == 1 {
				req.Deployment = args[0]
			}
			resp, err := callScheduler(cmd.Context(), g, schedulerv1.SchedulerServiceClient.ListJoinTokens, req)
			if err != nil {
				return err
			}
			if js {
				return printJSON(cmd.OutOrStdout(), resp)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "DEPLOYMENT\tTOKEN\tCREATED")
			for _, t := range resp.GetTokens() {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", t.GetDeployment(), t.GetToken(), t.GetCreatedAt().AsTime().Local().Format(time.DateTime))
			}
			return tw.Flush()
		},
	}
	ls.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	revoke := &cobra.Command{
		Use:   "revoke TOKEN",
		Short: "Revoke a join token (nodes that joined with it stay joined)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if _, err := callScheduler(cmd.Context(), g, schedulerv1.SchedulerServiceClient.RevokeJoinToken, &schedulerv1.RevokeJoinTokenRequest{Token: args[0]}); err != nil {
				return err
			}
			fmt.Fprintln(cmd.OutOrStdout(), "revoked")
			return nil
		},
	}
	token.AddCommand(create, ls, revoke)
	return token
}

func newNodeJoinCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "join TOKEN | DEPLOYMENT/SERVICE",
		Short: "Enrol this node for a service, so placement prefers it",
		Long: "Enrols the node zlctl runs on for a service: with a join token\n" +
			"(<key>:<service>, from zlctl token create) when the service's network.join.mode\n" +
			"is token, or by name when it is open. A closed service accepts no node.\n" +
			"A token of scope global enrols the node for every service of the deployment.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &schedulerv1.JoinServiceRequest{}
			if strings.Contains(args[0], ":") {
				req.Token = args[0]
			} else {
				dep, svc, err := splitTarget(args[0])
				if err != nil {
					return fmt.Errorf("%w, or a join token <key>:<service>", err)
				}
				req.Deployment, req.Service = dep, svc
			}
			resp, err := callScheduler(cmd.Context(), g, schedulerv1.SchedulerServiceClient.JoinService, req)
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "node %s joined %s\n", resp.GetNode(), resp.GetJoined())
			return nil
		},
	}
}

func newNodeLeaveCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "leave DEPLOYMENT/SERVICE",
		Short: "Take this node out of a service it joined (DEPLOYMENT/* for a global join)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			dep, svc, err := splitTarget(args[0])
			if err != nil {
				return err
			}
			if _, err := callScheduler(cmd.Context(), g, schedulerv1.SchedulerServiceClient.LeaveService, &schedulerv1.LeaveServiceRequest{Deployment: dep, Service: svc}); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "left %s\n", args[0])
			return nil
		},
	}
}
