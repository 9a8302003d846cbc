package runner

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os"
	"path/filepath"
	"time"

	gorunc "github.com/containerd/go-runc"
	"go.uber.org/zap"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/libs/obs"
	"zlayer.dev/services/agent/internal/monitor"
	"zlayer.dev/services/agent/internal/netns"
	"zlayer.dev/services/agent/internal/stats"
)

// Recover re-adopts what an earlier agent of this node left and cleans up
// what a crash left half-made. For each state file:
//   - creating: the create was interrupted; everything it may have made is
//     removed (runc container, address, namespace, rootfs, files);
//   - running or stopping: if its monitor is alive the container is
//     watched again; if the monitor exited meanwhile, its exit file gives
//     the exit code and time; if the monitor was killed but runc still has
//     the container running, the container is watched without one (its
//     exit code will be unknown); otherwise it is lost;
//   - exited or lost: kept for listing until removed.
//
// A creating record whose monitor is alive has that monitor ended first
// (see endMonitor), within a bounded time; if it will not end, nothing is
// removed and the record is kept as lost, for a removal to finish.
//
// Then anything of this node that no record owns — runc containers,
// namespace pins, address leases, cgroups, and so every warm pool slot an
// earlier agent left that no record took — is removed, and the warm pool
// starts filling anew in the background. Recover runs once per runner; a
// second call is errkind.Precondition.
func (rn *Runner) Recover(ctx context.Context) error {
	rn.mu.Lock()
	again := rn.recovered
	rn.recovered = true
	rn.mu.Unlock()
	if again {
		return fmt.Errorf("recover: already done by this runner: %w", errkind.Precondition)
	}
	dirs, err := os.ReadDir(filepath.Join(rn.cfg.StateDir, "containers"))
	if err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	known := map[string]bool{}
	for _, d := range dirs {
		if !d.IsDir() {
			continue
		}
		id := d.Name()
		log := rn.log.With(zap.String(obs.KeyContainer, id))
		rec, err := load(rn.dir(id))
		if err != nil || rec.State == StateCreating {
			// A half-made container: the state file itself may be missing
			// if the crash came right after the directory was made.
			if rec == nil {
				rec = &Record{Spec: Spec{ID: id}, Netns: rn.netnsPath(id), Cgroup: rn.cgroupsPath(id)}
			}
			if rec.MonitorPid > 0 {
				if mon, ok := monitor.Adopt(rec.MonitorPid, rec.MonitorT0); ok {
					if err := rn.endMonitor(ctx, id, mon); err != nil {
						if ctx.Err() != nil {
							// The record stays "creating": the next start
							// tries again.
							return fmt.Errorf("recover: %w", err)
						}
						// Nothing is removed under a live monitor: the
						// record stays, lost, for a removal to finish.
						log.Warn("clean up interrupted create", zap.Error(err))
						known[id] = true
						known[rec.cniID()] = true
						c := &container{rec: *rec, done: make(chan struct{})}
						rn.keepLost(c, "interrupted create whose monitor did not exit", log)
						rn.mu.Lock()
						rn.ctrs[id] = c
						rn.mu.Unlock()
						continue
					}
				}
			}
			if err := rn.teardown(ctx, *rec); err != nil {
				log.Warn("clean up interrupted create", zap.Error(err))
				known[id] = true // keep its lease and pin for the next try
				known[rec.cniID()] = true
				continue
			}
			log.Info("cleaned up interrupted create")
			continue
		}
		known[id] = true
		known[rec.cniID()] = true // a warm slot's pin and lease are the container's
		if ip, err := netip.ParseAddr(rec.IP); err == nil {
			rn.place(ip, rec.Spec)
		}
		c := &container{rec: *rec, done: make(chan struct{})}
		switch {
		case rec.State.Terminal():
			close(c.done)
		default:
			rn.adopt(ctx, c, log)
		}
		rn.mu.Lock()
		rn.ctrs[id] = c
		rn.mu.Unlock()
	}
	rn.sweep(ctx, known)
	rn.loadNames()
	// The rules from before the restart are in force until these replace
	// them; after a reboot the chain is empty (nothing refused) until then,
	// so an agent that cannot apply them does not start.
	if err := rn.isolate(); err != nil {
		return fmt.Errorf("recover: %w", err)
	}
	// The pool's files describe idle slots of the last agent, all swept
	// above (or taken by a record, which owns the slot now).
	warmDir := filepath.Join(rn.cfg.RunDir, "warm")
	if ents, err := os.ReadDir(warmDir); err == nil {
		for _, e := range ents {
			if err := os.Remove(filepath.Join(warmDir, e.Name())); err != nil {
				rn.log.Warn("remove warm netns file", zap.String("path", filepath.Join(warmDir, e.Name())), zap.Error(err))
			}
		}
	}
	rn.pool.start()
	return nil
}

// endMonitorTries and endMonitorWait bound how long endMonitor waits for
// a monitor: a runc create or run under way takes well under a second.
// Variables so that tests can shorten them.
var (
	endMonitorTries = 5
	endMonitorWait  = 2 * time.Second
)

