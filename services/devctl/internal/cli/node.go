package cli

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/spf13/cobra"
	"go.uber.org/zap"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"

	"zlayer.dev/libs/rpc"
	"zlayer.dev/services/devctl/internal/supervise"
)

// components are the daemons of a node. They start together: each dials
// the others lazily, so no order is needed.
var components = []string{"registry", "overlay", "agent", "scheduler", "proxy"}

// nodeFlags locate one node's directories.
type nodeFlags struct {
	node     string
	runDir   string
	dataRoot string
}

func (n *nodeFlags) register(cmd *cobra.Command) {
	cmd.Flags().StringVar(&n.node, "node", "", "node name; several named nodes can run on one host (default: the host name, using /run/zlayer)")
	cmd.Flags().StringVar(&n.runDir, "run-dir", "", "the node's run directory (default /run/zlayer, or /run/zlayer/NODE with --node)")
	cmd.Flags().StringVar(&n.dataRoot, "data-dir", "", "the node's data root; each daemon uses DIR/<component> (default /var/lib/zlayer, or /var/lib/zlayer/NODE with --node)")
}

// resolve fills the defaults.
func (n *nodeFlags) resolve() {
	if n.runDir == "" {
		n.runDir = "/run/zlayer"
		if n.node != "" {
			n.runDir = filepath.Join(n.runDir, n.node)
		}
	}
	if n.dataRoot == "" {
		n.dataRoot = "/var/lib/zlayer"
		if n.node != "" {
			n.dataRoot = filepath.Join(n.dataRoot, n.node)
		}
	}
	if n.node == "" {
		n.node, _ = os.Hostname()
	}
}

func (n *nodeFlags) pidFile() string { return filepath.Join(n.runDir, "devctl.pid") }

func newUpCmd(g *globals) *cobra.Command {
	var (
		nf       nodeFlags
		binDir   string
		extra    []string
		logLevel string
		demo     demoFlags
	)
	cmd := &cobra.Command{
		Use:   "up",
		Short: "Run a local node's five daemons until Ctrl-C or `devctl down`",
		Long: "Starts zlayer-registry, -overlay, -agent, -scheduler and -proxy as separate\n" +
			"processes, restarts any that dies (with backoff), and stops them all on\n" +
			"Ctrl-C, SIGTERM or `devctl down` with the same --node. Daemon logs go to\n" +
			"RUN_DIR/log/<component>.log.",
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nf.resolve()
			if binDir == "" {
				exe, err := os.Executable()
				if err != nil {
					return fmt.Errorf("find binaries: %w (pass --bin-dir)", err)
				}
				binDir = filepath.Dir(exe)
			}
			if err := os.MkdirAll(nf.runDir, 0o755); err != nil {
				return err
			}
			lock, err := rpc.AcquireLock(nf.pidFile())
			if err != nil {
				return fmt.Errorf("devctl up: %w", err)
			}
			defer func() {
				os.Remove(nf.pidFile()) // while still holding the lock
				lock.Release()
			}()
			ctx := cmd.Context()
			if demo.enabled {
				stop, err := demo.prepare(ctx, g, &nf)
				if err != nil {
					return err
				}
				defer stop()
				extra = append(extra, "registry:--insecure-registry="+demo.registry)
			}
			perComponent, err := parseExtra(extra)
			if err != nil {
				return err
			}
			logDir := filepath.Join(nf.runDir, "log")
			if err := os.MkdirAll(logDir, 0o755); err != nil {
				return err
			}
			var procs []supervise.Proc
			for _, c := range components {
				args := []string{
					"--node", nf.node, "--run-dir", nf.runDir,
					"--data-dir", filepath.Join(nf.dataRoot, c),
					"--log-format", "console", "--log-level", logLevel,
				}
				procs = append(procs, supervise.Proc{
					Name: c,
					Path: filepath.Join(binDir, "zlayer-"+c),
					Args: append(args, perComponent[c]...),
					Log:  filepath.Join(logDir, c+".log"),
				})
			}
			log := g.log.With(zap.String("node", nf.node))
			ready := make(chan struct{})
			go func() {
				if waitServing(ctx, nf.runDir, 60*time.Second) == nil {
					close(ready)
				}
			}()
			// The daemons stop when supCtx ends: after the demo is cleaned up.
			supCtx, stopDaemons := context.WithCancel(context.WithoutCancel(ctx))
			defer stopDaemons()
			zlctl := func(args ...string) error {
				c := exec.CommandContext(supCtx, filepath.Join(binDir, "zlctl"), append([]string{"--run-dir", nf.runDir}, args...)...)
				c.Stdout, c.Stderr = g.stdout, g.stderr
				return c.Run()
			}
			go func() {
				defer stopDaemons()
				select {
				case <-ready:
				case <-ctx.Done():
					return
				}
				fmt.Fprintf(g.stdout, "node %s up: run dir %s, data %s, logs %s\n", nf.node, nf.runDir, nf.dataRoot, logDir)
				_ = zlctl("node", "status") // it prints its own verdict
				if demo.enabled {
					demo.run(g, zlctl)
				}
				<-ctx.Done()
				if demo.enabled {
					demo.cleanup(g, zlctl)
				}
			}()
			err = supervise.Run(supCtx, log, procs, supervise.Options{})
			if err == nil {
				fmt.Fprintf(g.stdout, "node %s stopped\n", nf.node)
			}
			return err
		},
	}
	nf.register(cmd)
	cmd.Flags().StringVar(&binDir, "bin-dir", "", "directory of the zlayer-* binaries (default: devctl's own directory)")
	cmd.Flags().StringArrayVar(&extra, "arg", nil, "extra flag for one daemon, as COMPONENT:--flag=value (repeatable)")
	cmd.Flags().StringVar(&logLevel, "log-level", "info", "daemons' log level")
	demo.register(cmd)
	return cmd
}

