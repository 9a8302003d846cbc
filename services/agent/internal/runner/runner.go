package runner

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/netip"
	"os"
	"os/exec"
	"path"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"sync"
	"syscall"
	"time"

	gorunc "github.com/containerd/go-runc"
	"go.uber.org/zap"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/libs/obs"
	"zlayer.dev/services/agent/internal/bundle"
	"zlayer.dev/services/agent/internal/images"
	"zlayer.dev/services/agent/internal/monitor"
	"zlayer.dev/services/agent/internal/netns"
	"zlayer.dev/services/agent/internal/stats"
)

// Config is the runner's share of the agent's configuration.
type Config struct {
	Node         string
	StateDir     string        // durable: <data-dir>/agent
	RunDir       string        // per boot: <run-dir>/agent (runc state, netns pins)
	Runc         string        // runc binary
	Monitor      string        // zlayer-monitor binary
	CgroupParent string        // e.g. zlayer/<node>
	StopGrace    time.Duration // SIGTERM → SIGKILL
	LogMax       int64         // per log file
	LogKeep      int           // rotated files kept
	// LookupEnv resolves $E: references (the agent's environment).
	LookupEnv func(string) (string, bool)
	// ResolvConf is the host resolv.conf containers derive theirs from.
	ResolvConf string
	// WarmNetns is how many network namespaces the runner keeps made and
	// attached ahead of time, for creates to take instead of running CNI
	// on their start path; 0 keeps none.
	WarmNetns int
}

// Runner owns the containers of one node.
type Runner struct {
	cfg    Config
	log    *zap.Logger
	images images.Images
	net    *netns.Network
	runc   *gorunc.Runc
	stats  *stats.Tracker
	pool   *pool

	mu            sync.Mutex
	recovered     bool // Recover has run (guarded by mu)
	ctrs          map[string]*container
	creating      map[string]bool   // ids whose Run is under way (guarded by mu)
	names         map[string][]Name // service names per deployment (guarded by mu)
	subnets       []netip.Prefix    // every node's container subnet (guarded by mu)
	overlayDevice string            // the node's WireGuard device (guarded by mu)
	members       []netns.Member    // the cluster's running replicas (guarded by mu)
	addrs         map[string]placed // placed containers' addresses (guarded by mu)
	isoMu         sync.Mutex        // serialises isolate
	verified      time.Time         // last isolation check (guarded by mu)
	subs          map[*Subscription]struct{}
	bg            sync.WaitGroup // watchers
	ctx           context.Context
	cancel        context.CancelFunc
}

// container is one container's record and its lock. rec is changed only
// with mu held, and saved before the change is visible.
type container struct {
	mu   sync.Mutex
	rec  Record
	mon  *monitor.Process
	done chan struct{} // closed when the process has ended (Exited or Lost)
}

