package fsm

import (
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	"google.golang.org/protobuf/proto"
	"google.golang.org/protobuf/types/known/timestamppb"

	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/errkind"
)

// Limits on what the state keeps.
const (
	MaxVersions = 20   // versions kept per deployment
	MaxEvents   = 2000 // most recent events kept
)

var (
	bucketDeployments = []byte("deployments")
	bucketReplicas    = []byte("replicas")
	bucketNodes       = []byte("nodes")
	bucketEvents      = []byte("events")
	bucketMeta        = []byte("meta")
	keyApplied        = []byte("applied")
	keyEventSeq       = []byte("event_seq")
)

// Result is what applying a command returns to its proposer.
type Result struct {
	// Err is a rejection that depends on the state (an unknown deployment,
	// say). It is never a reason to stop the state machine.
	Err error
	// Version is the deployment version a put or rollback created.
	Version uint64
	// Previous is the replica count before a scale.
	Previous uint32
}

// FSM is the scheduler state. Its methods are safe for concurrent use;
// Apply, Restore and Snapshot are called by the Raft loop.
type FSM struct {
	db *bolt.DB

	mu          sync.RWMutex
	applied     uint64
	eventSeq    uint64
	deployments map[string]*schedulerv1.Deployment
	replicas    map[string]*schedulerv1.Replica
	nodes       map[string]*schedulerv1.Node
	events      []*schedulerv1.Event
	changed     chan struct{} // closed and replaced on every change
}

// Open opens (or creates) the state file at path and loads it.
func Open(path string) (*FSM, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 5 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state %s: %w", path, err)
	}
	f := &FSM{db: db, changed: make(chan struct{})}
	if err := f.load(); err != nil {
		db.Close()
		return nil, fmt.Errorf("load state %s: %w", path, err)
	}
	return f, nil
}

// Close closes the state file.
func (f *FSM) Close() error { return f.db.Close() }

func (f *FSM) load() error {
	f.reset()
	return f.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDeployments, bucketReplicas, bucketNodes, bucketEvents, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		meta := tx.Bucket(bucketMeta)
		f.applied = getUint(meta, keyApplied)
		f.eventSeq = getUint(meta, keyEventSeq)
		if err := loadAll(tx.Bucket(bucketDeployments), func(b []byte) error {
			d := &schedulerv1.Deployment{}
			if err := proto.Unmarshal(b, d); err != nil {
				return err
			}
			f.deployments[d.Name] = d
			return nil
		}); err != nil {
			return err
		}
		if err := loadAll(tx.Bucket(bucketReplicas), func(b []byte) error {
			r := &schedulerv1.Replica{}
			if err := proto.Unmarshal(b, r); err != nil {
				return err
			}
			f.replicas[r.Id] = r
			return nil
		}); err != nil {
			return err
		}
		if err := loadAll(tx.Bucket(bucketNodes), func(b []byte) error {
			n := &schedulerv1.Node{}
			if err := proto.Unmarshal(b, n); err != nil {
				return err
			}
			f.nodes[n.Name] = n
			return nil
		}); err != nil {
			return err
		}
		return loadAll(tx.Bucket(bucketEvents), func(b []byte) error {
			e := &schedulerv1.Event{}
			if err := proto.Unmarshal(b, e); err != nil {
				return err
			}
			f.events = append(f.events, e)
			return nil
		})
	})
}

func (f *FSM) reset() {
	f.applied, f.eventSeq = 0, 0
	f.deployments = map[string]*schedulerv1.Deployment{}
	f.replicas = map[string]*schedulerv1.Replica{}
	f.nodes = map[string]*schedulerv1.Node{}
	f.events = nil
}

func loadAll(b *bolt.Bucket, fn func([]byte) error) error {
	return b.ForEach(func(_, v []byte) error { return fn(v) })
}

func getUint(b *bolt.Bucket, k []byte) uint64 {
	v := b.Get(k)
	if len(v) != 8 {
		return 0
	}
	return binary.BigEndian.Uint64(v)
}

func putUint(b *bolt.Bucket, k []byte, v uint64) error {
	var buf [8]byte
	binary.BigEndian.PutUint64(buf[:], v)
	return b.Put(k, buf[:])
}

// AppliedIndex is the last Raft index applied.
func (f *FSM) AppliedIndex() uint64 {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.applied
}

// Changed returns a channel closed at the next change of the state, except
// heartbeats that change only a node's last-heartbeat time and load.
func (f *FSM) Changed() <-chan struct{} {
	f.mu.RLock()
	defer f.mu.RUnlock()
	return f.changed
}

// Apply applies the command in data, committed at index. An index at or
// below the applied index (a replay after a crash) is skipped. A command
// that does not decode is recorded as applied and rejected in the Result,
// so one bad entry cannot wedge the log.
func (f *FSM) Apply(index uint64, data []byte) any {
	f.mu.Lock()
	defer f.mu.Unlock()
	if index <= f.applied {
		return Result{Err: fmt.Errorf("index %d already applied: %w", index, errkind.Conflict)}
	}
	cmd := &schedulerv1.Command{}
	var res Result
	tx := &txn{f: f, now: time.Time{}}
	if err := proto.Unmarshal(data, cmd); err != nil {
		res.Err = fmt.Errorf("index %d: decode command: %w", index, err)
	} else {
		tx.now = cmd.GetProposedAt().AsTime()
		res = tx.apply(cmd)
	}
	f.applied = index
	if err := f.persist(tx); err != nil {
		// The disk failed under us: memory and disk now disagree. Stopping
		// is the only safe answer; Raft replays from the stored index.
		panic(fmt.Sprintf("fsm: persist index %d: %v", index, err))
	}
	// A heartbeat that changed nothing but the node's last-heartbeat time
	// (and load) wakes nobody: every node sends one a second, and each wake
	// makes every watcher copy the whole state. Whatever judges heartbeat
	// times (node timeouts, the autoscaler) runs on its own tick.
	if _, hb := cmd.GetKind().(*schedulerv1.Command_Heartbeat); !hb || len(tx.replicas) > 0 || len(tx.deployments) > 0 || len(tx.events) > 0 {
		close(f.changed)
		f.changed = make(chan struct{})
	}
	return res
}

