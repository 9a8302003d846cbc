package monitor

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"os/signal"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"time"

	runc "github.com/containerd/go-runc"
	"golang.org/x/sys/unix"

	"zlayer.dev/services/agent/internal/atomicfile"
	"zlayer.dev/services/agent/internal/logs"
)

// SyncFD is the file descriptor (the first extra file) on which a monitor
// reports to the agent that started it: one line, "ok <container pid>
// <monitor pid>" or "err <message>".
const SyncFD = 3

// GateFD is the file descriptor (the second extra file) on which a monitor,
// once set up, waits for the agent's go-ahead before it calls runc: the
// line "go". The agent starts the monitor early, while it still prepares
// the root filesystem, bundle and network, and sends "go" when they are
// ready. Anything else, or end of file (the agent gave up, or died), makes
// the monitor exit without having made a container.
const GateFD = 4

// goLine is the go-ahead on GateFD.
const goLine = "go\n"

// drainTimeout bounds how long a monitor waits, after the container's init
// exited, for the log pipes to close. Every process of the container dies
// with its init (a pid namespace), so this only matters if something else
// holds a pipe open.
const drainTimeout = 2 * time.Second

// Main runs a monitor and returns its exit code. It is the whole of
// cmd/zlayer-monitor.
func Main(args []string) int {
	runtime.GOMAXPROCS(1)
	// The runtime has read it (the agent sets it, so that the monitor
	// starts with one P); runc, which inherits the environment, must not:
	// it starts a container several milliseconds slower with one.
	os.Unsetenv("GOMAXPROCS")
	debug.SetGCPercent(25)
	syncf := os.NewFile(SyncFD, "sync")
	// report sends the one report line. It fails (EPIPE: SIGPIPE is
	// ignored) when the agent that started the monitor is gone or gave up
	// waiting; only the ok report needs to act on that.
	report := func(format string, a ...any) error {
		if syncf == nil {
			return errors.New("report already sent")
		}
		_, err := fmt.Fprintf(syncf, format+"\n", a...)
		syncf.Close()
		syncf = nil
		return err
	}
	o, err := ParseArgs(args)
	if err != nil {
		report("err monitor arguments: %s", oneLine(err.Error()))
		return 2
	}
	signal.Ignore(syscall.SIGINT, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGPIPE)
	if err := unix.Prctl(unix.PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0); err != nil {
		report("err set child subreaper: %s", err)
		return 1
	}
	rp := newReaper()
	runc.Monitor = rp
	go rp.loop()

	w, err := logs.NewWriter(o.Log, o.LogMax, o.LogKeep)
	if err != nil {
		report("err %s", oneLine(err.Error()))
		return 1
	}
	pio, err := runc.NewPipeIO(0, 0, func(io *runc.IOOption) { io.OpenStdin = false })
	if err != nil {
		report("err create pipes: %s", oneLine(err.Error()))
		return 1
	}
	var copiers sync.WaitGroup
	copiers.Add(2)
	go func() { defer copiers.Done(); w.Copy(logs.Stdout, pio.Stdout()) }()
	go func() { defer copiers.Done(); w.Copy(logs.Stderr, pio.Stderr()) }()

	if !waitGate() {
		report("err the agent withdrew before the container was made")
		pio.Close()
		return 1
	}
	r := &runc.Runc{Command: o.Runc, Root: o.RuncRoot, Log: filepath.Join(o.Dir, RuncLogFile), LogFormat: runc.JSON}
	pidFile := filepath.Join(o.Dir, PidFile)
	verb := "create"
	if o.Start {
		// One runc invocation: create and start. The container's stdio
		// ends are ours to close once runc has handed them over (go-runc
		// does this itself for Create only).
		verb = "run"
		_, err = r.Run(context.Background(), o.ID, o.Bundle, &runc.CreateOpts{IO: pio, PidFile: pidFile, Detach: true})
		if c, ok := pio.(runc.StartCloser); ok {
			if cerr := c.CloseAfterStart(); err == nil && cerr != nil {
				err = fmt.Errorf("close container stdio: %w", cerr)
			}
		}
	} else {
		err = r.Create(context.Background(), o.ID, o.Bundle, &runc.CreateOpts{IO: pio, PidFile: pidFile})
	}
	if err != nil {
		msg := runcError(filepath.Join(o.Dir, RuncLogFile))
		if msg == "" {
			msg = err.Error()
		}
		report("err runc %s: %s", verb, oneLine(msg))
		pio.Close()
		return 1
	}
	b, err := os.ReadFile(pidFile)
	pid, perr := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || perr != nil {
		report("err read container pid file: %v%v", err, perr)
		return 1
	}
	exited := rp.claim(pid)
	if err := report("ok %d %d", pid, os.Getpid()); err != nil {
		// Nobody will learn of this container: the agent died after its
		// go-ahead (the line was still in the pipe), or stopped waiting
		// for this report. Its record, if any, still says "creating", and
		// whoever cleans that up waits for this monitor to exit; the
		// container must not outlive it.
		withdraw(r, o.ID, exited, err)
		pio.Close()
		return 1
	}

	ws := <-exited
	at := time.Now()
	drained := make(chan struct{})
	go func() { copiers.Wait(); close(drained) }()
	select {
	case <-drained:
	case <-time.After(drainTimeout):
	}
	w.Close()
	e := Exit{Pid: pid, At: at.UTC()}
	switch {
	case ws.Signaled():
		e.Signal = int(ws.Signal())
		e.Code = 128 + e.Signal
	default:
		e.Code = ws.ExitStatus()
	}
	if o.MemCgroup != "" {
		e.OOMKills = oomKills(o.MemCgroup)
		e.OOMKilled = e.Signal == int(syscall.SIGKILL) && e.OOMKills > 0
	}
	out, _ := json.Marshal(e)
	if err := atomicfile.Write(filepath.Join(o.Dir, ExitFile), out, 0o644); err != nil {
		fmt.Fprintf(os.Stderr, "zlayer-monitor: write exit file: %v\n", err)
		return 1
	}
	return 0
}

