// Package nodenet removes, for tests, the host rules a node's agent leaves
// in place on purpose when it stops (its containers would need them): the
// isolation chains in the filter table and their ipsets. The names follow
// services/agent/internal/netns: bridge "zl<hash>", chains "ZLISO-<hash>"
// and "ZLISO-<hash>-s<slot>", ipsets "zl<hash>-…".
package nodenet

import (
	"errors"
	"fmt"
	"os/exec"
	"strings"

	"github.com/vishvananda/netlink"
)

// RemoveIsolation deletes the FORWARD jumps for bridge and the isolation
// chains and ipsets that go with it, in the calling process's network
// namespace.
func RemoveIsolation(bridge string) error {
	chain := "ZLISO-" + strings.TrimPrefix(bridge, "zl")
	var errs []error
	for _, dir := range []string{"-i", "-o"} {
		for exec.Command("iptables", "-w", "-C", "FORWARD", dir, bridge, "-j", chain).Run() == nil {
			if out, err := exec.Command("iptables", "-w", "-D", "FORWARD", dir, bridge, "-j", chain).CombinedOutput(); err != nil {
				errs = append(errs, fmt.Errorf("delete FORWARD jump: %v: %s", err, out))
				break
			}
		}
	}
	out, err := exec.Command("iptables", "-w", "-S").Output()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("iptables -S: %w", err))...)
	}
	var chains []string
	for _, line := range strings.Split(string(out), "\n") {
		if f := strings.Fields(line); len(f) == 2 && f[0] == "-N" && (f[1] == chain || strings.HasPrefix(f[1], chain+"-")) {
			chains = append(chains, f[1])
		}
	}
	for _, c := range chains {
		exec.Command("iptables", "-w", "-F", c).Run() //nolint:errcheck // -X says what went wrong
	}
	for _, c := range chains {
		if out, err := exec.Command("iptables", "-w", "-X", c).CombinedOutput(); err != nil {
			errs = append(errs, fmt.Errorf("delete chain %s: %v: %s", c, err, out))
		}
	}
	sets, err := netlink.IpsetListAll()
	if err != nil {
		return errors.Join(append(errs, fmt.Errorf("list ipsets: %w", err))...)
	}
	for _, s := range sets {
		if strings.HasPrefix(s.SetName, bridge+"-") {
			if err := netlink.IpsetDestroy(s.SetName); err != nil {
				errs = append(errs, fmt.Errorf("destroy ipset %s: %w", s.SetName, err))
			}
		}
	}
	return errors.Join(errs...)
}
