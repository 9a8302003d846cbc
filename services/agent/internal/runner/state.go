package runner

import (
	"fmt"
	"slices"
)

// State is where one container is in its life on this node.
type State uint8

// States. Zero means unset and is never valid.
const (
	// StateCreating: the intent is recorded; root filesystem, namespace,
	// address and runc container are being made. A crash here is cleaned
	// up on the next start.
	StateCreating State = iota + 1
	// StateRunning: the process is running under its monitor.
	StateRunning
	// StateStopping: SIGTERM sent; waiting for the process to exit.
	StateStopping
	// StateExited: the process exited; its exit code and time are known.
	StateExited
	// StateLost: the process is gone and so is the record of how it ended
	// (its monitor was killed too). Terminal, like Exited.
	StateLost
)

var stateNames = map[State]string{
	StateCreating: "creating",
	StateRunning:  "running",
	StateStopping: "stopping",
	StateExited:   "exited",
	StateLost:     "lost",
}

func (s State) String() string {
	if n, ok := stateNames[s]; ok {
		return n
	}
	return fmt.Sprintf("State(%d)", uint8(s))
}

// MarshalText stores states by name in state files.
func (s State) MarshalText() ([]byte, error) {
	if _, ok := stateNames[s]; !ok {
		return nil, fmt.Errorf("invalid state %d", uint8(s))
	}
	return []byte(s.String()), nil
}

// UnmarshalText reads a state name.
func (s *State) UnmarshalText(b []byte) error {
	for k, v := range stateNames {
		if v == string(b) {
			*s = k
			return nil
		}
	}
	return fmt.Errorf("unknown state %q", b)
}

// Exited and Lost are terminal: they have no entry. A container that
// exits while being created (its process died at once) goes straight to
// Exited.
var next = map[State][]State{
	StateCreating: {StateRunning, StateExited},
	StateRunning:  {StateStopping, StateExited, StateLost},
	StateStopping: {StateExited, StateLost},
}

// CanBecome reports whether s may change to to.
func (s State) CanBecome(to State) bool { return slices.Contains(next[s], to) }

// Terminal reports whether the process has ended for good.
func (s State) Terminal() bool { return s == StateExited || s == StateLost }
