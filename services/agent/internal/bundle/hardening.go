package bundle

import specs "github.com/opencontainers/runtime-spec/specs-go"

// DefaultCapabilities is the capability set every container gets: enough
// to run as root inside the container, bind low ports and change owners,
// nothing that administers the host. It is the set Docker and containerd
// grant less CAP_NET_RAW: with raw and packet sockets a container could
// send from another container's address, or answer ARP for it, on the
// node's bridge and get past the rules that keep deployments apart (they
// trust source addresses). ping still works, through ICMP datagram
// sockets (netns.Create opens them to every group).
var DefaultCapabilities = []string{
	"CAP_CHOWN", "CAP_DAC_OVERRIDE", "CAP_FSETID", "CAP_FOWNER", "CAP_MKNOD",
	"CAP_SETGID", "CAP_SETUID", "CAP_SETFCAP", "CAP_SETPCAP",
	"CAP_NET_BIND_SERVICE", "CAP_SYS_CHROOT", "CAP_KILL", "CAP_AUDIT_WRITE",
}

// MaskedPaths are kernel files hidden from containers.
var MaskedPaths = []string{
	"/proc/acpi", "/proc/asound", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
	"/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi",
	"/sys/firmware", "/sys/devices/virtual/powercap",
}

// ReadonlyPaths are kernel files containers may read but not change.
var ReadonlyPaths = []string{
	"/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger",
}

// deniedSyscalls fail with EPERM in every container.
//
// The profile is a deny list over an allow-all default rather than Docker's
// long allow list: almost everything on Docker's list of refusals already
// needs a capability containers do not get (CAP_SYS_ADMIN, CAP_SYS_MODULE,
// CAP_SYS_TIME, …), and an allow list written here by hand would break
// programs on the first syscall it forgot. Denied here are the calls that
// reach kernel attack surface without such a capability, or that should
// stay refused even if a capability is added later: kernel modules and
// kexec, keyrings, BPF and perf, userfaultfd, the new mount API, namespace
// changes, clock and swap changes, cross-process memory access and
// obsolete calls.
var deniedSyscalls = []string{
	"acct", "add_key", "bpf", "clock_adjtime", "clock_settime", "create_module",
	"delete_module", "finit_module", "fsconfig", "fsmount", "fsopen", "fspick",
	"get_kernel_syms", "get_mempolicy", "init_module", "ioperm", "iopl", "kcmp",
	"kexec_file_load", "kexec_load", "keyctl", "lookup_dcookie", "mbind",
	"mount", "mount_setattr", "move_mount", "move_pages", "name_to_handle_at",
	"nfsservctl", "open_by_handle_at", "open_tree", "perf_event_open",
	"pivot_root", "process_vm_readv", "process_vm_writev", "ptrace",
	"query_module", "quotactl", "quotactl_fd", "reboot", "request_key",
	"set_mempolicy", "setns", "settimeofday", "stime", "swapoff", "swapon",
	"sysfs", "_sysctl", "umount", "umount2", "unshare", "uselib",
	"userfaultfd", "ustat", "vm86", "vm86old",
}

// DefaultSeccomp returns the default seccomp profile: allow, except
// deniedSyscalls, which fail with EPERM.
func DefaultSeccomp() *specs.LinuxSeccomp {
	eperm := uint(1)
	return &specs.LinuxSeccomp{
		DefaultAction: specs.ActAllow,
		Architectures: []specs.Arch{specs.ArchX86_64, specs.ArchX86, specs.ArchX32, specs.ArchAARCH64, specs.ArchARM},
		Syscalls: []specs.LinuxSyscall{{
			Names:    append([]string(nil), deniedSyscalls...),
			Action:   specs.ActErrno,
			ErrnoRet: &eperm,
		}},
	}
}