// parseExtra splits --arg values of the form component:--flag=value.
func parseExtra(extra []string) (map[string][]string, error) {
	out := map[string][]string{}
	for _, e := range extra {
		c, flag, ok := strings.Cut(e, ":")
		if !ok || !strings.HasPrefix(flag, "-") {
			return nil, fmt.Errorf("--arg %q: want COMPONENT:--flag=value", e)
		}
		known := false
		for _, k := range components {
			known = known || k == c
		}
		if !known {
			return nil, fmt.Errorf("--arg %q: unknown component %q (want one of %s)", e, c, strings.Join(components, ", "))
		}
		out[c] = append(out[c], flag)
	}
	return out, nil
}

// waitServing polls every daemon's health until all are SERVING.
func waitServing(ctx context.Context, runDir string, timeout time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	for _, c := range components {
		cc, err := rpc.Dial(rpc.SocketPath(runDir, c))
		if err != nil {
			return err
		}
		for {
			cctx, ccancel := context.WithTimeout(ctx, time.Second)
			r, err := healthpb.NewHealthClient(cc).Check(cctx, &healthpb.HealthCheckRequest{})
			ccancel()
			if err == nil && r.GetStatus() == healthpb.HealthCheckResponse_SERVING {
				break
			}
			select {
			case <-ctx.Done():
				cc.Close()
				return fmt.Errorf("%s not serving: %w", c, ctx.Err())
			case <-time.After(100 * time.Millisecond):
			}
		}
		cc.Close()
	}
	return nil
}

func newDownCmd(g *globals) *cobra.Command {
	var nf nodeFlags
	cmd := &cobra.Command{
		Use:   "down",
		Short: "Stop a node started with `devctl up`",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			nf.resolve()
			b, err := os.ReadFile(nf.pidFile())
			if errors.Is(err, os.ErrNotExist) {
				fmt.Fprintf(g.stdout, "node %s is not running (no %s)\n", nf.node, nf.pidFile())
				return nil
			}
			if err != nil {
				return err
			}
			// The pid is only devctl's while devctl holds the file's lock: a
			// lock we can take means the node is not running (and the pid
			// may belong to something else by now).
			if lock, err := rpc.AcquireLock(nf.pidFile()); err == nil {
				os.Remove(nf.pidFile())
				lock.Release()
				fmt.Fprintf(g.stdout, "node %s is not running (stale %s removed)\n", nf.node, nf.pidFile())
				return nil
			}
			pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
			if err != nil {
				return fmt.Errorf("%s: bad pid %q", nf.pidFile(), b)
			}
			if err := syscall.Kill(pid, syscall.SIGTERM); err != nil {
				if errors.Is(err, syscall.ESRCH) {
					fmt.Fprintf(g.stdout, "node %s is not running (devctl pid %d is gone)\n", nf.node, pid)
					return nil
				}
				return fmt.Errorf("signal devctl %d: %w", pid, err)
			}
			deadline := time.Now().Add(30 * time.Second)
			for syscall.Kill(pid, 0) == nil {
				if time.Now().After(deadline) {
					return fmt.Errorf("devctl %d still running after 30s", pid)
				}
				select {
				case <-cmd.Context().Done():
					return cmd.Context().Err()
				case <-time.After(100 * time.Millisecond):
				}
			}
			fmt.Fprintf(g.stdout, "node %s stopped\n", nf.node)
			return nil
		},
	}
	nf.register(cmd)
	return cmd
}
