package netns

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"

	"golang.org/x/sys/unix"
)

// Create makes a new network namespace with its loopback interface up and
// pins it at path (a bind mount of the namespace over an empty file), so
// it outlives every process in it and can be joined by path.
func Create(path string) (err error) {
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return fmt.Errorf("create netns %s: %w", path, err)
	}
	f, err := os.OpenFile(path, os.O_RDONLY|os.O_CREATE|os.O_EXCL, 0o444)
	if err != nil {
		return fmt.Errorf("create netns %s: %w", path, err)
	}
	f.Close()
	defer func() {
		if err != nil {
			os.Remove(path)
		}
	}()
	errc := make(chan error, 1)
	go func() {
		// The thread that unshares is left locked, so the runtime ends it
		// when this goroutine returns instead of reusing a thread that sits
		// in the new namespace.
		runtime.LockOSThread()
		if err := unix.Unshare(unix.CLONE_NEWNET); err != nil {
			errc <- fmt.Errorf("unshare: %w", err)
			return
		}
		// What the loopback CNI plugin would do, without a process: set lo
		// up (the kernel gives it 127.0.0.1 and ::1).
		if err := loopbackUp(); err != nil {
			errc <- err
			return
		}
		if err := netSysctls(); err != nil {
			errc <- err
			return
		}
		tid := unix.Gettid()
		src := fmt.Sprintf("/proc/%d/task/%d/ns/net", os.Getpid(), tid)
		if err := unix.Mount(src, path, "none", unix.MS_BIND, ""); err != nil {
			errc <- fmt.Errorf("bind mount: %w", err)
			return
		}
		errc <- nil
	}()
	if err := <-errc; err != nil {
		return fmt.Errorf("create netns %s: %w", path, err)
	}
	return nil
}

// Remove unpins and deletes the namespace at path. A missing path is not
// an error, so Remove can finish work a crash interrupted.
func Remove(path string) error {
	if err := unix.Unmount(path, unix.MNT_DETACH); err != nil && !errors.Is(err, unix.EINVAL) && !errors.Is(err, unix.ENOENT) {
		return fmt.Errorf("remove netns %s: unmount: %w", path, err)
	}
	if err := os.Remove(path); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("remove netns %s: %w", path, err)
	}
	return nil
}

// nsSysctls are set in every new namespace, before any interface but lo
// exists. Interfaces made later get no IPv6 at all (lo keeps ::1): the
// isolation rules are IPv4 (isolate.go), and a link-local IPv6 address on
// the bridge would reach other deployments' containers around them.
// Containers do not get CAP_NET_RAW (bundle.DefaultCapabilities), so ping
// uses ICMP datagram sockets, which ping_group_range opens to every group.
var nsSysctls = [][2]string{
	{"/proc/sys/net/ipv6/conf/default/disable_ipv6", "1"},
	{"/proc/sys/net/ipv4/ping_group_range", "0 2147483647"},
}

// netSysctls sets nsSysctls in the calling thread's network namespace.
// A kernel without IPv6 has no file for it, and nothing to turn off.
func netSysctls() error {
	for _, kv := range nsSysctls {
		if err := os.WriteFile(kv[0], []byte(kv[1]), 0o644); err != nil && !errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("sysctl %s: %w", kv[0], err)
		}
	}
	return nil
}

// loopbackUp sets lo up in the calling thread's network namespace.
func loopbackUp() error {
	fd, err := unix.Socket(unix.AF_INET, unix.SOCK_DGRAM|unix.SOCK_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("loopback up: socket: %w", err)
	}
	defer unix.Close(fd)
	ifr, err := unix.NewIfreq("lo")
	if err != nil {
		return fmt.Errorf("loopback up: %w", err)
	}
	if err := unix.IoctlIfreq(fd, unix.SIOCGIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: get flags: %w", err)
	}
	ifr.SetUint16(ifr.Uint16() | unix.IFF_UP)
	if err := unix.IoctlIfreq(fd, unix.SIOCSIFFLAGS, ifr); err != nil {
		return fmt.Errorf("loopback up: set flags: %w", err)
	}
	return nil
}
