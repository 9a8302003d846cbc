package raftnode

import (
	"errors"
	"fmt"
	"net"
	"time"

	"google.golang.org/grpc"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/scheduler/internal/pki"
)

// Bootstrap says how a member with no Raft log on disk starts. A member
// whose data dir already holds a log always restarts from it, whatever the
// mode (so a daemon can be restarted with the flags it was first started
// with), except that BootstrapRestart insists on the log being there.
type Bootstrap int

const (
	// BootstrapNew starts a new single-member cluster.
	BootstrapNew Bootstrap = iota + 1
	// BootstrapJoin joins an existing cluster that has already added this
	// member (AddMember); Config.ID and Config.Peers come from the join
	// bundle.
	BootstrapJoin
	// BootstrapRestart requires an existing log and restarts from it.
	BootstrapRestart
)

func (b Bootstrap) String() string {
	switch b {
	case BootstrapNew:
		return "new"
	case BootstrapJoin:
		return "join"
	case BootstrapRestart:
		return "restart"
	}
	return fmt.Sprintf("Bootstrap(%d)", int(b))
}

// Defaults of Config's timing and compaction fields.
const (
	DefaultTickInterval    = 100 * time.Millisecond
	DefaultElectionTicks   = 10
	DefaultHeartbeatTicks  = 1
	DefaultSnapshotEntries = 10000
	DefaultCatchUpEntries  = 5000
	DefaultMaxVoters       = 5
)

// Config is what a Node is made from. Zero values of the timing and
// compaction fields take the defaults above.
type Config struct {
	// ID is this member's Raft ID. Zero means: the one recorded in the data
	// dir, or a new random one for BootstrapNew. Required for BootstrapJoin.
	ID uint64
	// DataDir holds the Raft state: DataDir/wal and DataDir/snap.
	DataDir string
	// PeerAddr is the TCP address RaftService listens on (host:port). When
	// empty, EnablePeers listens on the advertised address.
	PeerAddr string
	// PeerListener, when set, is used instead of listening on PeerAddr.
	// The Node closes it.
	PeerListener net.Listener
	// AdvertiseAddr is how the other members reach this one; PeerAddr when
	// empty. Recorded in Raft when the cluster is created or initialised.
	AdvertiseAddr string
	// TLS are this member's credentials. Nil keeps the peer transport off
	// (a single-member cluster before `zlctl cluster init`); EnablePeers
	// turns it on later.
	TLS *pki.Credentials
	// Bootstrap says how to start when DataDir holds no log.
	Bootstrap Bootstrap
	// PeerServices, when set, registers more gRPC services on the peer
	// listener (the node side's logs and exec relay). Only current members
	// may call them: the peer server checks the caller's certificate.
	PeerServices func(grpc.ServiceRegistrar)
	// Peers are the members to contact when joining (from the join bundle),
	// used only to find their addresses until the log says otherwise.
	Peers []Member

	// TickInterval is the length of one Raft tick (default 100ms).
	TickInterval time.Duration
	// ElectionTicks is the election timeout in ticks (default 10); the
	// actual timeout is randomised in [ElectionTicks, 2*ElectionTicks).
	ElectionTicks int
	// HeartbeatTicks is the leader's heartbeat interval in ticks (default 1).
	HeartbeatTicks int
	// SnapshotEntries: take a snapshot and compact the log every this many
	// applied entries (default 10000).
	SnapshotEntries uint64
	// CatchUpEntries is how many entries are kept behind a snapshot so that
	// slightly lagging members catch up without one (default
	// min(5000, SnapshotEntries)).
	CatchUpEntries uint64
	// MaxVoters caps the voting members (default 5): members added beyond
	// it stay learners — they receive the log, serve reads and forward
	// writes, but a commit never waits for them — and one is promoted when
	// a voter is removed. Raft's writes cost a round trip to a majority of
	// voters, so a cluster of hundreds of nodes keeps a few voters.
	MaxVoters int
	// ProposalTimeout bounds Propose, LinearizableRead and membership
	// changes whose context has no deadline (default 10 election timeouts).
	ProposalTimeout time.Duration
}

func (c *Config) setDefaults() {
	if c.TickInterval <= 0 {
		c.TickInterval = DefaultTickInterval
	}
	if c.ElectionTicks <= 0 {
		c.ElectionTicks = DefaultElectionTicks
	}
	if c.HeartbeatTicks <= 0 {
		c.HeartbeatTicks = DefaultHeartbeatTicks
	}
	if c.SnapshotEntries == 0 {
		c.SnapshotEntries = DefaultSnapshotEntries
	}
	if c.CatchUpEntries == 0 {
		c.CatchUpEntries = min(DefaultCatchUpEntries, c.SnapshotEntries)
	}
	if c.ProposalTimeout <= 0 {
		c.ProposalTimeout = 10 * time.Duration(c.ElectionTicks) * c.TickInterval
	}
	if c.MaxVoters <= 0 {
		c.MaxVoters = DefaultMaxVoters
	}
	if c.AdvertiseAddr == "" {
		switch {
		case c.PeerListener != nil:
			c.AdvertiseAddr = c.PeerListener.Addr().String()
		case checkAddr(c.PeerAddr) == nil:
			c.AdvertiseAddr = c.PeerAddr
		}
	}
}

// Validate names every bad field.
func (c Config) Validate() error {
	var errs []error
	if c.DataDir == "" {
		errs = append(errs, errors.New("data dir: must not be empty"))
	}
	switch c.Bootstrap {
	case BootstrapNew, BootstrapRestart:
	case BootstrapJoin:
		if c.ID == 0 {
			errs = append(errs, errors.New("id: joining needs the member id from the join bundle"))
		}
		if c.TLS == nil {
			errs = append(errs, errors.New("tls: joining needs the credentials from the join bundle"))
		}
	default:
		errs = append(errs, fmt.Errorf("bootstrap: %v is not new, join or restart", c.Bootstrap))
	}
	if c.TLS != nil && c.ID != 0 && c.TLS.MemberID() != c.ID {
		errs = append(errs, fmt.Errorf("tls: certificate is for member %x, not %x", c.TLS.MemberID(), c.ID))
	}
	if c.AdvertiseAddr != "" {
		if err := checkAddr(c.AdvertiseAddr); err != nil {
			errs = append(errs, fmt.Errorf("advertise addr: %w", err))
		}
	}
	if c.ElectionTicks <= c.HeartbeatTicks {
		errs = append(errs, fmt.Errorf("election ticks: %d must exceed heartbeat ticks %d", c.ElectionTicks, c.HeartbeatTicks))
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("raft config: %w: %w", errkind.Invalid, err)
	}
	return nil
}

// checkAddr accepts host:port with a non-empty host and a numeric port, the
// form other members can dial.
func checkAddr(addr string) error {
	host, port, err := net.SplitHostPort(addr)
	if err != nil {
		return fmt.Errorf("%q: %w", addr, err)
	}
	if host == "" || net.ParseIP(host).IsUnspecified() {
		return fmt.Errorf("%q: needs a host other members can dial", addr)
	}
	if _, err := net.LookupPort("tcp", port); err != nil {
		return fmt.Errorf("%q: bad port: %w", addr, err)
	}
	return nil
}
