package balance

import (
	"fmt"
	"testing"
	"time"
)

// clock is a settable time source: ejection is about time passing, and the
// test moves it instead of waiting.
type clock struct{ t time.Time }

func (c *clock) now() time.Time { return c.t }

func targets(ids ...string) []Target {
	var ts []Target
	for i, id := range ids {
		ts = append(ts, Target{ID: id, Addr: fmt.Sprintf("127.0.0.1:%d", 8000+i), Healthy: true, Ready: true})
	}
	return ts
}

func pickN(p *Pool, n int) map[string]int {
	got := map[string]int{}
	for range n {
		b := p.Pick(nil)
		if b == nil {
			got["<nil>"]++
			continue
		}
		got[b.ID]++
		b.Release()
	}
	return got
}

func TestRoundRobinSpreadsEvenlyOverEligible(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	p := NewPool(RoundRobin, 10*time.Second, c.now)
	ts := targets("a", "b", "c", "d")
	ts[2].Healthy = false
	ts[3].Ready = false
	p.Update(ts)
	if got := pickN(p, 10); got["a"] != 5 || got["b"] != 5 {
		t.Fatalf("picks %v, want a and b 5 each", got)
	}
	if p.Available() != 2 || p.Eligible() != 2 {
		t.Fatalf("available %d eligible %d", p.Available(), p.Eligible())
	}
}

func TestEjectionSkipsAndExpires(t *testing.T) {
	for _, policy := range []Policy{RoundRobin, LeastOutstanding} {
		t.Run(policy.String(), func(t *testing.T) {
			c := &clock{t: time.Unix(1000, 0)}
			p := NewPool(policy, 10*time.Second, c.now)
			p.Update(targets("a", "b"))
			a := p.Backends()[0]
			p.Eject(a)
			if got := pickN(p, 10); got["b"] != 10 {
				t.Fatalf("while a is ejected: %v", got)
			}
			if p.Eligible() != 1 || a.EjectedUntil(c.now()).IsZero() {
				t.Fatalf("eligible %d, a ejected until %v", p.Eligible(), a.EjectedUntil(c.now()))
			}
			c.t = c.t.Add(11 * time.Second)
			if got := pickN(p, 100); got["a"] == 0 {
				t.Fatalf("after the ejection time: %v", got)
			}
			p.Eject(a)
			p.Eject(p.Backends()[1])
			if got := pickN(p, 10); got["<nil>"] != 0 {
				t.Fatalf("all ejected must still pick: %v", got)
			}
		})
	}
}

func TestPickOtherThan(t *testing.T) {
	for _, policy := range []Policy{RoundRobin, LeastOutstanding} {
		p := NewPool(policy, time.Second, time.Now)
		p.Update(targets("a", "b"))
		a := p.Backends()[0]
		for range 20 {
			if b := p.Pick(a); b == nil || b.ID != "b" {
				t.Fatalf("%v: Pick(not a) = %v", policy, b)
			}
		}
		p.Update(targets("a"))
		if b := p.Pick(p.Backends()[0]); b != nil {
			t.Fatalf("%v: Pick(not the only one) = %v, want nil", policy, b.ID)
		}
	}
}

func TestLeastOutstandingAvoidsBusyReplica(t *testing.T) {
	p := NewPool(LeastOutstanding, time.Second, time.Now)
	p.Update(targets("busy", "idle"))
	busy := p.Backends()[0]
	if busy.ID != "busy" {
		t.Fatal("order")
	}
	// One request is held on busy: with two backends both are always
	// sampled, and the one with fewer requests in flight wins.
	for busy.Outstanding() == 0 {
		if b := p.Pick(nil); b != busy {
			b.Release()
		}
	}
	for range 50 {
		b := p.Pick(nil)
		if b.ID != "idle" {
			t.Fatalf("picked busy with %d outstanding", busy.Outstanding())
		}
		b.Release()
	}
}

func TestUpdateKeepsStateOfSameReplica(t *testing.T) {
	c := &clock{t: time.Unix(1000, 0)}
	p := NewPool(RoundRobin, time.Minute, c.now)
	p.Update(targets("a", "b"))
	a := p.Backends()[0]
	held := p.Pick(nil)
	if held != a { // round robin: the next one is a
		held.Release()
		held = p.Pick(nil)
	}
	p.Eject(a)
	ts := targets("a", "b", "c")
	ts[1].Ready = false
	p.Update(ts)
	if p.Backends()[0] != a || a.Outstanding() != 1 || a.EjectedUntil(c.now()).IsZero() {
		t.Fatalf("a lost its state across the update")
	}
	held.Release()
	if a.Outstanding() != 0 {
		t.Fatalf("outstanding %d after release", a.Outstanding())
	}
	if got := pickN(p, 4); got["c"] != 4 {
		t.Fatalf("picks %v, want c only (a ejected, b not ready)", got)
	}
}

func TestParsePolicy(t *testing.T) {
	for _, s := range []string{"round_robin", "least_outstanding"} {
		p, err := ParsePolicy(s)
		if err != nil || p.String() != s {
			t.Errorf("%s: %v %v", s, p, err)
		}
	}
	if _, err := ParsePolicy("random"); err == nil {
		t.Error("random accepted")
	}
}