// persist writes what tx touched, and the applied index, in one bbolt transaction.
func (f *FSM) persist(tx *txn) error {
	return f.db.Update(func(btx *bolt.Tx) error {
		if err := putUint(btx.Bucket(bucketMeta), keyApplied, f.applied); err != nil {
			return err
		}
		if err := putUint(btx.Bucket(bucketMeta), keyEventSeq, f.eventSeq); err != nil {
			return err
		}
		for name := range tx.deployments {
			if err := putOrDelete(btx.Bucket(bucketDeployments), name, f.deployments[name]); err != nil {
				return err
			}
		}
		for id := range tx.replicas {
			if err := putOrDelete(btx.Bucket(bucketReplicas), id, f.replicas[id]); err != nil {
				return err
			}
		}
		for name := range tx.nodes {
			if err := putOrDelete(btx.Bucket(bucketNodes), name, f.nodes[name]); err != nil {
				return err
			}
		}
		eb := btx.Bucket(bucketEvents)
		for _, e := range tx.events {
			if err := putMsg(eb, eventKey(e.Seq), e); err != nil {
				return err
			}
		}
		// Keep the newest MaxEvents events: delete every sequence number
		// at or below eventSeq-MaxEvents.
		if f.eventSeq > MaxEvents {
			limit := eventKey(f.eventSeq - MaxEvents)
			c := eb.Cursor()
			var old [][]byte
			for k, _ := c.First(); k != nil && string(k) <= limit; k, _ = c.Next() {
				old = append(old, slices.Clone(k))
			}
			for _, k := range old {
				if err := eb.Delete(k); err != nil {
					return err
				}
			}
		}
		return nil
	})
}

func eventKey(seq uint64) string {
	var b [8]byte
	binary.BigEndian.PutUint64(b[:], seq)
	return string(b[:])
}

func putOrDelete[M proto.Message](b *bolt.Bucket, key string, m M) error {
	if isNil(m) {
		return b.Delete([]byte(key))
	}
	return putMsg(b, key, m)
}

func isNil[M proto.Message](m M) bool {
	return !m.ProtoReflect().IsValid()
}

func putMsg(b *bolt.Bucket, key string, m proto.Message) error {
	data, err := proto.MarshalOptions{Deterministic: true}.Marshal(m)
	if err != nil {
		return err
	}
	return b.Put([]byte(key), data)
}

// Snapshot returns the whole state.
func (f *FSM) Snapshot() ([]byte, error) {
	f.mu.RLock()
	defer f.mu.RUnlock()
	s := &schedulerv1.Snapshot{AppliedIndex: f.applied, Events: f.events}
	for _, name := range sortedKeys(f.deployments) {
		s.Deployments = append(s.Deployments, f.deployments[name])
	}
	for _, id := range sortedKeys(f.replicas) {
		s.Replicas = append(s.Replicas, f.replicas[id])
	}
	for _, name := range sortedKeys(f.nodes) {
		s.Nodes = append(s.Nodes, f.nodes[name])
	}
	return proto.MarshalOptions{Deterministic: true}.Marshal(s)
}

// Restore replaces the state with a snapshot taken at index.
func (f *FSM) Restore(index uint64, data []byte) error {
	s := &schedulerv1.Snapshot{}
	if err := proto.Unmarshal(data, s); err != nil {
		return fmt.Errorf("restore snapshot at %d: %w", index, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	err := f.db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketDeployments, bucketReplicas, bucketNodes, bucketEvents, bucketMeta} {
			if err := tx.DeleteBucket(b); err != nil && !errors.Is(err, bolt.ErrBucketNotFound) {
				return err
			}
			if _, err := tx.CreateBucket(b); err != nil {
				return err
			}
		}
		var seq uint64
		for _, d := range s.Deployments {
			if err := putMsg(tx.Bucket(bucketDeployments), d.Name, d); err != nil {
				return err
			}
		}
		for _, r := range s.Replicas {
			if err := putMsg(tx.Bucket(bucketReplicas), r.Id, r); err != nil {
				return err
			}
		}
		for _, n := range s.Nodes {
			if err := putMsg(tx.Bucket(bucketNodes), n.Name, n); err != nil {
				return err
			}
		}
		for _, e := range s.Events {
			if err := putMsg(tx.Bucket(bucketEvents), eventKey(e.Seq), e); err != nil {
				return err
			}
			seq = max(seq, e.Seq)
		}
		if err := putUint(tx.Bucket(bucketMeta), keyEventSeq, seq); err != nil {
			return err
		}
		return putUint(tx.Bucket(bucketMeta), keyApplied, index)
	})
	if err != nil {
		return fmt.Errorf("restore snapshot at %d: %w", index, err)
	}
	if err := f.load(); err != nil {
		return fmt.Errorf("restore snapshot at %d: %w", index, err)
	}
	close(f.changed)
	f.changed = make(chan struct{})
	return nil
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}

// ts converts a time to a timestamp, leaving the zero time unset.
func ts(t time.Time) *timestamppb.Timestamp {
	if t.IsZero() {
		return nil
	}
	return timestamppb.New(t)
}
