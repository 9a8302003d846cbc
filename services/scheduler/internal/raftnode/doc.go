// Package raftnode is the scheduler's Raft member: etcd's raft library
// (go.etcd.io/raft/v3) with a durable log, snapshots, a mutually
// authenticated gRPC transport and cluster membership. The state machine
// (internal/fsm) plugs in through FSM; this package never looks inside
// entries or snapshots of it, and it knows nothing of deployments, nodes or
// placement.
//
// # The Ready loop
//
// One goroutine (Run) owns the raft.Node's Ready channel and handles each
// Ready in the order the library requires: persist, send, apply, Advance.
//
//   - Persist: a snapshot (file, then its WAL marker), then entries and hard
//     state into etcd's WAL (go.etcd.io/etcd/server/v3/storage/wal), which
//     fsyncs whenever raft.MustSync says so; then the same into the
//     raft.MemoryStorage the library reads.
//   - Send: messages go to per-peer queues only after that, so nothing a
//     member promised (a vote, an acknowledged append) can be lost in a
//     crash.
//   - Apply: a received snapshot restores the FSM; committed entries go to
//     FSM.Apply in order; configuration changes update the membership;
//     ReadIndex answers release waiting linearizable reads.
//   - Every Config.SnapshotEntries applied entries (and after every
//     membership change, so that new members can use the snapshot) the FSM's
//     snapshot and the membership are written as a snapshot, and the
//     in-memory log is compacted, keeping Config.CatchUpEntries entries;
//     older snapshot files and unlocked WAL segments are purged.
//
// On restart the newest snapshot the WAL knows about is loaded (FSM.Restore
// if the FSM is behind it) and raft re-delivers every committed entry after
// it; the FSM ignores those at or below its own applied index.
//
// # Proposals and reads
//
// Entries carry a small header naming the proposing member and a request ID,
// so Propose on any member returns the FSM's result when the entry is
// applied there. A follower's proposal reaches the leader as a raft MsgProp
// over the peer transport (raft's own forwarding). Propose fails fast with
// errkind.Unavailable when the member knows no leader, and otherwise when
// its context (or Config.ProposalTimeout) ends first — which is what a
// member cut off from the majority sees, since its proposals cannot commit.
// LinearizableRead is raft's ReadIndex (confirmed by a quorum of
// heartbeats), then a wait until this member has applied that index.
// CheckQuorum makes a leader without a majority step down; PreVote keeps a
// reconnecting member from deposing a healthy leader.
//
// # Peer transport
//
// RaftService (proto/zlayer/scheduler/v1/raft.proto) is served on the peer
// TCP address with TLS 1.3 and client certificates required; both sides
// verify the other against the cluster CA (internal/pki). Each member keeps
// one client stream per peer; the member ID in the caller's certificate
// must be the sender of every message it streams, and removed members are
// refused. A full queue or broken stream drops messages and reports the peer
// unreachable: raft retransmits.
//
// # Membership, bootstrap and join
//
// Members are recorded in the log itself: each configuration change carries
// the member's ID and peer address, and snapshots carry the whole table, so
// every member knows every address. The flow, like Swarm's:
//
//  1. A scheduler with an empty data dir and no --join starts a
//     single-member cluster (BootstrapNew) with the peer transport off —
//     the default for one machine.
//  2. `zlctl cluster init [--advertise-addr HOST:PORT]` (ClusterService
//     InitCluster, internal/clusterserver) creates the cluster CA and this
//     member's certificate under <data-dir>/pki, starts RaftService on
//     --peer-addr (or on the advertised address when that is empty) and
//     records the advertised address through Raft (EnablePeers). From then
//     on the scheduler starts with peers on, listening on --peer-addr, else
//     --advertise-addr, else the address Raft recorded.
//  3. `zlctl cluster add-member HOST:PORT` on any member (every member holds
//     the CA) allocates a random member ID, adds it as a learner through
//     Raft (AddMember), issues its certificate and writes a join bundle —
//     member ID, certificate and key, the CA certificate and key, the CA
//     fingerprint and the current members — to a file readable only by its
//     owner. The bundle is a secret: whoever holds it can join.
//  4. The new scheduler starts with --join FILE (BootstrapJoin): it installs
//     the credentials under its data dir and waits for the leader, which
//     sends it the log or a snapshot. Once its log has caught up, the
//     leader promotes it to a voter — while there are fewer than
//     Config.MaxVoters (5) voters; beyond that it stays a learner, which
//     gets the log and forwards writes, until a voter is removed — so
//     adding a member never costs the cluster its quorum while the new one
//     is still starting, and hundreds of members still commit with five.
//  5. `zlctl cluster remove-member ID` removes a member through Raft; its ID
//     is refused from then on, and a removed member's Run returns
//     ErrRemoved.
//
// A scheduler whose certificate was signed by another CA fails the TLS
// handshake in both directions and never receives anything; a certificate
// of this CA naming a different member ID cannot send as another member.
package raftnode