// endMonitor ends the monitor of a create that will not finish (the agent
// that began it died, or gave up), and with it any container its runc
// made, and waits for it to exit. The monitor's report is unread by then
// (the agent's end of the pipe is closed), so a monitor whose runc is
// still under way deletes the container itself once runc returns and
// exits; it is waited for, not raced: a runc delete then could remove
// runc's half-made state under it. A monitor whose runc has finished (its
// pid file exists) may have reported into the pipe before the agent went,
// and waits for the container: deleting the container ends it. The delete
// is repeated while the monitor lives, endMonitorTries times, each
// followed by a wait of endMonitorWait, so a restart is never held up by
// the container's lifetime.
func (rn *Runner) endMonitor(ctx context.Context, id string, mon *monitor.Process) error {
	pidFile := filepath.Join(rn.dir(id), monitor.PidFile)
	for range endMonitorTries {
		if _, err := os.Stat(pidFile); err == nil {
			if err := rn.runc.Delete(ctx, id, &gorunc.DeleteOpts{Force: true}); err != nil {
				rn.log.Debug("runc delete of an unfinished create", zap.String(obs.KeyContainer, id), zap.Error(err))
			}
		}
		wctx, cancel := context.WithTimeout(ctx, endMonitorWait)
		err := mon.Wait(wctx)
		cancel()
		if err == nil {
			return nil
		}
		if ctx.Err() != nil {
			return fmt.Errorf("container %s: wait for monitor %d: %w", id, mon.Pid, ctx.Err())
		}
	}
	return fmt.Errorf("container %s: monitor %d still running after %d deletes and waits of %v", id, mon.Pid, endMonitorTries, endMonitorWait)
}

// adopt reattaches to a container that was running when the last agent
// stopped.
func (rn *Runner) adopt(ctx context.Context, c *container, log *zap.Logger) {
	id := c.rec.ID()
	if mon, ok := monitor.Adopt(c.rec.MonitorPid, c.rec.MonitorT0); ok {
		c.mon = mon
		log.Info("container re-adopted", zap.Int("pid", c.rec.Pid), zap.Int("monitor", mon.Pid))
		rn.watch(c)
		return
	}
	if e, err := monitor.ReadExit(rn.dir(id)); err == nil {
		c.rec.State, c.rec.Exit = StateExited, &e
		close(c.done)
		log.Info("container exited while the agent was down", zap.Int("code", e.Code), zap.Time("at", e.At))
	} else if st, err := rn.runc.State(ctx, id); err == nil && st.Status == "running" && st.Pid > 0 {
		c.rec.Pid = st.Pid
		c.rec.Reason = "monitor lost while the agent was down; exit code will be unknown"
		log.Warn("container running without its monitor", zap.Int("pid", st.Pid))
		rn.watch(c)
		return
	} else {
		c.rec.State = StateLost
		c.rec.Reason = "neither the process nor its monitor survived, and no exit was recorded"
		close(c.done)
		log.Warn("container lost")
	}
	if err := rn.save(&c.rec); err != nil {
		log.Warn("save state", zap.Error(err))
	}
}

// sweep removes this node's leftovers that no known container owns.
func (rn *Runner) sweep(ctx context.Context, known map[string]bool) {
	if list, err := rn.runc.List(ctx); err == nil {
		for _, c := range list {
			if !known[c.ID] {
				rn.log.Info("delete orphan runc container", zap.String(obs.KeyContainer, c.ID))
				rn.runc.Delete(ctx, c.ID, &gorunc.DeleteOpts{Force: true})
			}
		}
	}
	// Pins and leases are named by CNI id: a container's own id, or a
	// warm slot's. An orphan pin with an address is detached through it
	// first, so the bridge plugin deletes its veth at once.
	leases, err := rn.net.Leases()
	if err != nil {
		rn.log.Warn("read address leases", zap.Error(err))
	}
	if pins, err := os.ReadDir(filepath.Join(rn.cfg.RunDir, "netns")); err == nil {
		for _, p := range pins {
			id := p.Name()
			if known[id] {
				continue
			}
			log := rn.log.With(zap.String("cni_id", id), zap.Bool("warm_slot", isPoolID(id)))
			log.Info("remove orphan netns")
			if ip, ok := leases[id]; ok {
				if err := rn.net.Detach(ctx, id, rn.netnsPath(id)); err != nil {
					log.Warn("release orphan address", zap.Stringer("ip", ip), zap.Error(err))
				} else {
					delete(leases, id)
				}
			}
			if err := netns.Remove(rn.netnsPath(id)); err != nil {
				log.Warn("remove orphan netns", zap.Error(err))
			}
		}
	}
	for id, ip := range leases {
		if !known[id] {
			rn.log.Info("release orphan address", zap.String("cni_id", id), zap.Stringer("ip", ip))
			if err := rn.net.Detach(ctx, id, ""); err != nil {
				rn.log.Warn("release orphan address", zap.String("cni_id", id), zap.Stringer("ip", ip), zap.Error(err))
			}
		}
	}
	for _, ctl := range cgroupControllers {
		parent := filepath.Join(stats.Root, ctl, rn.cfg.CgroupParent)
		ents, err := os.ReadDir(parent)
		if err != nil {
			continue
		}
		for _, e := range ents {
			if e.IsDir() && !known[e.Name()] {
				if err := os.Remove(filepath.Join(parent, e.Name())); err != nil && !errors.Is(err, os.ErrNotExist) {
					rn.log.Warn("remove orphan cgroup", zap.String("path", filepath.Join(parent, e.Name())), zap.Error(err))
				}
			}
		}
	}
}
