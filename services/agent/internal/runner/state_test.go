package runner

import "testing"

func TestTransitions(t *testing.T) {
	allowed := map[[2]State]bool{
		{StateCreating, StateRunning}: true,
		{StateCreating, StateExited}:  true,
		{StateRunning, StateStopping}: true,
		{StateRunning, StateExited}:   true,
		{StateRunning, StateLost}:     true,
		{StateStopping, StateExited}:  true,
		{StateStopping, StateLost}:    true,
	}
	for from := range stateNames {
		for to := range stateNames {
			if got := from.CanBecome(to); got != allowed[[2]State{from, to}] {
				t.Errorf("%v.CanBecome(%v) = %v, want %v", from, to, got, !got)
			}
		}
	}
}

func TestStateText(t *testing.T) {
	for s := range stateNames {
		b, err := s.MarshalText()
		if err != nil {
			t.Fatal(err)
		}
		var got State
		if err := got.UnmarshalText(b); err != nil || got != s {
			t.Errorf("round trip %v: got %v, %v", s, got, err)
		}
	}
	if _, err := State(0).MarshalText(); err == nil {
		t.Error("zero state marshalled")
	}
}
