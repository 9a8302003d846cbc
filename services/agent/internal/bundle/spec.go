package bundle

import (
	"encoding/json"
	"fmt"
	"math"
	"path/filepath"
	"slices"
	"strings"

	specs "github.com/opencontainers/runtime-spec/specs-go"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/agent/internal/atomicfile"
)

// Image is the part of an image's config a container runs with.
type Image struct {
	Entrypoint []string
	Cmd        []string
	Env        []string // KEY=VALUE
	WorkingDir string
	User       string
}

// Limits bound a container's resources. Zero means unlimited (Pids zero
// means DefaultPids).
type Limits struct {
	CPU    float64 // CPUs, 0.5 = half a core
	Memory int64   // bytes
	Pids   int64
}

// Config is everything a bundle is made from.
type Config struct {
	Rootfs      string            // mounted root filesystem (absolute)
	Hostname    string            // the container's hostname
	Image       Image             // from the registry
	Command     []string          // replaces Image.Entrypoint when non-nil
	Args        []string          // replaces Image.Cmd when non-nil
	Env         map[string]string // already resolved; added over Image.Env
	Limits      Limits
	CgroupsPath string // e.g. /zlayer/node-1/<id>
	NetnsPath   string // network namespace to join; "" for a new one
	// Files bind-mounted over the rootfs: container path → host file.
	Files map[string]string
}

// Defaults and bounds for limits.
const (
	DefaultPids = 4096
	// CFSPeriod is the CFS period in microseconds for CPU limits.
	CFSPeriod = 100000
	// MinCPU is the smallest CPU limit: a 1 ms quota per 100 ms period.
	MinCPU = 0.01
	// MinMemory is the smallest memory limit runc and the kernel accept
	// without the container dying while it starts.
	MinMemory = 6 << 20
)

// ValidateLimits reports limits that cannot be applied, as errkind.Invalid.
func ValidateLimits(l Limits, hostCPUs int) error {
	var errs []string
	switch {
	case math.IsNaN(l.CPU) || l.CPU < 0:
		errs = append(errs, fmt.Sprintf("cpu %v: must be positive", l.CPU))
	case l.CPU > 0 && l.CPU < MinCPU:
		errs = append(errs, fmt.Sprintf("cpu %v: below the minimum of %v", l.CPU, MinCPU))
	case l.CPU > float64(hostCPUs):
		errs = append(errs, fmt.Sprintf("cpu %v: more than the node's %d CPUs", l.CPU, hostCPUs))
	}
	switch {
	case l.Memory < 0:
		errs = append(errs, fmt.Sprintf("memory %d: must be positive", l.Memory))
	case l.Memory > 0 && l.Memory < MinMemory:
		errs = append(errs, fmt.Sprintf("memory %d bytes: below the minimum of %d (6Mi)", l.Memory, MinMemory))
	}
	if l.Pids < 0 {
		errs = append(errs, fmt.Sprintf("pids %d: must be positive", l.Pids))
	}
	if len(errs) > 0 {
		return fmt.Errorf("limits: %s: %w", strings.Join(errs, "; "), errkind.Invalid)
	}
	return nil
}

