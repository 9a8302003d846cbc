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

// Pending is a monitor that has been started and waits for its go-ahead
// (Begin) before it calls runc.
type Pending struct {
	*Process
	dir    string
	report *os.File // read end of the monitor's report pipe
	gate   *os.File // write end of the monitor's gate pipe
}

// Start execs a monitor for o. It returns as soon as the monitor runs;
// the monitor sets itself up and then waits for Begin, so the exec
// overlaps with whatever the agent still has to prepare. Every Pending
// must end in Begin or Abort.
func Start(bin string, o Options) (*Pending, error) {
	rr, rw, err := os.Pipe()
	if err != nil {
		return nil, fmt.Errorf("start monitor: %w", err)
	}
	defer rw.Close()
	gr, gw, err := os.Pipe()
	if err != nil {
		rr.Close()
		return nil, fmt.Errorf("start monitor: %w", err)
	}
	defer gr.Close()
	errf, err := os.OpenFile(filepath.Join(o.Dir, StderrFile), os.O_WRONLY|os.O_CREATE|os.O_APPEND, 0o640)
	if err != nil {
		rr.Close()
		gw.Close()
		return nil, fmt.Errorf("start monitor: %w", err)
	}
	defer errf.Close()
	cmd := exec.Command(bin, o.Args()...)
	cmd.Env = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin", "GOMAXPROCS=1"}
	cmd.Stdout, cmd.Stderr = errf, errf
	cmd.ExtraFiles = []*os.File{rw, gr} // SyncFD, GateFD
	// Its own session: no terminal signal and no process-group kill aimed
	// at the agent reaches it.
	cmd.SysProcAttr = &syscall.SysProcAttr{Setsid: true}
	if err := cmd.Start(); err != nil {
		rr.Close()
		gw.Close()
		return nil, fmt.Errorf("start monitor %s: %w", bin, err)
	}
	p := &Process{Pid: cmd.Process.Pid, cmd: cmd}
	p.Start, _ = StartTime(p.Pid)
	return &Pending{Process: p, dir: o.Dir, report: rr, gate: gw}, nil
}

// Begin lets the monitor call runc and waits until it reports: on success
// the container exists (created, or running when Options.Start) and its
// init pid is returned. On failure the error carries runc's message and
// the monitor has exited, except when ctx ends first (or had ended: the
// go-ahead is given all the same, and Begin returns at once): then the
// monitor goes on with runc, finds its report unread (the pipe is closed
// when Begin returns), deletes any container it made and exits. The
// caller waits for that exit before it removes what the container uses.
func (pd *Pending) Begin(ctx context.Context) (pid int, err error) {
	defer pd.report.Close()
	// A monitor that failed to set up has already exited: the write fails
	// and its report says why.
	pd.Go()
	if err := ctx.Err(); err != nil {
		return 0, fmt.Errorf("wait for monitor: %w", err)
	}
	type result struct {
		line string
		err  error
	}
	lc := make(chan result, 1)
	go func() {
		line, err := bufio.NewReader(pd.report).ReadString('\n')
		lc <- result{line, err}
	}()
	var res result
	select {
	case res = <-lc:
	case <-ctx.Done():
		return 0, fmt.Errorf("wait for monitor: %w", ctx.Err())
	}
	line := strings.TrimSpace(res.line)
	if rest, ok := strings.CutPrefix(line, "ok "); ok {
		f := strings.Fields(rest)
		if len(f) == 2 {
			if pid, err := strconv.Atoi(f[0]); err == nil {
				return pid, nil
			}
		}
		return 0, fmt.Errorf("monitor: bad report %q", line)
	}
	pd.cmd.Wait()
	if msg, ok := strings.CutPrefix(line, "err "); ok {
		return 0, errors.New(msg)
	}
	b, _ := os.ReadFile(filepath.Join(pd.dir, StderrFile))
	return 0, fmt.Errorf("monitor exited without a report: %s", strings.TrimSpace(string(b)))
}

// Go gives the monitor its go-ahead and returns without waiting for its
// report; Begin does this first. It is exported for tests that stand in
// for an agent killed right after the go-ahead (Go, then Close).
func (pd *Pending) Go() {
	pd.gate.WriteString(goLine) // a monitor that already exited: ignored, its report says why
	pd.gate.Close()
}

// Close closes the agent's ends of both pipes without waiting for the
// monitor, as the agent's death does. A monitor without its go-ahead then
// exits without touching runc; one that has it deletes any container it
// makes, since its report cannot be delivered.
func (pd *Pending) Close() {
	pd.gate.Close()
	pd.report.Close()
}

// Abort withdraws the go-ahead from a monitor that has not begun: it
// exits without touching runc, and Abort waits for it.
func (pd *Pending) Abort() {
	pd.Close()
	pd.cmd.Wait()
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
	if p.cmd != nil && p.cmd.ProcessState != nil {
		return nil // our child, already reaped
	}
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
