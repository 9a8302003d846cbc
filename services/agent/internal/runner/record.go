package runner

import (
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"time"

	"zlayer.dev/services/agent/internal/atomicfile"
	"zlayer.dev/services/agent/internal/images"
	"zlayer.dev/services/agent/internal/monitor"
)

// Identity says which replica a container is.
type Identity struct {
	Deployment string `json:"deployment,omitempty"`
	Service    string `json:"service,omitempty"`
	Index      int    `json:"index"`
}

// Spec is what to run.
type Spec struct {
	ID       string            `json:"id"`
	Identity Identity          `json:"identity"`
	Image    string            `json:"image"`
	Pull     images.Policy     `json:"pull,omitempty"`
	Command  []string          `json:"command,omitempty"` // nil: the image's entrypoint
	Args     []string          `json:"args,omitempty"`    // nil: the image's cmd
	Env      map[string]string `json:"env,omitempty"`     // values may be $E:NAME
	CPU      float64           `json:"cpu,omitempty"`     // CPUs; 0 unlimited
	Memory   int64             `json:"memory,omitempty"`  // bytes; 0 unlimited
	Ports    []Port            `json:"ports,omitempty"`   // informational: what the container listens on
	Init     []InitStep        `json:"init,omitempty"`    // run in order before the process starts
	// Groups are the overlays the container is on; it reaches the
	// containers it shares one with. GroupsSet says they were given (even
	// none); without them (an older scheduler, or a record from before
	// overlays) see Runner.isolate.
	Groups    []string `json:"groups,omitempty"`
	GroupsSet bool     `json:"groups_set,omitempty"`
}

// Port is one endpoint port the container listens on.
type Port struct {
	Name     string `json:"name,omitempty"`
	Protocol string `json:"protocol,omitempty"`
	Port     uint32 `json:"port"`
}

// Record is everything known about one container; it is what the state
// file holds and what List returns.
type Record struct {
	Spec        Spec          `json:"spec"`
	State       State         `json:"state"`
	ImageDigest string        `json:"image_digest,omitempty"`
	CreatedAt   time.Time     `json:"created_at"`
	StartedAt   time.Time     `json:"started_at,omitzero"`
	Pid         int           `json:"pid,omitempty"`
	MonitorPid  int           `json:"monitor_pid,omitempty"`
	MonitorT0   uint64        `json:"monitor_start,omitempty"` // detects pid reuse
	IP          string        `json:"ip,omitempty"`
	Exit        *monitor.Exit `json:"exit,omitempty"`
	Reason      string        `json:"reason,omitempty"` // why it is Lost, or what went wrong while stopping
	Cgroup      string        `json:"cgroup"`
	Netns       string        `json:"netns"`
	// CNIID is the CNI container id the address is held under: a warm
	// pool slot's id when the container took one, else empty (the
	// container's own id).
	CNIID string       `json:"cni_id,omitempty"`
	Init  []InitResult `json:"init,omitempty"` // how the init steps went
}

// ID is the container id.
func (r Record) ID() string { return r.Spec.ID }

// cniID is the CNI container id of the container's network.
func (r Record) cniID() string {
	if r.CNIID != "" {
		return r.CNIID
	}
	return r.Spec.ID
}

const stateFile = "state.json"

func (rn *Runner) dir(id string) string { return filepath.Join(rn.cfg.StateDir, "containers", id) }

// save writes rec's state file atomically and durably.
func (rn *Runner) save(rec *Record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state of %s: %w", rec.ID(), err)
	}
	return atomicfile.Write(filepath.Join(rn.dir(rec.ID()), stateFile), b, 0o600)
}

// note writes rec's state file atomically without waiting for the disk.
// It is for the steps of a create (rec in StateCreating) after the first,
// durable, save: an agent that crashes reads what note wrote (the page
// cache outlives the process) and finds the monitor to stop; a power loss
// may leave the first save instead, which is as good, because it also
// ends every process and namespace, and what is left on disk (the root
// filesystem, the address lease) Recover removes either way.
func (rn *Runner) note(rec *Record) error {
	b, err := json.MarshalIndent(rec, "", "  ")
	if err != nil {
		return fmt.Errorf("encode state of %s: %w", rec.ID(), err)
	}
	return atomicfile.WriteUnsynced(filepath.Join(rn.dir(rec.ID()), stateFile), b, 0o600)
}

func load(dir string) (*Record, error) {
	b, err := os.ReadFile(filepath.Join(dir, stateFile))
	if err != nil {
		return nil, err
	}
	var rec Record
	if err := json.Unmarshal(b, &rec); err != nil {
		return nil, fmt.Errorf("state file %s: %w", dir, err)
	}
	return &rec, nil
}
