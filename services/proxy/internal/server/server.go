// Package server adapts zlayer-proxy's domain code to the ProxyService gRPC
// contract: it translates between proto and domain types, nothing more.
package server

import (
	"context"

	typesv1 "zlayer.dev/libs/api/zlayer/types/v1"
	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
)

var _ proxyv1.ProxyServiceServer = (*Server)(nil)

// Info describes the daemon; daemon.Env satisfies it.
type Info interface {
	Info() *typesv1.DaemonInfo
}

// Server implements proxyv1.ProxyServiceServer.
type Server struct {
	proxyv1.UnimplementedProxyServiceServer
	info Info
}

// New returns a Server describing itself with info.
func New(info Info) *Server {
	return &Server{info: info}
}

// GetInfo returns the daemon's version, node and uptime.
func (s *Server) GetInfo(context.Context, *proxyv1.GetInfoRequest) (*proxyv1.GetInfoResponse, error) {
	return &proxyv1.GetInfoResponse{Info: s.info.Info()}, nil
}
