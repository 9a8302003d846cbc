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
	var sock *gorunc.Socket
	if es.Tty {
		if sock, err = gorunc.NewTempConsoleSocket(); err != nil {
			return -1, fmt.Errorf("exec in %s: console socket: %w", id, err)
		}
		defer sock.Close()
		opts.ConsoleSocket = sock
	} else {
		if sio.Stdin != nil {
			// exec.Cmd would wait for a non-file stdin to reach EOF even
			// after the process exited; a pipe we feed ourselves it does not.
			pr, pw, err := os.Pipe()
			if err != nil {
				return -1, fmt.Errorf("exec in %s: %w", id, err)
			}
			defer pr.Close()
			go func() { io.Copy(pw, sio.Stdin); pw.Close() }()
			sio.Stdin = pr
		}
		opts.IO = &execIO{sio}
	}
	type result struct{ err error }
	rc := make(chan result, 1)
	go func() { rc <- result{rn.runc.Exec(ctx, id, p, opts)} }()
	if es.Tty {
		con, err := sock.ReceiveMaster()
		if err != nil {
			r := <-rc
			return -1, fmt.Errorf("exec in %s: %w", id, errors.Join(err, r.err))
		}
		defer con.Close()
		if sio.Stdin != nil {
			go io.Copy(con, sio.Stdin)
		}
		if sio.Resize != nil {
			go func() {
				for ws := range sio.Resize {
					con.Resize(ws)
				}
			}()
		}
		out := make(chan struct{})
		go func() { io.Copy(sio.Stdout, con); close(out) }()
		r := <-rc
		// The terminal's output ends when the last process holding it
		// exits; the exec'd process has.
		con.Close()
		<-out
		return exitCode(id, r.err)
	}
	r := <-rc
	return exitCode(id, r.err)
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
type execIO struct{ s ExecIO }

func (e *execIO) Close() error          { return nil }
func (e *execIO) Stdin() io.WriteCloser { return nil }
func (e *execIO) Stdout() io.ReadCloser { return nil }
func (e *execIO) Stderr() io.ReadCloser { return nil }
func (e *execIO) Set(cmd *exec.Cmd) {
	cmd.Stdin, cmd.Stdout, cmd.Stderr = e.s.Stdin, e.s.Stdout, e.s.Stderr
}
