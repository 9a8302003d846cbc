package raftnode

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"zlayer.dev/libs/errkind"
)

// TestMaxVoters: members beyond Config.MaxVoters stay learners, yet read
// and write through the cluster; removing a voter promotes a learner.
func TestMaxVoters(t *testing.T) {
	c := newCluster(t, func(cfg *Config) { cfg.MaxVoters = 3 })
	c.add()
	c.add()
	leader := c.waitLeader(nil)

	// A fourth member: added as a learner, it catches up and stays one.
	fourth := c.join()
	id := fourth.node.ID()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	role := func(of uint64) string {
		for _, m := range c.waitLeader(nil).node.Members() {
			if m.ID == of {
				if m.Learner {
					return "learner"
				}
				return "voter"
			}
		}
		return "none"
	}
	propose(t, fourth, "k=from-learner") // forwarded to the leader
	c.converged(map[string]string{"k": "from-learner"})
	// Promotions happen within a few heartbeats of catching up; give it
	// many more, then check it was not promoted.
	time.Sleep(50 * testTick)
	if r := role(id); r != "learner" {
		t.Fatalf("fourth member with MaxVoters 3 is a %s, want learner", r)
	}
	voters := 0
	for _, m := range leader.node.Members() {
		if !m.Learner {
			voters++
		}
	}
	if voters != 3 {
		t.Fatalf("%d voters, want 3", voters)
	}

	// Remove a voter other than the leader: the learner takes its place.
	leader = c.waitLeader(nil)
	var gone *member
	for _, m := range c.members {
		if m != leader && m != fourth {
			gone = m
			break
		}
	}
	if err := leader.node.RemoveMember(ctx, gone.node.ID()); err != nil {
		t.Fatalf("RemoveMember: %v", err)
	}
	gone.kill()
	eventually(t, fmt.Sprintf("learner %x promoted after a voter was removed", id), func() bool { return role(id) == "voter" })
	propose(t, fourth, "k=after")
}

// TestOnlyVoterStays: with one voter and a learner, the voter cannot be
// removed (raft cannot run without a voter).
func TestOnlyVoterStays(t *testing.T) {
	c := newCluster(t, func(cfg *Config) { cfg.MaxVoters = 1 })
	leader := c.waitLeader(nil)
	learner := c.join()
	ctx, cancel := context.WithTimeout(context.Background(), testTimeout)
	defer cancel()
	propose(t, learner, "k=v")
	err := leader.node.RemoveMember(ctx, leader.node.ID())
	if !errors.Is(err, errkind.Precondition) {
		t.Fatalf("removing the only voter: %v, want a precondition error", err)
	}
	propose(t, leader, "k=still")
	c.converged(map[string]string{"k": "still"})
}
