package runner

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"time"

	"go.uber.org/zap"

	"zlayer.dev/services/agent/internal/atomicfile"
	"zlayer.dev/services/agent/internal/netns"
)

// The warm pool keeps a few network namespaces made ahead of time: pinned,
// loopback up and attached through CNI (bridge + host-local), each under
// its own CNI container id. A create takes one instead of running CNI on
// its start path, and the pool is refilled in the background after it.
//
// Ownership and crash safety:
//   - A slot's pin is <run-dir>/netns/<slot id> and its address lease is
//     held under the slot id, so everything of a slot is found by its id
//     (poolIDPrefix, and longer than any container id, so it can never be
//     a container's id).
//   - A ready, idle slot also has a file <run-dir>/warm/<slot id> with its
//     address. The file goes when the slot is taken. The agent never reads
//     these files (Recover only removes them): they are how an observer
//     outside the agent sees the pool — the end-to-end tests and the
//     benchmark wait on them for a refill — at one unsynced write per fill.
//   - A create that takes a slot names the slot's CNI id, pin and address
//     in its record before anything runs in the namespace (the durable
//     intent), and from then on the slot is the container's: removal and
//     Recover undo it by the record, as any container's network.
//   - Anything with a slot id that no record names — an idle slot, one
//     being made, one taken but not yet recorded — is an orphan on the next
//     start: Recover's sweep releases its address (CNI DEL) and unpins it,
//     and the pool is made anew.
//   - A graceful stop (Close) releases the idle slots.
//
// Slots live in the per-node run and CNI directories, so nodes sharing a
// host never see each other's.
//
// Liveness: a CNI ADD for a slot is bounded by warmAttachTimeout (a hung
// plugin is killed), and close waits at most warmCloseWait for the filler,
// so a stuck plugin never holds up the runner's Close. A failed fill is
// retried with a backoff (warmRetryMin doubling to warmRetryMax), and is
// also kicked by every create and removal.

// Pool timings; variables so that tests can shorten them.
var (
	warmAttachTimeout = 30 * time.Second
	warmCloseWait     = 45 * time.Second
	warmRetryMin      = time.Second
	warmRetryMax      = time.Minute
)

// poolIDPrefix starts every slot's CNI id.
const poolIDPrefix = "warm-"

// isPoolID reports whether a CNI id (a pin or lease name) is a slot's:
// the prefix and 32 random bytes in hex, 69 characters, where container
// ids have at most 64.
func isPoolID(id string) bool {
	return len(id) == len(poolIDPrefix)+64 && strings.HasPrefix(id, poolIDPrefix)
}

func newPoolID() (string, error) {
	var b [32]byte
	if _, err := rand.Read(b[:]); err != nil {
		return "", fmt.Errorf("warm netns id: %w", err)
	}
	return poolIDPrefix + hex.EncodeToString(b[:]), nil
}

// slot is one namespace of the pool.
type slot struct {
	ID    string           `json:"cni_id"` // CNI container id
	Netns string           `json:"netns"`  // pin
	A     netns.Attachment `json:"attachment"`
}

// pool is the runner's warm pool of network namespaces.
type pool struct {
	size   int
	net    *netns.Network
	nsDir  string // pins, shared with containers' own
	dir    string // ready slots' files
	log    *zap.Logger
	kickc  chan struct{}
	cancel context.CancelFunc
	done   chan struct{} // closed when the filler has returned

	mu      sync.Mutex
	idle    []slot
	started bool
	closed  bool
	release bool // on close: release what is being made (false only to simulate a crash)
}

func newPool(size int, nw *netns.Network, nsDir, dir string, log *zap.Logger) *pool {
	return &pool{size: size, net: nw, nsDir: nsDir, dir: dir, log: log.Named("warm-netns"),
		kickc: make(chan struct{}, 1), done: make(chan struct{})}
}

// start begins filling the pool in the background. Recover calls it once
// the leftovers of earlier agents are swept; later calls, and calls after
// close, do nothing.
func (p *pool) start() {
	if p.size <= 0 {
		return
	}
	p.mu.Lock()
	if p.started || p.closed {
		p.mu.Unlock()
		return
	}
	p.started = true
	ctx, cancel := context.WithCancel(context.Background())
	p.cancel = cancel
	p.mu.Unlock()
	go p.fill(ctx)
	p.kick()
}

// kick asks the filler to top the pool up; it never blocks.
func (p *pool) kick() {
	if p.size <= 0 {
		return
	}
	select {
	case p.kickc <- struct{}{}:
	default:
	}
}