// New makes a runner. It checks that runc and the monitor exist; Recover
// must be called before the runner is used.
func New(cfg Config, log *zap.Logger, img images.Images, nw *netns.Network) (*Runner, error) {
	rp, err := exec.LookPath(cfg.Runc)
	if err != nil {
		return nil, fmt.Errorf("runc %q: %v: %w", cfg.Runc, err, errkind.Unavailable)
	}
	mp, err := exec.LookPath(cfg.Monitor)
	if err != nil {
		return nil, fmt.Errorf("monitor %q: %v: %w", cfg.Monitor, err, errkind.Unavailable)
	}
	cfg.Runc, cfg.Monitor = rp, mp
	if cfg.StopGrace <= 0 {
		cfg.StopGrace = 10 * time.Second
	}
	if cfg.LogMax <= 0 {
		cfg.LogMax = 10 << 20
	}
	if cfg.LookupEnv == nil {
		cfg.LookupEnv = func(string) (string, bool) { return "", false }
	}
	if cfg.ResolvConf == "" {
		cfg.ResolvConf = "/etc/resolv.conf"
	}
	if cfg.WarmNetns < 0 {
		return nil, fmt.Errorf("warm netns %d: must not be negative: %w", cfg.WarmNetns, errkind.Invalid)
	}
	for _, d := range []string{filepath.Join(cfg.StateDir, "containers"), filepath.Join(cfg.RunDir, "runc"), filepath.Join(cfg.RunDir, "netns"), filepath.Join(cfg.RunDir, "warm")} {
		if err := os.MkdirAll(d, 0o711); err != nil {
			return nil, fmt.Errorf("runner dirs: %w", err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	log = log.Named("runner")
	return &Runner{
		cfg:      cfg,
		log:      log,
		images:   img,
		net:      nw,
		runc:     &gorunc.Runc{Command: cfg.Runc, Root: filepath.Join(cfg.RunDir, "runc")},
		stats:    stats.NewTracker(),
		pool:     newPool(cfg.WarmNetns, nw, filepath.Join(cfg.RunDir, "netns"), filepath.Join(cfg.RunDir, "warm"), log),
		ctrs:     map[string]*container{},
		creating: map[string]bool{},
		addrs:    map[string]placed{},
		subs:     map[*Subscription]struct{}{},
		ctx:      ctx,
		cancel:   cancel,
	}, nil
}

// Close stops watching containers and releases the warm pool's idle
// namespaces (their addresses and veths). The containers keep running.
func (rn *Runner) Close() {
	if err := rn.pool.close(true); err != nil {
		rn.log.Warn("release warm netns pool", zap.Error(err))
	}
	rn.cancel()
	rn.bg.Wait()
	rn.mu.Lock()
	for s := range rn.subs {
		s.close()
	}
	rn.mu.Unlock()
}

var idRe = regexp.MustCompile(`^[a-zA-Z0-9][a-zA-Z0-9_.-]{0,63}$`)

func (rn *Runner) cgroupsPath(id string) string {
	return "/" + path.Join(strings.Trim(rn.cfg.CgroupParent, "/"), id)
}

func (rn *Runner) netnsPath(id string) string { return filepath.Join(rn.cfg.RunDir, "netns", id) }

func hostname(s Spec) string {
	if s.Identity.Service != "" {
		return fmt.Sprintf("%s-%d", s.Identity.Service, s.Identity.Index)
	}
	if len(s.ID) > 63 {
		return s.ID[:63]
	}
	return s.ID
}

// Run creates and starts a container. It is idempotent: a second call
// with the same id returns the existing container. On error nothing of the
// container is left: not its rootfs, namespace, address, cgroup, runc
// state, files or monitor. The one exception is a monitor that had its
// go-ahead and will not exit (its runc hangs): then nothing it may use is
// removed, and the container stays listed as lost, for Remove to finish.
func (rn *Runner) Run(ctx context.Context, s Spec) (rec Record, err error) {
	if !idRe.MatchString(s.ID) {
		return rec, fmt.Errorf("container id %q: want 1-64 of [a-zA-Z0-9_.-], starting alphanumeric: %w", s.ID, errkind.Invalid)
	}
	if s.Image == "" {
		return rec, fmt.Errorf("container %s: image: required: %w", s.ID, errkind.Invalid)
	}
	env, err := resolveEnv(s.Env, rn.cfg.LookupEnv)
	if err != nil {
		return rec, fmt.Errorf("container %s: %w", s.ID, err)
	}
	limits := bundle.Limits{CPU: s.CPU, Memory: s.Memory}
	if err := bundle.ValidateLimits(limits, stats.HostCPUs()); err != nil {
		return rec, fmt.Errorf("container %s: %w", s.ID, err)
	}
	if _, err := os.Stat(rn.cfg.Runc); err != nil {
		return rec, fmt.Errorf("container %s: runc %s: %v: %w", s.ID, rn.cfg.Runc, err, errkind.Unavailable)
	}

	c := &container{done: make(chan struct{}), rec: Record{
		Spec: s, State: StateCreating, CreatedAt: time.Now().UTC(),
		Cgroup: rn.cgroupsPath(s.ID), Netns: rn.netnsPath(s.ID),
	}}
	rn.mu.Lock()
	if old, ok := rn.ctrs[s.ID]; ok {
		rn.mu.Unlock()
		old.mu.Lock()
		defer old.mu.Unlock()
		if old.rec.State == StateCreating {
			return old.rec, fmt.Errorf("container %s: being created by another call: %w", s.ID, errkind.Conflict)
		}
		return old.rec, nil
	}
	rn.ctrs[s.ID] = c
	rn.creating[s.ID] = true
	rn.mu.Unlock()
	defer func() {
		rn.mu.Lock()
		delete(rn.creating, s.ID)
		rn.mu.Unlock()
	}()
	c.mu.Lock()
	defer c.mu.Unlock()

	// A warm namespace, if the pool has one: its pin, CNI id and address
	// become the container's, named in the intent below before anything
	// runs in it. It is never given back: on failure it is released like
	// a namespace made for the container.
	warm, fromPool := rn.pool.take()
	isoc := make(chan error, 1)
	if fromPool {
		c.rec.Netns, c.rec.CNIID, c.rec.IP = warm.Netns, warm.ID, warm.A.IP.String()
		// The address is known: its rules go in while the rest is made.
		if ip, ok := netip.AddrFromSlice(warm.A.IP.To4()); ok {
			rn.place(ip, s)
			go func() { isoc <- rn.isolate() }()
		} else {
			isoc <- fmt.Errorf("warm namespace address %s: not IPv4", warm.A.IP)
		}
	}
	// Refill once this create is done: the slot taken, or, when there was
	// none, whatever a failed fill left short (a CNI error at startup).
	defer rn.pool.kick()

	log := rn.log.With(zap.String(obs.KeyContainer, s.ID), zap.String(obs.KeyImage, s.Image))
	var undo []func()
	// kept is set by the monitor's undo when the monitor would not exit:
	// then nothing it may use is removed, and the record stays, lost, for
	// a removal to finish.
	kept := false
	defer func() {
		if err == nil {
			return
		}
		for i := len(undo) - 1; i >= 0 && !kept; i-- {
			undo[i]()
		}
		if kept {
			rn.keepLost(c, "create failed and its monitor did not exit", log)
			log.Warn("container create failed; kept as lost", zap.Error(err))
			return
		}
		rn.mu.Lock()
		delete(rn.ctrs, s.ID)
		rn.mu.Unlock()
		log.Info("container create failed", zap.Error(err))
	}()
	// Cleanup must run even when the caller's ctx is what failed.
	cctx := context.WithoutCancel(ctx)

	// Three things run at once from here, each needing only the id: the
	// network (a warm namespace is ready at once; else namespace pin, then
	// CNI), the monitor's exec (it sets itself up and waits for its
	// go-ahead before it calls runc), and, in this goroutine, the durable
	// intent, the root filesystem and the bundle. The network and the monitor may start before the intent is
	// on disk: after a crash, Recover's sweep removes namespace pins,
	// address leases, cgroups and runc containers that no record owns, and
	// a monitor whose agent is gone exits at its gate having made nothing.
	// The root filesystem is made only once the intent is durable: the
	// record is what finds it again.
	netc := make(chan attached, 1)
	pinc := make(chan error, 1) // the pin alone, before CNI: runc create joins it
	if fromPool {
		pinc <- nil
		netc <- attached{pinned: true, a: warm.A}
	} else {
		go func() { netc <- rn.attach(ctx, s.ID, c.rec.Netns, pinc) }()
	}
	var nw attached
	netWait := sync.OnceFunc(func() { nw = <-netc })
	undo = append(undo, func() {
		netWait()
		if !nw.pinned {
			return
		}
		if err := rn.net.Detach(cctx, c.rec.cniID(), c.rec.Netns); err != nil {
			log.Warn("cni del", zap.String("cni_id", c.rec.cniID()), zap.Error(err))
		}
		if err := netns.Remove(c.rec.Netns); err != nil {
			log.Warn("remove netns", zap.Error(err))
		}
	})
	// Before the address goes back (undone just before the network).
	undo = append(undo, func() { rn.unplaceNow(s.ID, log) })
	dir := rn.dir(s.ID)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return rec, fmt.Errorf("container %s: %w", s.ID, err)
	}
	undo = append(undo, func() { os.RemoveAll(dir) })
	// Undone after the container, before the directory (releasing a
	// container that has no root filesystem yet is a no-op).
	undo = append(undo, func() {
		if err := rn.images.Release(cctx, s.ID); err != nil {
			log.Warn("release rootfs", zap.Error(err))
		}
	})

	// Without init steps the monitor runs `runc run -d`: one runc
	// invocation, once the network is up (the process must find it
	// ready). With init steps it runs `runc create` while CNI is still
	// working, the steps run in the created container, and `runc start`
	// follows.
	oneShot := len(s.Init) == 0
	type started struct {
		pd  *monitor.Pending
		err error
	}
	monc := make(chan started, 1)
	go func() {
		pd, err := monitor.Start(rn.cfg.Monitor, monitor.Options{
			ID: s.ID, Bundle: dir, Runc: rn.cfg.Runc, RuncRoot: rn.runc.Root, Dir: dir,
			Log: filepath.Join(dir, LogFile), LogMax: rn.cfg.LogMax, LogKeep: rn.cfg.LogKeep,
			MemCgroup: stats.MemoryCgroup(c.rec.Cgroup), Start: oneShot,
		})
		monc <- started{pd, err}
	}()
	var mon started
	monWait := sync.OnceFunc(func() { mon = <-monc })
	begun := false // whether the monitor has had its go-ahead
	undo = append(undo, func() {
		monWait()
		if mon.pd == nil {
			return
		}
		if !begun {
			mon.pd.Abort() // it has made nothing
			return
		}
		// runc may have made the container or still be making it (Begin
		// gave up waiting); either way it must be gone, and the monitor
		// with it, before what the container uses is removed.
		if err := rn.endMonitor(cctx, s.ID, mon.pd.Process); err != nil {
			log.Error("monitor of a failed create did not exit", zap.Error(err))
			kept = true
			netWait() // an attach under way ends before a removal can start
		}
	})

	// The intent goes to disk first: whatever a crash interrupts below is
	// found and cleaned up by Recover.
	if err := rn.save(&c.rec); err != nil {
		return rec, fmt.Errorf("container %s: %w", s.ID, err)
	}

	root, err := rn.images.Prepare(ctx, s.Image, s.Pull, s.ID)
	if err != nil {
		return rec, fmt.Errorf("container %s: %w", s.ID, err)
	}
	c.rec.ImageDigest = root.Digest

	bcfg := bundle.Config{
		Rootfs:      root.Path,
		Hostname:    hostname(s),
		Image:       root.Config,
		Command:     s.Command,
		Args:        s.Args,
		Env:         env,
		Limits:      limits,
		CgroupsPath: c.rec.Cgroup,
		NetnsPath:   c.rec.Netns,
		Files: map[string]string{
			"/etc/hosts":       filepath.Join(dir, "hosts"),
			"/etc/resolv.conf": filepath.Join(dir, "resolv.conf"),
			"/etc/hostname":    filepath.Join(dir, "hostname"),
		},
	}
	spec, err := bundle.Spec(bcfg)
	if err != nil {
		return rec, fmt.Errorf("container %s: %w", s.ID, err)
	}
	hostResolv, _ := os.ReadFile(rn.cfg.ResolvConf)
	files := map[string][]byte{
		"resolv.conf": bundle.ResolvConf(hostResolv),
		"hostname":    []byte(bcfg.Hostname + "\n"),
	}
	if !oneShot {
		// runc create bind-mounts it before the address is known; it is
		// rewritten in place below.
		files["hosts"] = bundle.Hosts(bcfg.Hostname, nil)
	}
	for name, b := range files {
		if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
			return rec, fmt.Errorf("container %s: %w", s.ID, err)
		}
	}
	if err := bundle.Write(dir, spec); err != nil {
		return rec, fmt.Errorf("container %s: %w", s.ID, err)
	}

	monWait()
	if mon.err != nil {
		return rec, fmt.Errorf("container %s: %w", s.ID, mon.err)
	}
	c.mon, c.rec.MonitorPid, c.rec.MonitorT0 = mon.pd.Process, mon.pd.Pid, mon.pd.Start
	gotNet := func() error {
		netWait()
		if nw.err != nil {
			return nw.err
		}
		c.rec.IP = nw.a.IP.String()
		if !fromPool {
			ip, ok := netip.AddrFromSlice(nw.a.IP.To4())
			if !ok {
				return fmt.Errorf("container address %s: not IPv4", nw.a.IP)
			}
			rn.place(ip, s)
			isoc <- rn.isolate()
		}
		// Its overlays' rules are in before anything runs in it.
		if err := <-isoc; err != nil {
			return err
		}
		// In place: with init steps runc create has bind-mounted it already.
		return rn.writeHosts(c.rec)
	}
	if oneShot {
		if err := gotNet(); err != nil {
			return rec, fmt.Errorf("container %s: %w", s.ID, err)
		}
	}
	// The monitor's pid is on disk before it calls runc, so Recover can
	// stop it and wait for it.
	if err := rn.note(&c.rec); err != nil {
		return rec, fmt.Errorf("container %s: %w", s.ID, err)
	}
	if !oneShot {
		// runc create joins the namespace by its pin: it must exist (CNI
		// may still be working; the address is only needed by the steps).
		if err := <-pinc; err != nil {
			return rec, fmt.Errorf("container %s: %w", s.ID, err)
		}
	}
	begun = true
	pid, err := mon.pd.Begin(ctx)
	if err != nil {
		return rec, fmt.Errorf("container %s: %w", s.ID, err)
	}
	c.rec.Pid = pid
	if !oneShot {
		if err := gotNet(); err != nil {
			return rec, fmt.Errorf("container %s: %w", s.ID, err)
		}
		if err := rn.note(&c.rec); err != nil {
			return rec, fmt.Errorf("container %s: %w", s.ID, err)
		}
		results, err := rn.runInit(ctx, log, s.ID, s.Identity.Deployment, c.rec.Netns, s.Init)
		c.rec.Init = results
		if err != nil {
			return rec, fmt.Errorf("container %s: %w", s.ID, err)
		}
		if err := rn.note(&c.rec); err != nil {
			return rec, fmt.Errorf("container %s: %w", s.ID, err)
		}
		if err := rn.runc.Start(ctx, s.ID); err != nil {
			return rec, fmt.Errorf("container %s: runc start: %w", s.ID, err)
		}
	}
	c.rec.State, c.rec.StartedAt = StateRunning, time.Now().UTC()
	if err := rn.save(&c.rec); err != nil {
		return rec, fmt.Errorf("container %s: %w", s.ID, err)
	}
	log.Info("container started", zap.Int("pid", pid), zap.String("ip", c.rec.IP), zap.Bool("warm_netns", fromPool))
	rn.publish(c.rec, false)
	rn.watch(c)
	return c.rec, nil
}

// attached is the network's part of a create: whether the namespace was
// pinned (then it and any address must be undone on failure) and the
// address CNI gave.
type attached struct {
	pinned bool
	a      netns.Attachment
	err    error
}

// attach pins a new network namespace for container id and connects it
// through CNI. The pin's outcome is sent on pinned as soon as it is known.
func (rn *Runner) attach(ctx context.Context, id, nsPath string, pinned chan<- error) attached {
	if err := netns.Create(nsPath); err != nil {
		pinned <- err
		return attached{err: err}
	}
	pinned <- nil
	// Bounded like the pool's: a hung CNI plugin fails the create (and is
	// killed) instead of holding it for as long as the caller waits.
	actx, cancel := context.WithTimeout(ctx, warmAttachTimeout)
	defer cancel()
	a, err := rn.net.Attach(actx, id, nsPath)
	return attached{pinned: true, a: a, err: err}
}

// keepLost keeps c, whose create failed but could not be undone, as lost:
// saved, listed and removable (removal finishes the cleanup). The caller
// holds c.mu.
func (rn *Runner) keepLost(c *container, reason string, log *zap.Logger) {
	c.rec.State, c.rec.Reason = StateLost, reason
	if err := rn.save(&c.rec); err != nil {
		log.Warn("save state", zap.Error(err))
	}
	close(c.done)
	rn.publish(c.rec, false)
}

// LogFile is the container's log, in its state directory.
const LogFile = "container.log"

// watch waits in the background for c's monitor to exit, then records how
// the container ended.
func (rn *Runner) watch(c *container) {
	mon := c.mon
	rn.bg.Add(1)
	go func() {
		defer rn.bg.Done()
		var err error
		if mon != nil {
			err = mon.Wait(rn.ctx)
		} else {
			// No monitor (it was killed while the agent was down): watch
			// the container's init directly; its exit code is lost.
			err = monitor.WaitPid(rn.ctx, c.rec.Pid)
		}
		if err != nil {
			return // the runner is closing; the next agent re-adopts
		}
		rn.ended(c)
	}()
}

// ended records the end of c's process from its monitor's exit file.
func (rn *Runner) ended(c *container) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.rec.State.Terminal() {
		return
	}
	e, err := monitor.ReadExit(rn.dir(c.rec.ID()))
	if err == nil {
		c.rec.State, c.rec.Exit = StateExited, &e
	} else {
		c.rec.State = StateLost
		if c.rec.Reason == "" {
			c.rec.Reason = "monitor ended without an exit record"
		}
	}
	if err := rn.save(&c.rec); err != nil {
		rn.log.Warn("save state", zap.String(obs.KeyContainer, c.rec.ID()), zap.Error(err))
	}
	close(c.done)
	fields := []zap.Field{zap.String(obs.KeyContainer, c.rec.ID()), zap.Stringer("state", c.rec.State)}
	if c.rec.Exit != nil {
		fields = append(fields, zap.Int("code", c.rec.Exit.Code), zap.Bool("oom", c.rec.Exit.OOMKilled))
	}
	rn.log.Info("container ended", fields...)
	rn.publish(c.rec, false)
}

