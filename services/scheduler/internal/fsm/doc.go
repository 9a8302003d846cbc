// Package fsm is the scheduler's replicated state machine: deployments with
// their versions, replicas and their placement, nodes, and recent events.
// Raft hands it committed commands (schedulerv1.Command) in log order; it
// applies each one deterministically — no clocks, no randomness, no I/O but
// its own bbolt file — so every member reaches the same state. Times come
// from the proposer, inside the command.
//
// The state lives in memory for reads and is written through to bbolt in the
// same transaction as the applied index, so a restart resumes where it left
// off and entries replayed from the Raft log after a crash (index <= the
// stored applied index) are skipped. It never decides anything: placement
// and rollouts are the reconciler's, which proposes plans this package
// checks against the state before applying.
package fsm
