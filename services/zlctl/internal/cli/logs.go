package cli

import (
	"errors"
	"fmt"
	"io"
	"strconv"
	"time"

	"github.com/spf13/cobra"
	"google.golang.org/protobuf/types/known/timestamppb"

	agentv1 "zlayer.dev/libs/api/zlayer/agent/v1"
)

// parseSince reads --since: a duration before now ("10m") or an RFC 3339
// time.
func parseSince(s string, now time.Time) (time.Time, error) {
	if d, err := time.ParseDuration(s); err == nil {
		if d < 0 {
			return time.Time{}, fmt.Errorf("--since %q: must not be negative", s)
		}
		return now.Add(-d), nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("--since %q: want a duration (10m) or an RFC 3339 time", s)
	}
	return t, nil
}

func newLogsCmd(g *globals) *cobra.Command {
	var (
		follow     bool
		since      string
		tail       string
		timestamps bool
	)
	cmd := &cobra.Command{
		Use:   "logs TARGET",
		Short: "Show a container's output",
		Long: "Prints a container's stdout and stderr (to this command's stdout and stderr).\n" +
			"TARGET is a container id or deployment/service[/index] (the lowest running\n" +
			"index when none is given), on any node of the cluster: the local scheduler\n" +
			"reaches the replica's node over the peer transport.",
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			req := &agentv1.StreamLogsRequest{Follow: follow}
			if since != "" {
				t, err := parseSince(since, time.Now())
				if err != nil {
					return err
				}
				req.Since = timestamppb.New(t)
			}
			if tail != "all" {
				n, err := strconv.Atoi(tail)
				if err != nil || n < 0 {
					return fmt.Errorf("--tail %q: want a number of lines or all", tail)
				}
				v := int32(n)
				req.Tail = &v
			}
			path, err := g.reach(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			defer path.close()
			next, err := path.logs(cmd.Context(), args[0], req)
			if err != nil {
				return g.rpcError(path.caller, err)
			}
			for {
				entries, err := next()
				if errors.Is(err, io.EOF) {
					return nil
				}
				if err != nil {
					if cmd.Context().Err() != nil {
						return nil // interrupted while following
					}
					return g.rpcError(path.caller, err)
				}
				for _, e := range entries {
					w := cmd.OutOrStdout()
					if e.GetStream() == agentv1.LogStream_LOG_STREAM_STDERR {
						w = cmd.ErrOrStderr()
					}
					line := e.GetText()
					if !e.GetPartial() {
						line = append(line, '\n')
					}
					if timestamps {
						fmt.Fprint(w, e.GetTime().AsTime().Format(time.RFC3339Nano)+" ")
					}
					if _, err := w.Write(line); err != nil {
						return err
					}
				}
			}
		},
	}
	cmd.Flags().BoolVarP(&follow, "follow", "f", false, "keep printing new output until the container exits")
	cmd.Flags().StringVar(&since, "since", "", "only output since this long ago (10m) or this RFC 3339 time")
	cmd.Flags().StringVar(&tail, "tail", "all", "only the last N lines (then follow)")
	cmd.Flags().BoolVarP(&timestamps, "timestamps", "t", false, "prefix each line with its time")
	return cmd
}
