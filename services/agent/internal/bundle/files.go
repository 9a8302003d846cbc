package bundle

import (
	"bufio"
	"bytes"
	"fmt"
	"net"
	"strings"
)

// Hosts returns a container's /etc/hosts: localhost and its own name.
func Hosts(hostname string, ip net.IP) []byte {
	var b bytes.Buffer
	b.WriteString("127.0.0.1\tlocalhost\n::1\tlocalhost ip6-localhost ip6-loopback\n")
	if ip != nil && hostname != "" {
		fmt.Fprintf(&b, "%s\t%s\n", ip, hostname)
	}
	return b.Bytes()
}

// ResolvConf derives a container's /etc/resolv.conf from the host's:
// nameservers on loopback addresses are dropped (they are unreachable from
// the container's namespace); search and options lines are kept.
func ResolvConf(host []byte) []byte {
	var b bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(host))
	for sc.Scan() {
		line := strings.TrimSpace(sc.Text())
		f := strings.Fields(line)
		if len(f) == 0 || strings.HasPrefix(f[0], "#") {
			continue
		}
		if f[0] == "nameserver" {
			if len(f) < 2 {
				continue
			}
			if ip := net.ParseIP(f[1]); ip == nil || ip.IsLoopback() {
				continue
			}
		}
		b.WriteString(line)
		b.WriteByte('\n')
	}
	return b.Bytes()
}
