package cli

import (
	"fmt"
	"os"
	"path/filepath"
	"text/tabwriter"

	"github.com/spf13/cobra"

	"zlayer.dev/libs/testkit/fixtures"
	"zlayer.dev/libs/testkit/registry"
)

func newImageCmd(g *globals) *cobra.Command {
	img := &cobra.Command{Use: "image", Short: "Build test and demo images"}
	var (
		addr    string
		workDir string
	)
	build := &cobra.Command{
		Use:   "build-demo",
		Short: "Build the demo and fixture images from busybox-static and push them to a registry",
		Long: "Builds busybox, multilayer (whiteout, opaque dir, hardlink; OCI, Docker schema 2,\n" +
			"zstd and uncompressed variants), multiarch (an OCI index) and demo-http (busybox\n" +
			"httpd on :80 serving / and /health) with umoci, and pushes them with skopeo to the\n" +
			"plain-HTTP registry at --registry (start one with `devctl registry`).",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if workDir == "" {
				dir, err := os.MkdirTemp("", "zlayer-images-")
				if err != nil {
					return err
				}
				defer os.RemoveAll(dir)
				workDir = dir
			}
			images, err := fixtures.BuildAndPush(cmd.Context(), workDir, addr)
			if err != nil {
				return fmt.Errorf("build demo images: %w", err)
			}
			tw := tabwriter.NewWriter(g.stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "IMAGE\tDIGEST\tABOUT")
			for _, i := range images {
				fmt.Fprintf(tw, "%s\t%s\t%s\n", i.Ref, i.Digest, i.About)
			}
			return tw.Flush()
		},
	}
	build.Flags().StringVar(&addr, "registry", "127.0.0.1:5005", "registry host:port (plain HTTP)")
	build.Flags().StringVar(&workDir, "work-dir", "", "keep the OCI layouts here (default: a temporary directory)")
	img.AddCommand(build)
	return img
}

func newRegistryCmd(g *globals) *cobra.Command {
	var (
		addr string
		dir  string
	)
	cmd := &cobra.Command{
		Use:   "registry",
		Short: "Run Debian's docker-registry on 127.0.0.1 until Ctrl-C",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			reg, err := registry.Start(cmd.Context(), registry.Options{Dir: dir, Addr: addr})
			if err != nil {
				return err
			}
			fmt.Fprintf(g.stdout, "registry serving on http://%s (storage %s, log %s)\n", reg.Addr, dir, reg.Log)
			<-cmd.Context().Done()
			return reg.Stop()
		},
	}
	cmd.Flags().StringVar(&addr, "addr", "127.0.0.1:5005", "listen address")
	cmd.Flags().StringVar(&dir, "dir", filepath.Join(os.TempDir(), "zlayer-registry"), "storage and config directory")
	return cmd
}
