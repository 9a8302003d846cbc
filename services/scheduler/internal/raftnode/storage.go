package raftnode

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"

	"go.etcd.io/etcd/client/pkg/v3/fileutil"
	"go.etcd.io/etcd/server/v3/etcdserver/api/snap"
	"go.etcd.io/etcd/server/v3/storage/wal"
	"go.etcd.io/etcd/server/v3/storage/wal/walpb"
	"go.etcd.io/raft/v3"
	"go.etcd.io/raft/v3/raftpb"
	"go.uber.org/zap"
	"google.golang.org/protobuf/proto"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
)

// How many old snapshot files and unlocked WAL segments survive a purge.
const (
	keepSnapFiles = 3
	keepWALFiles  = 5
)

// disk is the durable half of the Raft log: etcd's WAL (entries, hard
// state and snapshot markers, fsynced when raft requires it) and snapshot
// files. raft.MemoryStorage holds the same log in memory for the library.
type disk struct {
	log     *zap.Logger
	walDir  string
	snapDir string
	wal     *wal.WAL
	snaps   *snap.Snapshotter
}

// recovered is what a restart reads back from disk.
type recovered struct {
	meta     *schedulerv1.RaftMember // this member, as recorded at creation
	snapshot *raftpb.Snapshot        // nil when none was taken yet
	hard     *raftpb.HardState
	entries  []*raftpb.Entry
}

func walDir(dataDir string) string  { return filepath.Join(dataDir, "wal") }
func snapDir(dataDir string) string { return filepath.Join(dataDir, "snap") }

// hasLog reports whether dataDir holds a Raft log.
func hasLog(dataDir string) bool { return wal.Exist(walDir(dataDir)) }

// createDisk makes a new, empty log in dataDir recording self in its
// metadata.
func createDisk(log *zap.Logger, dataDir string, self *schedulerv1.RaftMember) (*disk, error) {
	d := &disk{log: log, walDir: walDir(dataDir), snapDir: snapDir(dataDir)}
	if err := os.MkdirAll(d.snapDir, 0o700); err != nil {
		return nil, fmt.Errorf("create snapshot dir: %w", err)
	}
	meta, err := proto.Marshal(self)
	if err != nil {
		return nil, fmt.Errorf("encode wal metadata: %w", err)
	}
	w, err := wal.Create(log, d.walDir, meta)
	if err != nil {
		return nil, fmt.Errorf("create wal %s: %w", d.walDir, err)
	}
	d.wal = w
	d.snaps = snap.New(log, d.snapDir)
	return d, nil
}

// openDisk opens the log in dataDir and reads it back: the newest snapshot
// the WAL knows about, then the hard state and entries after it.
func openDisk(log *zap.Logger, dataDir string) (*disk, *recovered, error) {
	d := &disk{log: log, walDir: walDir(dataDir), snapDir: snapDir(dataDir)}
	if err := os.MkdirAll(d.snapDir, 0o700); err != nil {
		return nil, nil, fmt.Errorf("create snapshot dir: %w", err)
	}
	d.snaps = snap.New(log, d.snapDir)
	walSnaps, err := wal.ValidSnapshotEntries(log, d.walDir)
	if err != nil {
		return nil, nil, fmt.Errorf("read wal snapshot entries: %w", err)
	}
	rec := &recovered{}
	s, err := d.snaps.LoadNewestAvailable(walSnaps)
	switch {
	case errors.Is(err, snap.ErrNoSnapshot):
	case err != nil:
		return nil, nil, fmt.Errorf("load snapshot: %w", err)
	default:
		rec.snapshot = s
	}
	start := &walpb.Snapshot{}
	if rec.snapshot != nil {
		md := rec.snapshot.GetMetadata()
		start = &walpb.Snapshot{Index: new(md.GetIndex()), Term: new(md.GetTerm()), ConfState: md.GetConfState()}
	}
	w, err := wal.Open(log, d.walDir, start)
	if err != nil {
		return nil, nil, fmt.Errorf("open wal %s: %w", d.walDir, err)
	}
	meta, hard, ents, err := w.ReadAll()
	if err != nil {
		w.Close()
		return nil, nil, fmt.Errorf("read wal %s: %w", d.walDir, err)
	}
	rec.meta = &schedulerv1.RaftMember{}
	if err := proto.Unmarshal(meta, rec.meta); err != nil || rec.meta.GetId() == 0 {
		w.Close()
		return nil, nil, fmt.Errorf("wal %s: bad metadata (%v)", d.walDir, err)
	}
	rec.hard, rec.entries = hard, ents
	d.wal = w
	return d, rec, nil
}