// take hands out an idle slot, if there is one. The caller owns it from
// then on (its record must name it before the namespace is used) and
// should kick the pool once its create is done.
func (p *pool) take() (slot, bool) {
	p.mu.Lock()
	if p.closed || len(p.idle) == 0 {
		p.mu.Unlock()
		return slot{}, false
	}
	s := p.idle[0]
	p.idle = p.idle[1:]
	p.mu.Unlock()
	if err := os.Remove(p.file(s.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		p.log.Warn("remove slot file", zap.String("slot", s.ID), zap.Error(err))
	}
	return s, true
}

// idleCount returns how many slots are ready.
func (p *pool) idleCount() int {
	p.mu.Lock()
	defer p.mu.Unlock()
	return len(p.idle)
}

func (p *pool) file(id string) string { return filepath.Join(p.dir, id) }

// fill makes slots, one at a time, whenever kicked and short. A failure
// (no free address, a CNI error) is logged and retried after a backoff,
// or sooner on a kick (a create or a removal).
func (p *pool) fill(ctx context.Context) {
	defer close(p.done)
	retry := time.NewTimer(0)
	retry.Stop()
	defer retry.Stop()
	backoff := warmRetryMin
	for {
		select {
		case <-ctx.Done():
			return
		case <-p.kickc:
		case <-retry.C:
		}
		for ctx.Err() == nil && p.idleCount() < p.size {
			s, err := p.make(ctx)
			if err != nil {
				p.log.Warn("warm netns not made; the pool stays short until a retry, create or removal",
					zap.Int("idle", p.idleCount()), zap.Int("size", p.size), zap.Duration("retry_in", backoff), zap.Error(err))
				retry.Reset(backoff)
				backoff = min(2*backoff, warmRetryMax)
				break
			}
			backoff = warmRetryMin
			p.mu.Lock()
			if !p.closed {
				p.idle = append(p.idle, s)
				p.mu.Unlock()
				continue
			}
			release := p.release
			p.mu.Unlock()
			if release {
				if err := p.releaseSlot(context.Background(), s); err != nil {
					p.log.Warn("release warm netns", zap.String("slot", s.ID), zap.Error(err))
				}
			}
			return
		}
	}
}

// make creates one slot: the pin, the CNI attachment, then its file. A make under
// way is finished even when the pool closes (CNI plugins are not killed
// half-way), but a CNI ADD that takes longer than warmAttachTimeout is
// (a hung plugin); on error nothing of the slot is left.
func (p *pool) make(ctx context.Context) (s slot, err error) {
	id, err := newPoolID()
	if err != nil {
		return s, err
	}
	s = slot{ID: id, Netns: filepath.Join(p.nsDir, id)}
	if err := netns.Create(s.Netns); err != nil {
		return s, fmt.Errorf("warm netns %s: %w", id, err)
	}
	actx, cancel := context.WithTimeout(context.WithoutCancel(ctx), warmAttachTimeout)
	defer cancel()
	if s.A, err = p.net.Attach(actx, id, s.Netns); err != nil {
		if rerr := netns.Remove(s.Netns); rerr != nil {
			p.log.Warn("remove warm netns", zap.String("slot", id), zap.Error(rerr))
		}
		return s, fmt.Errorf("warm netns %s: %w", id, err)
	}
	b, err := json.Marshal(s)
	if err == nil {
		err = atomicfile.WriteUnsynced(p.file(id), b, 0o600)
	}
	if err != nil {
		rctx, rcancel := context.WithTimeout(context.WithoutCancel(ctx), warmAttachTimeout)
		defer rcancel()
		if rerr := p.releaseSlot(rctx, s); rerr != nil {
			p.log.Warn("release warm netns", zap.String("slot", id), zap.Error(rerr))
		}
		return s, fmt.Errorf("warm netns %s: slot file: %w", id, err)
	}
	return s, nil
}

// releaseSlot gives a slot's address back (CNI DEL, which also deletes
// its veth), unpins the namespace and removes the slot's file.
func (p *pool) releaseSlot(ctx context.Context, s slot) error {
	var errs []error
	if err := p.net.Detach(ctx, s.ID, s.Netns); err != nil {
		errs = append(errs, err)
	}
	if err := netns.Remove(s.Netns); err != nil {
		errs = append(errs, err)
	}
	if err := os.Remove(p.file(s.ID)); err != nil && !errors.Is(err, os.ErrNotExist) {
		errs = append(errs, err)
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("release warm netns %s: %w", s.ID, err)
	}
	return nil
}

// close stops the filler and, if release, gives back every idle slot (and
// one being made when close came). Without release (a test's stand-in
// for a crash) the slots stay for the next Recover to find. It waits for
// the filler at most warmCloseWait: a slot still being made after that
// (a CNI plugin that ignores being killed) is released by the filler if
// the process lives on, and swept by the next Recover otherwise.
func (p *pool) close(release bool) error {
	p.mu.Lock()
	if p.closed {
		p.mu.Unlock()
		return nil
	}
	p.closed, p.release = true, release
	idle := p.idle
	p.idle = nil
	cancel := p.cancel
	p.mu.Unlock()
	if cancel != nil { // started
		cancel()
		t := time.NewTimer(warmCloseWait)
		select {
		case <-p.done:
		case <-t.C:
			p.log.Warn("warm netns filler still busy; not waiting for it", zap.Duration("waited", warmCloseWait))
		}
		t.Stop()
	}
	if !release {
		return nil
	}
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	var errs []error
	for _, s := range idle {
		if err := p.releaseSlot(ctx, s); err != nil {
			errs = append(errs, err)
		}
	}
	if len(idle) > 0 {
		p.log.Info("warm netns released", zap.Int("slots", len(idle)), zap.Int("failed", len(errs)))
	}
	return errors.Join(errs...)
}
