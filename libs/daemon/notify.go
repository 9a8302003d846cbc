package daemon

import (
	"fmt"
	"net"
)

// sdNotify sends state (e.g. "READY=1") to systemd's notification socket
// when the process runs under a Type=notify unit. Without NOTIFY_SOCKET it
// does nothing.
func sdNotify(socket, state string) error {
	if socket == "" {
		return nil
	}
	addr := &net.UnixAddr{Name: socket, Net: "unixgram"}
	if socket[0] == '@' {
		addr.Name = "\x00" + socket[1:] // abstract namespace
	}
	c, err := net.DialUnix("unixgram", nil, addr)
	if err != nil {
		return fmt.Errorf("notify systemd: %w", err)
	}
	defer c.Close()
	if _, err := c.Write([]byte(state)); err != nil {
		return fmt.Errorf("notify systemd: %w", err)
	}
	return nil
}