// save persists one Ready's worth of state. A snapshot is written first
// (file, then its WAL marker), so that the WAL never points at a snapshot
// that is not on disk; then the entries and hard state, fsynced by the WAL
// whenever raft.MustSync says so.
func (d *disk) save(hard *raftpb.HardState, ents []*raftpb.Entry, s *raftpb.Snapshot) error {
	if !raft.IsEmptySnap(s) {
		if err := d.saveSnapshot(s); err != nil {
			return err
		}
	}
	if err := d.wal.Save(hard, ents); err != nil {
		return fmt.Errorf("save wal: %w", err)
	}
	return nil
}

// saveSnapshot writes a snapshot file and its WAL marker (fsynced), then
// lets go of WAL segments and snapshot files it makes unnecessary.
func (d *disk) saveSnapshot(s *raftpb.Snapshot) error {
	md := s.GetMetadata()
	if err := d.snaps.SaveSnap(s); err != nil {
		return fmt.Errorf("save snapshot %d: %w", md.GetIndex(), err)
	}
	ws := &walpb.Snapshot{Index: new(md.GetIndex()), Term: new(md.GetTerm()), ConfState: md.GetConfState()}
	if err := d.wal.SaveSnapshot(ws); err != nil {
		return fmt.Errorf("save wal snapshot marker %d: %w", md.GetIndex(), err)
	}
	if err := d.wal.ReleaseLockTo(md.GetIndex()); err != nil {
		return fmt.Errorf("release wal segments before %d: %w", md.GetIndex(), err)
	}
	d.purge()
	return nil
}

// purge removes snapshot files beyond the newest keepSnapFiles and WAL
// segments beyond the newest keepWALFiles that the WAL no longer holds
// locked. Failures are logged, not returned: stale files waste disk but do
// not harm correctness.
func (d *disk) purge() {
	if err := purgeFiles(d.snapDir, ".snap", keepSnapFiles, false); err != nil {
		d.log.Warn("purge snapshot files failed", zap.Error(err))
	}
	if err := purgeFiles(d.walDir, ".wal", keepWALFiles, true); err != nil {
		d.log.Warn("purge wal segments failed", zap.Error(err))
	}
}

func purgeFiles(dir, suffix string, keep int, locked bool) error {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return fmt.Errorf("read %s: %w", dir, err)
	}
	var names []string
	for _, e := range entries {
		if strings.HasSuffix(e.Name(), suffix) {
			names = append(names, e.Name())
		}
	}
	slices.Sort(names) // both kinds are named by zero-padded hex, oldest first
	var errs []error
	for len(names) > keep {
		p := filepath.Join(dir, names[0])
		names = names[1:]
		if locked {
			// A WAL segment still in use is flock'ed by the WAL; skip it.
			l, err := fileutil.TryLockFile(p, os.O_WRONLY, fileutil.PrivateFileMode)
			if err != nil {
				break
			}
			if err := os.Remove(p); err != nil {
				errs = append(errs, err)
			}
			l.Close()
			continue
		}
		if err := os.Remove(p); err != nil {
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

func (d *disk) close() error {
	if d == nil || d.wal == nil {
		return nil
	}
	err := d.wal.Close()
	d.wal = nil
	if err != nil {
		return fmt.Errorf("close wal: %w", err)
	}
	return nil
}

// HasLog reports whether dataDir holds a Raft log, i.e. whether New will
// restart from disk whatever the Bootstrap mode.
func HasLog(dataDir string) bool { return hasLog(dataDir) }