// Process returns the argv and environment the container runs: entrypoint
// and cmd with Docker's override rules (a new command drops the image's
// cmd too), and the image's environment overlaid by the replica's, with a
// default PATH and HOSTNAME.
func Process(c Config) (argv, env []string, err error) {
	entry, cmd := c.Image.Entrypoint, c.Image.Cmd
	if c.Command != nil {
		entry, cmd = c.Command, nil
	}
	if c.Args != nil {
		cmd = c.Args
	}
	argv = append(slices.Clone(entry), cmd...)
	if len(argv) == 0 {
		return nil, nil, fmt.Errorf("no command: the image has no entrypoint or cmd and none is given: %w", errkind.Invalid)
	}
	vals := map[string]string{}
	var order []string
	set := func(k, v string) {
		if _, ok := vals[k]; !ok {
			order = append(order, k)
		}
		vals[k] = v
	}
	set("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
	if c.Hostname != "" {
		set("HOSTNAME", c.Hostname)
	}
	for _, kv := range c.Image.Env {
		k, v, _ := strings.Cut(kv, "=")
		set(k, v)
	}
	for _, k := range slices.Sorted(func(yield func(string) bool) {
		for k := range c.Env {
			if !yield(k) {
				return
			}
		}
	}) {
		set(k, c.Env[k])
	}
	for _, k := range order {
		env = append(env, k+"="+vals[k])
	}
	return argv, env, nil
}

// Spec builds the OCI runtime spec for c. It reads the rootfs (user names,
// the executable) but changes nothing.
func Spec(c Config) (*specs.Spec, error) {
	if err := ValidateLimits(c.Limits, 1<<20); err != nil {
		return nil, err
	}
	argv, env, err := Process(c)
	if err != nil {
		return nil, err
	}
	cwd := c.Image.WorkingDir
	if cwd == "" {
		cwd = "/"
	}
	user, err := ResolveUser(c.Rootfs, c.Image.User)
	if err != nil {
		return nil, err
	}
	if err := CheckExecutable(c.Rootfs, argv[0], cwd, env); err != nil {
		return nil, err
	}
	caps := slices.Clone(DefaultCapabilities)
	s := &specs.Spec{
		Version:  specs.Version,
		Root:     &specs.Root{Path: c.Rootfs},
		Hostname: c.Hostname,
		Process: &specs.Process{
			Args: argv,
			Env:  env,
			Cwd:  cwd,
			User: user,
			Capabilities: &specs.LinuxCapabilities{
				Bounding: caps, Effective: caps, Permitted: caps,
			},
			NoNewPrivileges: true,
		},
		Mounts: defaultMounts(),
		Linux: &specs.Linux{
			CgroupsPath:   c.CgroupsPath,
			Resources:     resources(c.Limits),
			Namespaces:    namespaces(c.NetnsPath),
			Seccomp:       DefaultSeccomp(),
			MaskedPaths:   slices.Clone(MaskedPaths),
			ReadonlyPaths: slices.Clone(ReadonlyPaths),
		},
	}
	for _, dst := range slices.Sorted(func(yield func(string) bool) {
		for k := range c.Files {
			if !yield(k) {
				return
			}
		}
	}) {
		s.Mounts = append(s.Mounts, specs.Mount{
			Destination: dst, Type: "bind", Source: c.Files[dst],
			Options: []string{"rbind", "rprivate", "nosuid", "nodev", "noexec"},
		})
	}
	return s, nil
}

func resources(l Limits) *specs.LinuxResources {
	pids := l.Pids
	if pids == 0 {
		pids = DefaultPids
	}
	r := &specs.LinuxResources{
		// Deny every device; runc adds the standard set (null, zero,
		// random, tty, …) itself.
		Devices: []specs.LinuxDeviceCgroup{{Allow: false, Access: "rwm"}},
		Pids:    &specs.LinuxPids{Limit: &pids},
	}
	if l.CPU > 0 {
		period := uint64(CFSPeriod)
		quota := int64(math.Round(l.CPU * CFSPeriod))
		r.CPU = &specs.LinuxCPU{Quota: &quota, Period: &period}
	}
	if l.Memory > 0 {
		limit := l.Memory
		swap := l.Memory // memory+swap = memory: no swap beyond the limit
		r.Memory = &specs.LinuxMemory{Limit: &limit, Swap: &swap}
	}
	return r
}

func namespaces(netns string) []specs.LinuxNamespace {
	return []specs.LinuxNamespace{
		{Type: specs.PIDNamespace},
		{Type: specs.IPCNamespace},
		{Type: specs.UTSNamespace},
		{Type: specs.MountNamespace},
		{Type: specs.NetworkNamespace, Path: netns},
	}
}

func defaultMounts() []specs.Mount {
	return []specs.Mount{
		{Destination: "/proc", Type: "proc", Source: "proc", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/dev", Type: "tmpfs", Source: "tmpfs", Options: []string{"nosuid", "strictatime", "mode=755", "size=65536k"}},
		{Destination: "/dev/pts", Type: "devpts", Source: "devpts", Options: []string{"nosuid", "noexec", "newinstance", "ptmxmode=0666", "mode=0620", "gid=5"}},
		{Destination: "/dev/shm", Type: "tmpfs", Source: "shm", Options: []string{"nosuid", "noexec", "nodev", "mode=1777", "size=65536k"}},
		{Destination: "/dev/mqueue", Type: "mqueue", Source: "mqueue", Options: []string{"nosuid", "noexec", "nodev"}},
		{Destination: "/sys", Type: "sysfs", Source: "sysfs", Options: []string{"nosuid", "noexec", "nodev", "ro"}},
		{Destination: "/sys/fs/cgroup", Type: "cgroup", Source: "cgroup", Options: []string{"nosuid", "noexec", "nodev", "relatime", "ro"}},
	}
}

// Write writes s as dir/config.json, atomically. It does not wait for the
// disk: runc reads the file at once, and after a power loss the container
// it describes is gone.
func Write(dir string, s *specs.Spec) error {
	b, err := json.Marshal(s)
	if err != nil {
		return fmt.Errorf("encode config.json: %w", err)
	}
	return atomicfile.WriteUnsynced(filepath.Join(dir, "config.json"), b, 0o600)
}
