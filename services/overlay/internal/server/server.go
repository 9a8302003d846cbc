// Package server adapts zlayer-overlay's domain code to the OverlayService gRPC
// contract: it translates between proto and domain types, nothing more.
package server

import (
	"context"

	overlayv1 "zlayer.dev/libs/api/zlayer/overlay/v1"
	typesv1 "zlayer.dev/libs/api/zlayer/types/v1"
)

var _ overlayv1.OverlayServiceServer = (*Server)(nil)

// Info describes the daemon; daemon.Env satisfies it.
type Info interface {
	Info() *typesv1.DaemonInfo
}

// Server implements overlayv1.OverlayServiceServer.
type Server struct {
	overlayv1.UnimplementedOverlayServiceServer
	info Info
}

// New returns a Server describing itself with info.
func New(info Info) *Server {
	return &Server{info: info}
}

// GetInfo returns the daemon's version, node and uptime.
func (s *Server) GetInfo(context.Context, *overlayv1.GetInfoRequest) (*overlayv1.GetInfoResponse, error) {
	return &overlayv1.GetInfoResponse{Info: s.info.Info()}, nil
}