// withdraw deletes a container the agent will never know of (it could not
// be told: reportErr) and waits, for at most drainTimeout, for its init
// to be reaped.
func withdraw(r *runc.Runc, id string, exited <-chan unix.WaitStatus, reportErr error) {
	fmt.Fprintf(os.Stderr, "zlayer-monitor: container %s: report to the agent: %v; deleting the container\n", id, reportErr)
	ctx, cancel := context.WithTimeout(context.Background(), withdrawTimeout)
	defer cancel()
	if err := r.Delete(ctx, id, &runc.DeleteOpts{Force: true}); err != nil {
		fmt.Fprintf(os.Stderr, "zlayer-monitor: container %s: runc delete: %v\n", id, err)
	}
	select {
	case <-exited:
	case <-time.After(drainTimeout):
	}
}

// withdrawTimeout bounds the runc delete of a container nobody was told of.
const withdrawTimeout = 30 * time.Second

// waitGate waits for the agent's go-ahead on GateFD.
func waitGate() bool {
	f := os.NewFile(GateFD, "gate")
	if f == nil {
		return false
	}
	defer f.Close()
	line, err := bufio.NewReader(f).ReadString('\n')
	return err == nil && line == goLine
}

// oneLine keeps an error message on the sync pipe's single line.
func oneLine(s string) string { return strings.ReplaceAll(strings.TrimSpace(s), "\n", "; ") }

// runcError returns the last error runc logged (JSON log format).
func runcError(path string) string {
	b, err := os.ReadFile(path)
	if err != nil {
		return ""
	}
	var last string
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		var l struct{ Level, Msg string }
		if json.Unmarshal(sc.Bytes(), &l) == nil && (l.Level == "error" || l.Level == "fatal") {
			last = l.Msg
		}
	}
	return last
}

// oomKills reads oom_kill from a cgroup v1 memory.oom_control.
func oomKills(dir string) uint64 {
	b, err := os.ReadFile(filepath.Join(dir, "memory.oom_control"))
	if err != nil {
		return 0
	}
	for _, l := range strings.Split(string(b), "\n") {
		if v, ok := strings.CutPrefix(l, "oom_kill "); ok {
			n, _ := strconv.ParseUint(strings.TrimSpace(v), 10, 64)
			return n
		}
	}
	return 0
}

// reaper is go-runc's ProcessMonitor for a subreaper: it alone calls wait4,
// for every child, and hands each exit to whoever waits for that pid. The
// container's init becomes our child when runc exits, and may exit before
// we know its pid, so unclaimed exits are kept until claimed.
type reaper struct {
	mu      sync.Mutex
	waiting map[int]chan unix.WaitStatus
	early   map[int]unix.WaitStatus
	sigs    chan os.Signal
}

func newReaper() *reaper {
	rp := &reaper{
		waiting: map[int]chan unix.WaitStatus{},
		early:   map[int]unix.WaitStatus{},
		sigs:    make(chan os.Signal, 1),
	}
	signal.Notify(rp.sigs, syscall.SIGCHLD)
	return rp
}

func (rp *reaper) loop() {
	for range rp.sigs {
		for {
			var ws unix.WaitStatus
			pid, err := unix.Wait4(-1, &ws, unix.WNOHANG, nil)
			if err == unix.EINTR {
				continue
			}
			if err != nil || pid <= 0 {
				break
			}
			rp.mu.Lock()
			if ch, ok := rp.waiting[pid]; ok {
				delete(rp.waiting, pid)
				ch <- ws
			} else {
				rp.early[pid] = ws
			}
			rp.mu.Unlock()
		}
	}
}

// claim returns a channel that receives pid's exit status.
func (rp *reaper) claim(pid int) chan unix.WaitStatus {
	ch := make(chan unix.WaitStatus, 1)
	rp.mu.Lock()
	defer rp.mu.Unlock()
	if ws, ok := rp.early[pid]; ok {
		delete(rp.early, pid)
		ch <- ws
		return ch
	}
	rp.waiting[pid] = ch
	return ch
}

// Start starts c and registers it before any exit can be reaped.
func (rp *reaper) Start(c *exec.Cmd) (chan runc.Exit, error) {
	rp.mu.Lock()
	if err := c.Start(); err != nil {
		rp.mu.Unlock()
		return nil, err
	}
	ch := make(chan unix.WaitStatus, 1)
	rp.waiting[c.Process.Pid] = ch
	rp.mu.Unlock()
	// A SIGCHLD may have been coalesced with one before we registered.
	select {
	case rp.sigs <- syscall.SIGCHLD:
	default:
	}
	out := make(chan runc.Exit, 1)
	go func() {
		ws := <-ch
		status := ws.ExitStatus()
		if ws.Signaled() {
			status = 128 + int(ws.Signal())
		}
		out <- runc.Exit{Timestamp: time.Now(), Pid: c.Process.Pid, Status: status}
		close(out)
	}()
	return out, nil
}

// StartLocked is Start: the monitor never sets a parent-death signal.
func (rp *reaper) StartLocked(c *exec.Cmd) (chan runc.Exit, error) { return rp.Start(c) }

// Wait waits for the exit Start registered.
func (rp *reaper) Wait(c *exec.Cmd, ec chan runc.Exit) (int, error) {
	e := <-ec
	return e.Status, nil
}
