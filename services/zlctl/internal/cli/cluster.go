package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"strconv"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/encoding/protojson"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
)

// clusterClient connects to the local scheduler's ClusterService.
func (g *globals) clusterClient() (schedulerv1.ClusterServiceClient, func(), error) {
	cc, err := g.dial("scheduler")
	if err != nil {
		return nil, nil, err
	}
	return schedulerv1.NewClusterServiceClient(cc), func() { cc.Close() }, nil
}

// memberID formats a Raft member ID the way every zlctl command shows it.
func memberID(id uint64) string { return strconv.FormatUint(id, 16) }

// parseMemberID reads a member ID as `zlctl cluster members` shows it (hex,
// an optional 0x prefix).
func parseMemberID(s string) (uint64, error) {
	id, err := strconv.ParseUint(strings.TrimPrefix(strings.ToLower(s), "0x"), 16, 64)
	if err != nil || id == 0 {
		return 0, fmt.Errorf("member id %q: want the hex ID `zlctl cluster members` shows", s)
	}
	return id, nil
}

func newClusterCmd(g *globals) *cobra.Command {
	cluster := &cobra.Command{
		Use:   "cluster",
		Short: "Manage the scheduler cluster: its CA and members",
		Long: "A scheduler starts as a single-member cluster. `cluster init` creates the\n" +
			"cluster CA and opens the scheduler's peer port; `cluster add-member` on any\n" +
			"member writes a join bundle for a new scheduler, which starts with\n" +
			"--join FILE; `cluster remove-member` takes one out.",
	}
	cluster.AddCommand(newClusterInitCmd(g), newClusterMembersCmd(g), newClusterAddMemberCmd(g), newClusterRemoveMemberCmd(g))
	return cluster
}

func newClusterInitCmd(g *globals) *cobra.Command {
	var advertise string
	cmd := &cobra.Command{
		Use:   "init",
		Short: "Create the cluster CA and open this scheduler to other members",
		Long: "Creates the cluster CA and this scheduler's member certificate under its data\n" +
			"dir, starts serving Raft peers on its --peer-addr and records HOST:PORT (the\n" +
			"--advertise-addr flag here, else the scheduler's own) as the address other\n" +
			"members dial. Fails if the cluster is already initialised.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, closeFn, err := g.clusterClient()
			if err != nil {
				return err
			}
			defer closeFn()
			resp, err := client.InitCluster(cmd.Context(), &schedulerv1.InitClusterRequest{AdvertiseAddress: advertise})
			if err != nil {
				return g.rpcError("scheduler", err)
			}
			out := cmd.OutOrStdout()
			fmt.Fprintf(out, "cluster initialised\nmember:         %s\naddress:        %s\nCA fingerprint: sha256:%s\n",
				memberID(resp.GetMember().GetId()), resp.GetMember().GetAddress(), resp.GetCaFingerprint())
			fmt.Fprintln(out, "add a member with: zlctl cluster add-member HOST:PORT")
			return nil
		},
	}
	cmd.Flags().StringVar(&advertise, "advertise-addr", "", "HOST:PORT other members dial to reach this scheduler")
	return cmd
}

// clusterMemberRow is one member in `cluster members -o json`.
type clusterMemberRow struct {
	ID      string `json:"id"`
	Address string `json:"address"`
	Role    string `json:"role"` // leader, voter or learner
	Self    bool   `json:"self"`
}

type clusterMembersOutput struct {
	Self    string             `json:"self"`
	Leader  string             `json:"leader,omitempty"`
	Term    uint64             `json:"term"`
	Commit  uint64             `json:"commit_index"`
	Applied uint64             `json:"applied_index"`
	Members []clusterMemberRow `json:"members"`
}

func memberRole(m *schedulerv1.ClusterMember) string {
	switch {
	case m.GetLeader():
		return "leader"
	case m.GetLearner():
		return "learner"
	}
	return "voter"
}

