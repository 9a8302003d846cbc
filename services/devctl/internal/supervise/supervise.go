// Package supervise keeps a set of processes running: each is started in its
// own process group, restarted with exponential backoff when it dies, and
// stopped with SIGTERM (then SIGKILL after a grace period) when the context
// ends. It does not know what the processes are.
package supervise

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"sync"
	"syscall"
	"time"

	"go.uber.org/zap"
)

// Proc is one supervised process.
type Proc struct {
	Name string   // for logs
	Path string   // executable
	Args []string // arguments, without argv[0]
	Log  string   // file that receives the process's stdout and stderr
}

// Options tune supervision; zero values take the defaults.
type Options struct {
	MinBackoff time.Duration // first restart delay; default 500ms
	MaxBackoff time.Duration // restart delay cap; default 30s
	StableRun  time.Duration // a run this long resets the backoff; default 10s
	StopGrace  time.Duration // SIGTERM→SIGKILL; default 15s
	// OnStart, if set, is called each time a process starts.
	OnStart func(name string, pid int)
}

func (o *Options) defaults() {
	if o.MinBackoff == 0 {
		o.MinBackoff = 500 * time.Millisecond
	}
	if o.MaxBackoff == 0 {
		o.MaxBackoff = 30 * time.Second
	}
	if o.StableRun == 0 {
		o.StableRun = 10 * time.Second
	}
	if o.StopGrace == 0 {
		o.StopGrace = 15 * time.Second
	}
}

// Run supervises procs until ctx is done, then stops them all and returns.
// It returns an error only when a binary is missing at the start; later
// failures to start and deaths are retried with backoff.
func Run(ctx context.Context, log *zap.Logger, procs []Proc, opts Options) error {
	opts.defaults()
	for _, p := range procs {
		if _, err := os.Stat(p.Path); err != nil {
			return fmt.Errorf("%s: %w", p.Name, err)
		}
	}
	var wg sync.WaitGroup
	for _, p := range procs {
		wg.Add(1)
		go func() {
			defer wg.Done()
			keep(ctx, log.With(zap.String("process", p.Name)), p, opts)
		}()
	}
	wg.Wait()
	return nil
}

// keep runs p again and again until ctx is done.
func keep(ctx context.Context, log *zap.Logger, p Proc, opts Options) {
	backoff := opts.MinBackoff
	for {
		started := time.Now()
		cmd, err := start(p)
		if err != nil {
			// The binary may be being replaced (make build): try again.
			log.Warn("process did not start; retrying", zap.Error(err), zap.Duration("after", backoff))
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, opts.MaxBackoff)
			continue
		}
		log.Info("process started", zap.Int("pid", cmd.Process.Pid))
		if opts.OnStart != nil {
			opts.OnStart(p.Name, cmd.Process.Pid)
		}
		exited := make(chan error, 1)
		go func() { exited <- cmd.Wait() }()
		select {
		case <-ctx.Done():
			stop(log, cmd, exited, opts.StopGrace)
			return
		case err := <-exited:
			if time.Since(started) >= opts.StableRun {
				backoff = opts.MinBackoff
			}
			log.Warn("process exited; restarting", zap.Error(err), zap.Duration("after", backoff))
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(backoff*2, opts.MaxBackoff)
		}
	}
}

func start(p Proc) (*exec.Cmd, error) {
	cmd := exec.Command(p.Path, p.Args...)
	// Own process group: a Ctrl-C on the terminal reaches devctl only, which
	// then stops each daemon with SIGTERM and a grace period.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGTERM}
	if p.Log != "" {
		f, err := os.OpenFile(p.Log, os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
		if err != nil {
			return nil, err
		}
		defer f.Close() // the child keeps its own descriptor
		cmd.Stdout, cmd.Stderr = f, f
	}
	if err := cmd.Start(); err != nil {
		return nil, err
	}
	return cmd, nil
}

func stop(log *zap.Logger, cmd *exec.Cmd, exited <-chan error, grace time.Duration) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	select {
	case err := <-exited:
		var ee *exec.ExitError
		if err != nil && !errors.As(err, &ee) {
			log.Warn("process wait failed", zap.Error(err))
		}
		log.Info("process stopped")
	case <-time.After(grace):
		log.Warn("process ignored SIGTERM; killing", zap.Duration("grace", grace))
		_ = cmd.Process.Kill()
		<-exited
	}
}
