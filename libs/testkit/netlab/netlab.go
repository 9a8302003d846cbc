// Package netlab builds small networks of hosts on one machine for tests
// and devctl: each host is a network namespace joined to a bridge by a veth
// pair, with its own address. Hosts can be cut off (link down) and
// reconnected. Everything it makes is named with the lab's prefix and
// removed by Close. It needs root and iproute2; it does not start anything
// inside the hosts.
package netlab

import (
	"context"
	"errors"
	"fmt"
	"net/netip"
	"os/exec"
	"strings"
)

// Lab is a bridge and the hosts attached to it.
type Lab struct {
	Name   string
	Bridge string
	Prefix netip.Prefix // e.g. 10.250.7.0/24; the bridge takes .1
	hosts  []*Host
}

// Host is one network namespace on the lab's bridge.
type Host struct {
	Name  string
	Netns string     // as `ip netns` names it
	Addr  netip.Addr // on the lab's subnet
	veth  string     // host side of the veth pair
}

func ip(args ...string) error {
	out, err := exec.Command("ip", args...).CombinedOutput()
	if err != nil {
		return fmt.Errorf("ip %s: %w: %s", strings.Join(args, " "), err, strings.TrimSpace(string(out)))
	}
	return nil
}

// New creates the lab's bridge with the first address of prefix. name must
// be short (it prefixes interface names of at most 15 characters).
func New(name, prefix string) (*Lab, error) {
	p, err := netip.ParsePrefix(prefix)
	if err != nil {
		return nil, fmt.Errorf("lab %s: %w", name, err)
	}
	if len(name) > 8 {
		return nil, fmt.Errorf("lab name %q: at most 8 characters", name)
	}
	l := &Lab{Name: name, Bridge: "zb-" + name, Prefix: p.Masked()}
	if err := ip("link", "add", l.Bridge, "type", "bridge"); err != nil {
		return nil, err
	}
	gw := l.Prefix.Addr().Next()
	if err := errors.Join(
		ip("addr", "add", netip.PrefixFrom(gw, p.Bits()).String(), "dev", l.Bridge),
		ip("link", "set", l.Bridge, "up"),
	); err != nil {
		_ = ip("link", "del", l.Bridge)
		return nil, err
	}
	return l, nil
}

// AddHost creates a namespace attached to the bridge, with loopback up and
// the next free address.
func (l *Lab) AddHost(name string) (*Host, error) {
	addr := l.Prefix.Addr().Next().Next()
	for range l.hosts {
		addr = addr.Next()
	}
	h := &Host{Name: name, Netns: "zl-" + l.Name + "-" + name, Addr: addr, veth: fmt.Sprintf("zv%s%d", l.Name, len(l.hosts))}
	if len(h.veth) > 15 {
		return nil, fmt.Errorf("host %s: interface name %q too long", name, h.veth)
	}
	if err := ip("netns", "add", h.Netns); err != nil {
		return nil, err
	}
	err := errors.Join(
		ip("link", "add", h.veth, "type", "veth", "peer", "name", "eth0", "netns", h.Netns),
		ip("link", "set", h.veth, "master", l.Bridge),
		ip("link", "set", h.veth, "up"),
		ip("-n", h.Netns, "addr", "add", netip.PrefixFrom(addr, l.Prefix.Bits()).String(), "dev", "eth0"),
		ip("-n", h.Netns, "link", "set", "eth0", "up"),
		ip("-n", h.Netns, "link", "set", "lo", "up"),
		ip("-n", h.Netns, "route", "add", "default", "via", l.Prefix.Addr().Next().String()),
	)
	if err != nil {
		_ = ip("link", "del", h.veth)
		_ = ip("netns", "del", h.Netns)
		return nil, fmt.Errorf("host %s: %w", name, err)
	}
	l.hosts = append(l.hosts, h)
	return h, nil
}

// Command returns cmd to run inside the host's network namespace. It
// enters the network namespace only (nsenter), not `ip netns exec`, which
// also remounts /sys in a new mount namespace and so hides the cgroup
// mounts that runc needs.
func (h *Host) Command(ctx context.Context, name string, args ...string) *exec.Cmd {
	return exec.CommandContext(ctx, "nsenter", append([]string{"--net=/run/netns/" + h.Netns, "--", name}, args...)...)
}

// Cut takes the host's link down: it can reach nothing and nothing reaches it.
func (h *Host) Cut() error { return ip("link", "set", h.veth, "down") }

// Restore brings a cut link back.
func (h *Host) Restore() error { return ip("link", "set", h.veth, "up") }

// Close removes every host and the bridge.
func (l *Lab) Close() error {
	var errs []error
	for _, h := range l.hosts {
		errs = append(errs, ip("link", "del", h.veth), ip("netns", "del", h.Netns))
	}
	errs = append(errs, ip("link", "del", l.Bridge))
	return errors.Join(errs...)
}
