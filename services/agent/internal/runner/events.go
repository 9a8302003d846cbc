package runner

import "sync"

// Event is a change to one container.
type Event struct {
	Record  Record
	Removed bool // the container is gone; Record is its last state
}

// Subscription receives events. A subscriber that falls more than
// subBuffer events behind is dropped (C is closed with Lagged set) rather
// than slowing the runner; it can subscribe again and re-list.
type Subscription struct {
	C      chan Event
	Lagged bool
	once   sync.Once
	rn     *Runner
}

const subBuffer = 1024

// Subscribe starts receiving events. Call Cancel when done.
func (rn *Runner) Subscribe() *Subscription {
	s := &Subscription{C: make(chan Event, subBuffer), rn: rn}
	rn.mu.Lock()
	rn.subs[s] = struct{}{}
	rn.mu.Unlock()
	return s
}

// Cancel stops the subscription.
func (s *Subscription) Cancel() {
	s.rn.mu.Lock()
	delete(s.rn.subs, s)
	s.rn.mu.Unlock()
	s.close()
}

func (s *Subscription) close() { s.once.Do(func() { close(s.C) }) }

func (rn *Runner) publish(rec Record, removed bool) {
	rn.mu.Lock()
	defer rn.mu.Unlock()
	for s := range rn.subs {
		select {
		case s.C <- Event{Record: rec, Removed: removed}:
		default:
			s.Lagged = true
			delete(rn.subs, s)
			s.close()
		}
	}
}