func newClusterMembersCmd(g *globals) *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "members",
		Short: "List the cluster's members as this scheduler sees them",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			client, closeFn, err := g.clusterClient()
			if err != nil {
				return err
			}
			defer closeFn()
			if output != "table" && output != "json" {
				return fmt.Errorf("output %q: want table or json", output)
			}
			resp, err := client.ListMembers(cmd.Context(), &schedulerv1.ListMembersRequest{})
			if err != nil {
				return g.rpcError("scheduler", err)
			}
			res := clusterMembersOutput{
				Self: memberID(resp.GetSelfId()), Term: resp.GetTerm(),
				Commit: resp.GetCommitIndex(), Applied: resp.GetAppliedIndex(),
				Members: []clusterMemberRow{},
			}
			if resp.GetLeaderId() != 0 {
				res.Leader = memberID(resp.GetLeaderId())
			}
			for _, m := range resp.GetMembers() {
				res.Members = append(res.Members, clusterMemberRow{
					ID: memberID(m.GetId()), Address: m.GetAddress(), Role: memberRole(m), Self: m.GetSelf(),
				})
			}
			out := cmd.OutOrStdout()
			if output == "json" {
				enc := json.NewEncoder(out)
				enc.SetIndent("", "  ")
				return enc.Encode(res)
			}
			tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tADDRESS\tROLE\tSELF")
			for _, m := range res.Members {
				self := ""
				if m.Self {
					self = "*"
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", m.ID, orDash(m.Address), m.Role, self)
			}
			if err := tw.Flush(); err != nil {
				return err
			}
			leader := res.Leader
			if leader == "" {
				leader = "none"
			}
			fmt.Fprintf(out, "leader %s, term %d, commit %d, applied %d\n", leader, res.Term, res.Commit, res.Applied)
			return nil
		},
	}
	cmd.Flags().StringVarP(&output, "output", "o", "table", "output format: table or json")
	return cmd
}

func newClusterAddMemberCmd(g *globals) *cobra.Command {
	var bundlePath string
	cmd := &cobra.Command{
		Use:   "add-member HOST:PORT",
		Short: "Add a scheduler at HOST:PORT and write its join bundle",
		Long: "Adds a new member whose scheduler will serve Raft peers at HOST:PORT, and\n" +
			"writes its join bundle (its certificate and key, the cluster CA and the\n" +
			"current members) to FILE, readable only by you. Copy it to the new machine\n" +
			"and start its scheduler with --join FILE. The bundle is a secret: whoever\n" +
			"holds it can join the cluster. The new member counts towards the quorum\n" +
			"only once it has caught up.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if bundlePath != "" && bundlePath != "-" {
				if _, err := os.Stat(bundlePath); err == nil {
					return fmt.Errorf("bundle file %s already exists", bundlePath)
				}
			}
			client, closeFn, err := g.clusterClient()
			if err != nil {
				return err
			}
			defer closeFn()
			resp, err := client.AddMember(cmd.Context(), &schedulerv1.AddMemberRequest{Address: args[0]})
			if err != nil {
				return g.rpcError("scheduler", err)
			}
			b := resp.GetBundle()
			raw, err := protojson.MarshalOptions{Multiline: true, Indent: "  "}.Marshal(b)
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			if bundlePath == "-" {
				_, err := fmt.Fprintln(out, string(raw))
				return err
			}
			path := bundlePath
			if path == "" {
				path = "zlayer-join-" + memberID(b.GetMemberId()) + ".json"
			}
			if err := writeSecretFile(path, append(raw, '\n')); err != nil {
				return fmt.Errorf("member %s was added but its bundle was not written (%w); remove it with `zlctl cluster remove-member %s`",
					memberID(b.GetMemberId()), err, memberID(b.GetMemberId()))
			}
			fmt.Fprintf(out, "member %s added at %s\njoin bundle: %s\nstart the new scheduler with --join %s --peer-addr %s\n",
				memberID(b.GetMemberId()), b.GetAddress(), path, path, b.GetAddress())
			return nil
		},
	}
	cmd.Flags().StringVarP(&bundlePath, "bundle", "f", "", "write the join bundle here (default zlayer-join-<id>.json; - for stdout)")
	return cmd
}

// writeSecretFile creates path, readable only by its owner; it never
// overwrites.
func writeSecretFile(path string, data []byte) error {
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o600)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s already exists", path)
		}
		return err
	}
	if _, err := f.Write(data); err != nil {
		f.Close()
		return err
	}
	return f.Close()
}

func newClusterRemoveMemberCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "remove-member ID",
		Short: "Remove a member from the cluster",
		Long: "Removes member ID (hex, as `zlctl cluster members` shows it) through a Raft\n" +
			"configuration change. Its ID is refused from then on; to bring the machine\n" +
			"back, wipe its scheduler data dir and add it again.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			id, err := parseMemberID(args[0])
			if err != nil {
				return err
			}
			client, closeFn, err := g.clusterClient()
			if err != nil {
				return err
			}
			defer closeFn()
			if _, err := client.RemoveMember(cmd.Context(), &schedulerv1.RemoveMemberRequest{MemberId: id}); err != nil {
				return g.rpcError("scheduler", err)
			}
			fmt.Fprintf(cmd.OutOrStdout(), "member %s removed\n", memberID(id))
			return nil
		},
	}
}
