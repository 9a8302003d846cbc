package cli

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"
	"google.golang.org/protobuf/encoding/protojson"
	"google.golang.org/protobuf/proto"

	registryv1 "zlayer.dev/libs/api/zlayer/registry/v1"
)

// newImageCmd is `zlctl image …`: images on the local node, through
// zlayer-registry.
func newImageCmd(g *globals) *cobra.Command {
	cmd := &cobra.Command{
		Use:   "image",
		Short: "Pull, list, inspect and remove images on this node",
	}
	cmd.AddCommand(
		newImagePullCmd(g),
		newImageLsCmd(g),
		newImageInspectCmd(g),
		newImageRmCmd(g),
		newImagePruneCmd(g),
		newImageLoginCmd(g),
	)
	return cmd
}

func imageRegistryClient(g *globals) (registryv1.RegistryServiceClient, func(), error) {
	cc, err := g.dial("registry")
	if err != nil {
		return nil, nil, err
	}
	return registryv1.NewRegistryServiceClient(cc), func() { cc.Close() }, nil
}

var imagePolicies = map[string]registryv1.PullPolicy{
	"always":         registryv1.PullPolicy_PULL_POLICY_ALWAYS,
	"if_not_present": registryv1.PullPolicy_PULL_POLICY_IF_NOT_PRESENT,
	"never":          registryv1.PullPolicy_PULL_POLICY_NEVER,
}

func newImagePullCmd(g *globals) *cobra.Command {
	policy := "always"
	cmd := &cobra.Command{
		Use:   "pull IMAGE",
		Short: "Pull an image (nginx, host:5000/app:1, host/app@sha256:…)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			pol, ok := imagePolicies[policy]
			if !ok {
				return fmt.Errorf("--policy %q: want always, if_not_present or never", policy)
			}
			c, done, err := imageRegistryClient(g)
			if err != nil {
				return err
			}
			defer done()
			stream, err := c.PullImage(cmd.Context(), &registryv1.PullImageRequest{Image: args[0], PullPolicy: pol})
			if err != nil {
				return err
			}
			out := cmd.OutOrStdout()
			var view imageProgressView = &imagePlainProgress{w: out, seen: map[string]registryv1.LayerState{}}
			if f, ok := out.(*os.File); ok && term.IsTerminal(int(f.Fd())) {
				view = &imageBarProgress{w: out, start: map[string]time.Time{}}
			}
			for {
				msg, err := stream.Recv()
				if errors.Is(err, io.EOF) {
					return errors.New("pull ended without a result")
				}
				if err != nil {
					return err
				}
				if len(msg.GetLayers()) > 0 {
					view.update(msg.GetLayers(), time.Now())
				}
				if img := msg.GetImage(); img != nil {
					view.finish()
					if msg.GetCached() {
						fmt.Fprintf(out, "%s is up to date\n", img.GetName())
					} else {
						fmt.Fprintf(out, "pulled %s\n", img.GetName())
					}
					fmt.Fprintf(out, "digest: %s\n", img.GetDigest())
					return nil
				}
			}
		},
	}
	cmd.Flags().StringVar(&policy, "policy", policy, "always, if_not_present or never")
	return cmd
}

type imageProgressView interface {
	update(layers []*registryv1.LayerProgress, now time.Time)
	finish()
}

func imageShortDigest(d string) string {
	d = strings.TrimPrefix(d, "sha256:")
	if len(d) > 12 {
		d = d[:12]
	}
	return d
}

func imageLayerState(s registryv1.LayerState) string {
	switch s {
	case registryv1.LayerState_LAYER_STATE_WAITING:
		return "waiting"
	case registryv1.LayerState_LAYER_STATE_DOWNLOADING:
		return "downloading"
	case registryv1.LayerState_LAYER_STATE_DONE:
		return "done"
	case registryv1.LayerState_LAYER_STATE_CACHED:
		return "already present"
	}
	return "?"
}

// imagePlainProgress writes one line per layer state change: for logs and pipes.
type imagePlainProgress struct {
	w    io.Writer
	seen map[string]registryv1.LayerState
}

func (p *imagePlainProgress) update(layers []*registryv1.LayerProgress, _ time.Time) {
	for _, l := range layers {
		if p.seen[l.GetDigest()] == l.GetState() || l.GetState() == registryv1.LayerState_LAYER_STATE_WAITING {
			continue
		}
		p.seen[l.GetDigest()] = l.GetState()
		fmt.Fprintf(p.w, "%s: %s (%s)\n", imageShortDigest(l.GetDigest()), imageLayerState(l.GetState()), imageBytes(l.GetSize()))
	}
}

func (p *imagePlainProgress) finish() {}

// imageBarProgress redraws one bar per layer, with bytes and speed, in place.
type imageBarProgress struct {
	w     io.Writer
	lines int
	start map[string]time.Time
	last  []*registryv1.LayerProgress
	now   time.Time
}

func (b *imageBarProgress) update(layers []*registryv1.LayerProgress, now time.Time) {
	b.last, b.now = layers, now
	if b.lines > 0 {
		fmt.Fprintf(b.w, "\x1b[%dA", b.lines) // back to the first bar
	}
	for _, l := range layers {
		if _, ok := b.start[l.GetDigest()]; !ok && l.GetState() == registryv1.LayerState_LAYER_STATE_DOWNLOADING {
			b.start[l.GetDigest()] = now
		}
		fmt.Fprintf(b.w, "\x1b[2K%s\n", b.line(l, now))
	}
	b.lines = len(layers)
}

