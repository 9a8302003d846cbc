package runner

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/containerd/console"
	gorunc "github.com/containerd/go-runc"
	specs "github.com/opencontainers/runtime-spec/specs-go"

	"zlayer.dev/libs/errkind"
)

// ExecSpec is a process to run inside a running container.
type ExecSpec struct {
	Args []string
	Env  []string // added to the container's environment
	Cwd  string   // "" means the container's
	Tty  bool
}

// ExecIO connects an exec'd process. With Tty, Stdout carries the
// terminal's output, Stderr is unused, and Resize receives window sizes.
type ExecIO struct {
	Stdin          io.Reader // may be nil
	Stdout, Stderr io.Writer
	Resize         <-chan console.WinSize
}

// Exec runs a process in container id (with the container's user,
// capabilities and seccomp profile) and returns its exit code.
func (rn *Runner) Exec(ctx context.Context, id string, es ExecSpec, sio ExecIO) (int, error) {
	if len(es.Args) == 0 {
		return -1, fmt.Errorf("exec: command: required: %w", errkind.Invalid)
	}
	rec, err := rn.Get(id)
	if err != nil {
		return -1, err
	}
	if rec.State != StateRunning {
		return -1, fmt.Errorf("exec in %s: container is %s: %w", id, rec.State, errkind.Precondition)
	}
	return rn.exec(ctx, id, es, sio)
}

// exec runs a process in container id, which runc has created (running, or
// created and not yet started: init steps run then).
func (rn *Runner) exec(ctx context.Context, id string, es ExecSpec, sio ExecIO) (int, error) {
	b, err := os.ReadFile(filepath.Join(rn.dir(id), "config.json"))
	if err != nil {
		return -1, fmt.Errorf("exec in %s: %w", id, err)
	}
	var cs specs.Spec
	if err := json.Unmarshal(b, &cs); err != nil {
		return -1, fmt.Errorf("exec in %s: config.json: %w", id, err)
	}
	p := *cs.Process
	p.Args = es.Args
	p.Env = append(append([]string(nil), p.Env...), es.Env...)
	p.Terminal = es.Tty
	if es.Cwd != "" {
		p.Cwd = es.Cwd
	}
	opts := &gorunc.ExecOpts{}
	if !es.Tty {
		if sio.Stdin != nil {
			// exec.Cmd would wait for a non-file stdin to reach EOF even
			// after the process exited; a pipe we feed ourselves it does not.
			pr, pw, err := os.Pipe()
			if err != nil {
				return -1, fmt.Errorf("exec in %s: %w", id, err)
			}
			defer pr.Close()
			src := sio.Stdin
			go func() { io.Copy(pw, src); pw.Close() }()
			sio.Stdin = pr
		}
		opts.IO = &execIO{s: sio}
		return exitCode(id, rn.runc.Exec(ctx, id, p, opts))
	}

	// A terminal: runc 1.1 accepts a console socket only when it detaches,
	// and then no one is left to report the exit code. So runc runs in the
	// foreground on a terminal of ours (a pty whose slave is its
	// controlling terminal); it makes the container's pty, copies between
	// the two and exits with the process's code. Resizing our pty sends
	// runc SIGWINCH, which it passes on.
	master, slavePath, err := console.NewPty()
	if err != nil {
		return -1, fmt.Errorf("exec in %s: pty: %w", id, err)
	}
	defer master.Close()
	slave, err := os.OpenFile(slavePath, os.O_RDWR|syscall.O_NOCTTY, 0)
	if err != nil {
		return -1, fmt.Errorf("exec in %s: pty: %w", id, err)
	}
	opts.ExtraArgs = []string{"--tty"}
	opts.IO = &execIO{s: ExecIO{Stdin: slave, Stdout: slave, Stderr: slave}, ctty: true}
	rc := make(chan error, 1)
	go func() { rc <- rn.runc.Exec(ctx, id, p, opts) }()
	if sio.Stdin != nil {
		go io.Copy(master, sio.Stdin)
	}
	if sio.Resize != nil {
		go func() {
			for ws := range sio.Resize {
				master.Resize(ws)
			}
		}()
	}
	out := make(chan struct{})
	go func() { io.Copy(sio.Stdout, master); close(out) }()
	err = <-rc
	// runc has exited: the slave's last holder is ours; closing it ends
	// the copy once the output buffered in the pty is read.
	slave.Close()
	<-out
	return exitCode(id, err)
}

func exitCode(id string, err error) (int, error) {
	if err == nil {
		return 0, nil
	}
	var ee *gorunc.ExitError
	if errors.As(err, &ee) {
		return ee.Status, nil
	}
	return -1, fmt.Errorf("exec in %s: runc exec: %w", id, err)
}

// execIO gives runc exec the caller's streams directly; exec.Cmd copies.
// With ctty, runc gets a new session whose controlling terminal is its
// stdin (a pty slave).
type execIO struct {
	s    ExecIO
	ctty bool
}

func (e *execIO) Close() error          { return nil }
func (e *execIO) Stdin() io.WriteCloser { return nil }
func (e *execIO) Stdout() io.ReadCloser { return nil }
func (e *execIO) Stderr() io.ReadCloser { return nil }
func (e *execIO) Set(cmd *exec.Cmd) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = e.s.Stdin, e.s.Stdout, e.s.Stderr
	if e.ctty {
		if cmd.SysProcAttr == nil {
			cmd.SysProcAttr = &syscall.SysProcAttr{}
		}
		cmd.SysProcAttr.Setsid, cmd.SysProcAttr.Setctty, cmd.SysProcAttr.Ctty = true, true, 0
	}
}