func (rn *Runner) get(id string) (*container, error) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	c, ok := rn.ctrs[id]
	if !ok {
		return nil, fmt.Errorf("container %s: %w", id, errkind.NotFound)
	}
	return c, nil
}

// Get returns one container's record.
func (rn *Runner) Get(id string) (Record, error) {
	c, err := rn.get(id)
	if err != nil {
		return Record{}, err
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.rec, nil
}

// List returns every container's record, by id.
func (rn *Runner) List() []Record {
	rn.mu.Lock()
	cs := make([]*container, 0, len(rn.ctrs))
	for id, c := range rn.ctrs {
		// One being created is not listed yet, and its lock is held for
		// the whole creation (pull, init steps): never wait for it.
		if !rn.creating[id] {
			cs = append(cs, c)
		}
	}
	rn.mu.Unlock()
	out := make([]Record, 0, len(cs))
	for _, c := range cs {
		c.mu.Lock()
		if c.rec.State != StateCreating {
			out = append(out, c.rec)
		}
		c.mu.Unlock()
	}
	slices.SortFunc(out, func(a, b Record) int { return strings.Compare(a.ID(), b.ID()) })
	return out
}

// Stop sends SIGTERM, waits up to grace (the configured one when grace is
// negative), then SIGKILL, and returns once the process has ended. A
// container that has already ended is not an error.
func (rn *Runner) Stop(ctx context.Context, id string, grace time.Duration) (Record, error) {
	c, err := rn.get(id)
	if err != nil {
		return Record{}, err
	}
	if grace < 0 {
		grace = rn.cfg.StopGrace
	}
	c.mu.Lock()
	switch c.rec.State {
	case StateCreating:
		c.mu.Unlock()
		return Record{}, fmt.Errorf("container %s: still being created: %w", id, errkind.Conflict)
	case StateRunning:
		c.rec.State = StateStopping
		if err := rn.save(&c.rec); err != nil {
			c.mu.Unlock()
			return Record{}, err
		}
		rn.publish(c.rec, false)
	}
	done := c.done
	terminal := c.rec.State.Terminal()
	c.mu.Unlock()
	if !terminal {
		if grace > 0 {
			if err := rn.runc.Kill(ctx, id, int(syscall.SIGTERM), nil); err != nil && !rn.gone(ctx, id) {
				return Record{}, fmt.Errorf("container %s: runc kill: %w", id, err)
			}
			t := time.NewTimer(grace)
			select {
			case <-done:
			case <-t.C:
			case <-ctx.Done():
			}
			t.Stop()
		}
		select {
		case <-done:
		default:
			if err := rn.runc.Kill(ctx, id, int(syscall.SIGKILL), &gorunc.KillOpts{All: true}); err != nil && !rn.gone(ctx, id) {
				return Record{}, fmt.Errorf("container %s: runc kill: %w", id, err)
			}
			select {
			case <-done:
			case <-ctx.Done():
				return Record{}, fmt.Errorf("container %s: wait for exit: %w", id, ctx.Err())
			}
		}
	}
	return rn.Get(id)
}

// gone reports whether runc no longer has a live process for id, so a
// failed kill raced with an exit rather than failed.
func (rn *Runner) gone(ctx context.Context, id string) bool {
	st, err := rn.runc.State(ctx, id)
	return err != nil || st.Status == "stopped"
}

// Remove deletes a container and everything made for it; force stops a
// running one without a grace period first. Removing an unknown id is errkind.NotFound.
// A running container is errkind.Precondition without force.
func (rn *Runner) Remove(ctx context.Context, id string, force bool) error {
	c, err := rn.get(id)
	if err != nil {
		return err
	}
	c.mu.Lock()
	st := c.rec.State
	c.mu.Unlock()
	if !st.Terminal() {
		if !force {
			return fmt.Errorf("container %s: %s; stop it first or force: %w", id, st, errkind.Precondition)
		}
		if _, err := rn.Stop(ctx, id, 0); err != nil {
			return err
		}
	}
	c.mu.Lock()
	rec := c.rec
	c.mu.Unlock()
	// Out of its overlays' rules before its address is given back.
	rn.unplaceNow(id, rn.log.With(zap.String(obs.KeyContainer, id)))
	if err := rn.teardown(ctx, rec); err != nil {
		return err
	}
	rn.mu.Lock()
	delete(rn.ctrs, id)
	rn.mu.Unlock()
	rn.pool.kick() // a freed address may let a short pool fill again
	rn.stats.Forget(id)
	rn.log.Info("container removed", zap.String(obs.KeyContainer, id))
	rn.publish(rec, true)
	return nil
}

// teardown removes everything of rec: runc state and cgroup, address,
// namespace, root filesystem and files. Each step tolerates that its part
// is already gone, so it also finishes what a crash interrupted.
func (rn *Runner) teardown(ctx context.Context, rec Record) error {
	id := rec.ID()
	var errs []error
	if err := rn.runc.Delete(ctx, id, &gorunc.DeleteOpts{Force: true}); err != nil {
		if _, serr := rn.runc.State(ctx, id); serr == nil {
			errs = append(errs, fmt.Errorf("runc delete: %w", err))
		}
	}
	nsPath := rn.ownNetns(rec)
	if err := rn.net.Detach(ctx, rec.cniID(), nsPath); err != nil {
		errs = append(errs, err)
	}
	if err := netns.Remove(nsPath); err != nil {
		errs = append(errs, err)
	}
	if err := rn.images.Release(ctx, id); err != nil {
		errs = append(errs, err)
	}
	removeCgroups(rn.cgroupsPath(id))
	if len(errs) == 0 {
		if err := os.RemoveAll(rn.dir(id)); err != nil {
			errs = append(errs, err)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("remove container %s: %w", id, err)
	}
	return nil
}

// ownNetns is the pin of rec's namespace: the one its record names (a
// warm slot's, or its own), if that is one of this node's pins; its own
// otherwise.
func (rn *Runner) ownNetns(rec Record) string {
	dir := filepath.Join(rn.cfg.RunDir, "netns")
	if rec.Netns != "" && filepath.Dir(rec.Netns) == dir {
		return rec.Netns
	}
	return rn.netnsPath(rec.ID())
}

// cgroupControllers are the v1 hierarchies runc makes a container's
// cgroup in.
var cgroupControllers = []string{"blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd", "unified", "net_cls", "net_prio", "perf_event", "hugetlb"}

// removeCgroups removes what runc delete left of a cgroup (it cannot when
// the container was never started, or after a crash).
func removeCgroups(p string) {
	for _, c := range cgroupControllers {
		os.Remove(filepath.Join(stats.Root, c, p))
	}
}

// Done returns a channel closed when the container's process has ended.
func (rn *Runner) Done(id string) (<-chan struct{}, error) {
	c, err := rn.get(id)
	if err != nil {
		return nil, err
	}
	return c.done, nil
}

// LogPath returns the container's log file.
func (rn *Runner) LogPath(id string) (string, error) {
	if _, err := rn.get(id); err != nil {
		return "", err
	}
	return filepath.Join(rn.dir(id), LogFile), nil
}

// Stats reads a container's resource use.
func (rn *Runner) Stats(id string) (stats.Usage, error) {
	rec, err := rn.Get(id)
	if err != nil {
		return stats.Usage{}, err
	}
	if rec.State.Terminal() {
		return stats.Usage{}, fmt.Errorf("container %s: %s: %w", id, rec.State, errkind.Precondition)
	}
	u, err := rn.stats.Read(id, rec.Cgroup)
	if err != nil {
		return u, fmt.Errorf("container %s: stats: %w", id, err)
	}
	return u, nil
}

// IP parses a record's address.
func (r Record) Addr() net.IP { return net.ParseIP(r.IP) }