func (b *imageBarProgress) line(l *registryv1.LayerProgress, now time.Time) string {
	const width = 30
	frac := 0.0
	if l.GetSize() > 0 {
		frac = float64(l.GetCurrent()) / float64(l.GetSize())
	}
	if frac > 1 {
		frac = 1
	}
	fill := int(frac * width)
	bar := strings.Repeat("=", fill)
	if fill < width {
		bar += ">" + strings.Repeat(" ", width-fill-1)
	}
	speed := ""
	if t, ok := b.start[l.GetDigest()]; ok && l.GetState() == registryv1.LayerState_LAYER_STATE_DOWNLOADING {
		if secs := now.Sub(t).Seconds(); secs > 0 {
			speed = imageBytes(int64(float64(l.GetCurrent())/secs)) + "/s"
		}
	}
	return fmt.Sprintf("%s [%s] %9s/%-9s %10s %s", imageShortDigest(l.GetDigest()), bar,
		imageBytes(l.GetCurrent()), imageBytes(l.GetSize()), speed, imageLayerState(l.GetState()))
}

func (b *imageBarProgress) finish() {}

func imageBytes(n int64) string {
	const unit = 1000
	if n < unit {
		return fmt.Sprintf("%dB", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f%cB", float64(n)/float64(div), "kMGTPE"[exp])
}

func newImageLsCmd(g *globals) *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "ls",
		Short: "List images stored on this node",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, done, err := imageRegistryClient(g)
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.ListImages(cmd.Context(), &registryv1.ListImagesRequest{})
			if err != nil {
				return err
			}
			if asJSON {
				return imagePrintJSON(cmd.OutOrStdout(), resp)
			}
			tw := tabwriter.NewWriter(cmd.OutOrStdout(), 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "NAME\tDIGEST\tSIZE\tCREATED")
			for _, img := range resp.GetImages() {
				created := "-"
				if img.GetCreated() != nil {
					created = img.GetCreated().AsTime().UTC().Format(time.RFC3339)
				}
				fmt.Fprintf(tw, "%s\tsha256:%s\t%s\t%s\n", img.GetName(), imageShortDigest(img.GetDigest()), imageBytes(img.GetSize()), created)
			}
			return tw.Flush()
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}

func imagePrintJSON(w io.Writer, m proto.Message) error {
	b, err := protojson.MarshalOptions{Multiline: true, Indent: "  ", EmitUnpopulated: false}.Marshal(m)
	if err != nil {
		return err
	}
	_, err = fmt.Fprintln(w, string(b))
	return err
}

func newImageInspectCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "inspect IMAGE",
		Short: "Show an image's digests, configuration and layers (JSON)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, done, err := imageRegistryClient(g)
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.InspectImage(cmd.Context(), &registryv1.InspectImageRequest{Image: args[0]})
			if err != nil {
				return err
			}
			return imagePrintJSON(cmd.OutOrStdout(), resp)
		},
	}
}

func newImageRmCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "rm IMAGE...",
		Short: "Forget images (their data goes with the next prune)",
		Args:  cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, done, err := imageRegistryClient(g)
			if err != nil {
				return err
			}
			defer done()
			var errs []error
			for _, a := range args {
				resp, err := c.RemoveImage(cmd.Context(), &registryv1.RemoveImageRequest{Image: a})
				if err != nil {
					errs = append(errs, fmt.Errorf("%s: %w", a, err))
					continue
				}
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s\n", resp.GetName())
			}
			return errors.Join(errs...)
		},
	}
}

func newImagePruneCmd(g *globals) *cobra.Command {
	return &cobra.Command{
		Use:   "prune",
		Short: "Delete blobs and layers no image or container uses",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			c, done, err := imageRegistryClient(g)
			if err != nil {
				return err
			}
			defer done()
			resp, err := c.PruneImages(cmd.Context(), &registryv1.PruneImagesRequest{})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "removed %d blobs and %d layers, freed %s\n",
				len(resp.GetRemovedBlobs()), len(resp.GetRemovedLayers()), imageBytes(resp.GetFreedBytes()))
			return nil
		},
	}
}

func newImageLoginCmd(g *globals) *cobra.Command {
	var user string
	var passwordStdin bool
	cmd := &cobra.Command{
		Use:   "login SERVER",
		Short: "Store credentials for a registry (checked against it first)",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if user == "" {
				return errors.New("--username is required")
			}
			password, err := imageReadPassword(cmd, passwordStdin)
			if err != nil {
				return err
			}
			c, done, err := imageRegistryClient(g)
			if err != nil {
				return err
			}
			defer done()
			ctx, cancel := context.WithTimeout(cmd.Context(), time.Minute)
			defer cancel()
			resp, err := c.Login(ctx, &registryv1.LoginRequest{Server: args[0], Username: user, Password: password})
			if err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "login to %s succeeded\n", resp.GetServer())
			return nil
		},
	}
	cmd.Flags().StringVarP(&user, "username", "u", "", "user name")
	cmd.Flags().BoolVar(&passwordStdin, "password-stdin", false, "read the password from standard input")
	return cmd
}

func imageReadPassword(cmd *cobra.Command, fromStdin bool) (string, error) {
	in := cmd.InOrStdin()
	if f, ok := in.(*os.File); ok && !fromStdin && term.IsTerminal(int(f.Fd())) {
		fmt.Fprint(cmd.ErrOrStderr(), "Password: ")
		b, err := term.ReadPassword(int(f.Fd()))
		fmt.Fprintln(cmd.ErrOrStderr())
		return string(b), err
	}
	if !fromStdin {
		return "", errors.New("no terminal to ask for the password: use --password-stdin")
	}
	line, err := bufio.NewReader(in).ReadString('\n')
	if err != nil && !errors.Is(err, io.EOF) {
		return "", err
	}
	return strings.TrimRight(line, "\r\n"), nil
}
