// Package server adapts zlayer-scheduler's domain code to the SchedulerService gRPC
// contract: it translates between proto and domain types, nothing more.
package server

import (
	"context"

	typesv1 "zlayer.dev/libs/api/zlayer/types/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
)

var _ schedulerv1.SchedulerServiceServer = (*Server)(nil)

// Info describes the daemon; daemon.Env satisfies it.
type Info interface {
	Info() *typesv1.DaemonInfo
}

// Server implements schedulerv1.SchedulerServiceServer.
type Server struct {
	schedulerv1.UnimplementedSchedulerServiceServer
	info Info
}

// New returns a Server describing itself with info.
func New(info Info) *Server {
	return &Server{info: info}
}

// GetInfo returns the daemon's version, node and uptime.
func (s *Server) GetInfo(context.Context, *schedulerv1.GetInfoRequest) (*schedulerv1.GetInfoResponse, error) {
	return &schedulerv1.GetInfoResponse{Info: s.info.Info()}, nil
}
