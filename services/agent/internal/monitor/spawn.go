package monitor

import (
	"bufio"
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

	"golang.org/x/sys/unix"
)

// Process is a running monitor, started by this agent or adopted after a
// restart.
type Process struct {
	Pid   int
	Start uint64    // start time in clock ticks since boot, to detect pid reuse
	cmd   *exec.Cmd // nil when adopted: then it is not our child
}

// StderrFile receives a monitor's own stderr (not the container's).
const StderrFile = "monitor.err"

// Spawn starts a monitor for o and waits until it reports: on success the
// container exists (created, not started) and its init pid is returned.
// On failure the error carries runc's message; the monitor has exited.
func Spawn(ctx context.Context, bin string, o Options) (*Process, int, error) {
	r, w, err := os.Pipe()
	if err != nil {
		return nil, 0, fmt.Errorf("spawn monitor: %w", err)
	}
	defer r.Close()
	errf, err := os.OpenFile(filepath.Join(o.Dir, StderrFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		w.Close()
		return nil, 0, fmt.Errorf("spawn monitor: %w", err)
	}
	defer errf.Close()
	cmd := exec.Command(bin, o.Args()...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GOMAXPROCS=1"}
	cmd.Stdout, cmd.Stderr = errf, errf
	cmd.ExtraFiles = []*os.File{w}
	// Its own session: no terminal signal and no process-group kill aimed
	// at the agent reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	err = cmd.Start()
	w.Close()
	if err != nil {
		return nil, 0, fmt.Errorf("spawn monitor %s: %w", bin, err)
	}
	p := &Process{Pid: cmd.Process.Pid, cmd: cmd}
	p.Start, _ = StartTime(p.Pid)

	type result struct {
		line string
		err  error
	}
	lc := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(r).ReadString('\n')
		lc <- result{line, err}
	}()
	var res result
	select {
	case res = <-lc:
	case <-ctx.Done():
		// The monitor goes on; the caller's cleanup deletes the container,
		// which ends it.
		return p, 0, fmt.Errorf("wait for monitor: %w", ctx.Err())
	}
	line := strings.TrimSpace(res.line)
	if rest, ok := strings.CutPrefix(line, "ok "); ok {
		f := strings.Fields(rest)
		if len(f) == 2 {
			if pid, err := strconv.Atoi(f[0]); err == nil {
				return p, pid, nil
			}
		}
		return p, 0, fmt.Errorf("monitor: bad report %q", line)
	}
	cmd.Wait()
	if msg, ok := strings.CutPrefix(line, "err "); ok {
		return nil, 0, errors.New(msg)
	}
	b, _ := os.ReadFile(filepath.Join(o.Dir, StderrFile))
	return nil, 0, fmt.Errorf("monitor exited without a report: %s", strings.TrimSpace(string(b)))
}

// Adopt finds a monitor started by an earlier agent. ok is false when it
// is gone (or its pid now belongs to another process).
func Adopt(pid int, start uint64) (p *Process, ok bool) {
	if pid <= 0 {
		return nil, false
	}
	st, err := StartTime(pid)
	if err != nil || st != start {
		return nil, false
	}
	return &Process{Pid: pid, Start: start}, true
}

// Wait blocks until the monitor has exited or ctx is done. It holds no
// thread while it waits: the monitor's pidfd sits in the Go netpoller.
func (p *Process) Wait(ctx context.Context) error {
	if err := WaitPid(ctx, p.Pid); err != nil {
		return err
	}
	if p.cmd != nil {
		p.cmd.Wait() // reap our child
	}
	return nil
}

// WaitPid waits, through a pidfd, for any process (child or not) to exit.
// A process that is already gone returns at once.
func WaitPid(ctx context.Context, pid int) error {
	fd, err := unix.PidfdOpen(pid, unix.PIDFD_NONBLOCK)
	if errors.Is(err, unix.ESRCH) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("pidfd_open %d: %w", pid, err)
	}
	f := os.NewFile(uintptr(fd), "pidfd")
	defer f.Close()
	rc, err := f.SyscallConn()
	if err != nil {
		return fmt.Errorf("pidfd %d: %w", pid, err)
	}
	stop := context.AfterFunc(ctx, func() { f.SetReadDeadline(time.Unix(1, 0)) })
	defer stop()
	err = rc.Read(func(fd uintptr) bool {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, _ := unix.Poll(fds, 0)
		return n > 0
	})
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if err != nil {
		return fmt.Errorf("wait pid %d: %w", pid, err)
	}
	return nil
}

// StartTime reads a process's start time (field 22 of /proc/<pid>/stat).
func StartTime(pid int) (uint64, error) {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, err
	}
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	if i < 0 {
		return 0, fmt.Errorf("/proc/%d/stat: no command field", pid)
	}
	f := strings.Fields(s[i+1:])
	// f[0] is field 3 (state); start time is field 22.
	if len(f) < 20 {
		return 0, fmt.Errorf("/proc/%d/stat: short", pid)
	}
	if f[0] == "Z" {
		return 0, fmt.Errorf("process %d is a zombie", pid)
	}
	return strconv.ParseUint(f[19], 10, 64)
}
