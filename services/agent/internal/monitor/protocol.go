package monitor

import (
	"encoding/json"
	"errors"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"time"
)

// Options are what the agent tells a monitor, passed as flags.
type Options struct {
	ID        string // container id
	Bundle    string // OCI bundle directory
	Runc      string // runc binary
	RuncRoot  string // runc --root (per node)
	Dir       string // where the monitor writes pid, exit and runc.log files
	Log       string // container log file
	LogMax    int64  // rotate the log at this size
	LogKeep   int    // rotated files kept
	MemCgroup string // memory cgroup directory, for the OOM kill count; may be empty
	// Start runs the container's process too (`runc run -d`), instead of
	// only creating the container (`runc create`) for the agent to start
	// later (with `runc start`, after init steps).
	Start bool
}

// Args renders o as a monitor command line (without the program name).
func (o Options) Args() []string {
	return []string{
		"-id", o.ID, "-bundle", o.Bundle, "-runc", o.Runc, "-runc-root", o.RuncRoot,
		"-dir", o.Dir, "-log", o.Log,
		"-log-max", strconv.FormatInt(o.LogMax, 10), "-log-keep", strconv.Itoa(o.LogKeep),
		"-memcg", o.MemCgroup, "-start=" + strconv.FormatBool(o.Start),
	}
}

// ParseArgs is the inverse of Args.
func ParseArgs(args []string) (Options, error) {
	var o Options
	fs := flag.NewFlagSet("zlayer-monitor", flag.ContinueOnError)
	fs.StringVar(&o.ID, "id", "", "container id")
	fs.StringVar(&o.Bundle, "bundle", "", "bundle directory")
	fs.StringVar(&o.Runc, "runc", "runc", "runc binary")
	fs.StringVar(&o.RuncRoot, "runc-root", "", "runc state root")
	fs.StringVar(&o.Dir, "dir", "", "monitor files directory")
	fs.StringVar(&o.Log, "log", "", "container log file")
	fs.Int64Var(&o.LogMax, "log-max", 10<<20, "log rotation size in bytes")
	fs.IntVar(&o.LogKeep, "log-keep", 2, "rotated log files kept")
	fs.StringVar(&o.MemCgroup, "memcg", "", "memory cgroup directory")
	fs.BoolVar(&o.Start, "start", false, "runc run -d instead of runc create")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if o.ID == "" || o.Bundle == "" || o.Dir == "" || o.Log == "" || o.RuncRoot == "" {
		return o, errors.New("-id, -bundle, -runc-root, -dir and -log are required")
	}
	return o, nil
}

// File names inside Options.Dir.
const (
	ExitFile    = "exit.json"
	PidFile     = "container.pid"
	RuncLogFile = "runc.log"
)

// Exit is how a container ended, as written by its monitor.
type Exit struct {
	Pid       int       `json:"pid"`
	Code      int       `json:"code"`             // exit code; 128+n when killed by signal n
	Signal    int       `json:"signal,omitempty"` // the killing signal, 0 if it exited
	At        time.Time `json:"at"`
	OOMKilled bool      `json:"oom_killed,omitempty"`
	OOMKills  uint64    `json:"oom_kills,omitempty"` // the cgroup's oom_kill count at exit
}

// ReadExit reads the exit file in dir; os.ErrNotExist if there is none.
func ReadExit(dir string) (Exit, error) {
	var e Exit
	b, err := os.ReadFile(filepath.Join(dir, ExitFile))
	if err != nil {
		return e, err
	}
	if err := json.Unmarshal(b, &e); err != nil {
		return e, fmt.Errorf("exit file: %w", err)
	}
	return e, nil
}
