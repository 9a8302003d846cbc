package rpc

import (
	"fmt"
	"path/filepath"

	"google.golang.org/grpc"
	"google.golang.org/grpc/credentials/insecure"
)

// SocketPath returns the socket of component in runDir, e.g.
// /run/zlayer/agent.sock.
func SocketPath(runDir, component string) string {
	return filepath.Join(runDir, component+".sock")
}

// Dial returns a client connection to a local daemon's Unix socket. It does
// not wait for the daemon: the first call fails with Unavailable if nothing
// listens there.
func Dial(path string, opts ...grpc.DialOption) (*grpc.ClientConn, error) {
	opts = append([]grpc.DialOption{grpc.WithTransportCredentials(insecure.NewCredentials())}, opts...)
	cc, err := grpc.NewClient("unix://"+path, opts...)
	if err != nil {
		return nil, fmt.Errorf("dial %s: %w", path, err)
	}
	return cc, nil
}
