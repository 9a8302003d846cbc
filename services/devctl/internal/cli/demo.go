package cli

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"github.com/spf13/cobra"

	"zlayer.dev/libs/testkit/fixtures"
	"zlayer.dev/libs/testkit/registry"
)

// demoFlags drive `devctl up --demo`: a local registry with the demo
// images, and a deployment of the demo file once the node is up.
type demoFlags struct {
	enabled  bool
	file     string
	registry string
}

func (d *demoFlags) register(cmd *cobra.Command) {
	cmd.Flags().BoolVar(&d.enabled, "demo", false, "also run a local registry with the demo images and deploy --demo-file")
	cmd.Flags().StringVar(&d.file, "demo-file", "deploy/examples/demo.yaml", "the deployment file --demo deploys")
	cmd.Flags().StringVar(&d.registry, "demo-registry", "127.0.0.1:5005", "where --demo runs its registry (the demo file names this address)")
}

// prepare starts the registry (unless one already serves there) and pushes
// the demo images. The returned function stops the registry.
func (d *demoFlags) prepare(ctx context.Context, g *globals, nf *nodeFlags) (func(), error) {
	if _, err := os.Stat(d.file); err != nil {
		return nil, fmt.Errorf("--demo-file: %w", err)
	}
	dir := filepath.Join(nf.dataRoot, "demo-registry")
	reg, err := registry.Start(ctx, registry.Options{Dir: dir, Addr: d.registry})
	if err != nil {
		return nil, fmt.Errorf("demo registry on %s: %w", d.registry, err)
	}
	fmt.Fprintf(g.stdout, "demo registry serving on http://%s\n", reg.Addr)
	work, err := os.MkdirTemp("", "zlayer-demo-")
	if err != nil {
		reg.Stop()
		return nil, err
	}
	defer os.RemoveAll(work)
	images, err := fixtures.BuildAndPush(ctx, work, reg.Addr)
	if err != nil {
		reg.Stop()
		return nil, fmt.Errorf("build demo images: %w", err)
	}
	fmt.Fprintf(g.stdout, "pushed %d demo images\n", len(images))
	return func() { _ = reg.Stop() }, nil
}

// run deploys the demo file and shows the status.
func (d *demoFlags) run(g *globals, zlctl func(args ...string) error) {
	if err := zlctl("deploy", d.file); err != nil {
		fmt.Fprintf(g.stderr, "devctl: deploy %s: %v\n", d.file, err)
	}
	_ = zlctl("status")
	fmt.Fprintln(g.stdout, "\nthe node is up; Ctrl-C deletes the demo deployment and stops it")
}

// cleanup deletes what the demo deployed, bounded in time.
func (d *demoFlags) cleanup(g *globals, zlctl func(args ...string) error) {
	fmt.Fprintln(g.stdout, "deleting the demo deployment")
	done := make(chan struct{})
	go func() {
		defer close(done)
		_ = zlctl("delete", "demo", "--wait")
	}()
	select {
	case <-done:
	case <-time.After(60 * time.Second):
		fmt.Fprintln(g.stderr, "devctl: demo deployment not deleted within 60s; stopping the node anyway")
	}
}
