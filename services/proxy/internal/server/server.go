// Package server adapts zlayer-proxy's domain code to the ProxyService gRPC
// contract: it translates between proto and domain types, nothing more.
package server

import (
	"context"
	"fmt"
	"time"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/durationpb"
	"google.golang.org/protobuf/types/known/timestamppb"

	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	typesv1 "zlayer.dev/libs/api/zlayer/types/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/proxy/internal/metrics"
	"zlayer.dev/services/proxy/internal/routes"
)

var _ proxyv1.ProxyServiceServer = (*Server)(nil)

// Info describes the daemon; daemon.Env satisfies it.
type Info interface {
	Info() *typesv1.DaemonInfo
}

// DefaultStatsWindow is GetStats' window when the request sets none.
const DefaultStatsWindow = 10 * time.Second

// Server implements proxyv1.ProxyServiceServer.
type Server struct {
	proxyv1.UnimplementedProxyServiceServer
	info   Info
	routes *routes.Store
	now    func() time.Time
	log    *zap.Logger
}

// New returns a Server describing itself with info and serving the table
// in store.
func New(info Info, store *routes.Store, now func() time.Time, log *zap.Logger) *Server {
	return &Server{info: info, routes: store, now: now, log: log.Named("server")}
}

// GetInfo returns the daemon's version, node and uptime.
func (s *Server) GetInfo(context.Context, *proxyv1.GetInfoRequest) (*proxyv1.GetInfoResponse, error) {
	return &proxyv1.GetInfoResponse{Info: s.info.Info()}, nil
}

// SetRoutes replaces the route table.
func (s *Server) SetRoutes(_ context.Context, req *proxyv1.SetRoutesRequest) (*proxyv1.SetRoutesResponse, error) {
	rs, err := routesFromProto(req.GetRoutes())
	if err != nil {
		return nil, err
	}
	t, err := s.routes.Set(req.GetGeneration(), rs)
	if err != nil {
		return nil, err
	}
	s.log.Info("routes set", zap.Uint64("generation", t.Generation), zap.Int("routes", len(t.Entries)),
		zap.Strings("shadowed", t.Shadowed))
	return &proxyv1.SetRoutesResponse{Generation: t.Generation, Shadowed: t.Shadowed}, nil
}

// ListRoutes returns the table in force with live backend state.
func (s *Server) ListRoutes(context.Context, *proxyv1.ListRoutesRequest) (*proxyv1.ListRoutesResponse, error) {
	t := s.routes.Load()
	now := s.now()
	resp := &proxyv1.ListRoutesResponse{Generation: t.Generation}
	for _, e := range t.Entries {
		rs := &proxyv1.RouteState{Route: routeToProto(e.Route)}
		for _, b := range e.Pool.Backends() {
			tg := b.Target()
			until := b.EjectedUntil(now)
			bs := &proxyv1.BackendState{
				ReplicaId:     b.ID,
				Address:       b.Addr,
				Eligible:      tg.Healthy && tg.Ready && until.IsZero(),
				Outstanding:   b.Outstanding(),
				RequestsTotal: b.Requests(),
			}
			if !until.IsZero() {
				bs.EjectedUntil = timestamppb.New(until)
			}
			rs.Backends = append(rs.Backends, bs)
		}
		resp.Routes = append(resp.Routes, rs)
	}
	return resp, nil
}

// GetStats returns the counters of every routed endpoint.
func (s *Server) GetStats(_ context.Context, req *proxyv1.GetStatsRequest) (*proxyv1.GetStatsResponse, error) {
	window := DefaultStatsWindow
	if w := req.GetWindow(); w != nil {
		if err := w.CheckValid(); err != nil || w.AsDuration() <= 0 {
			return nil, fmt.Errorf("window %v: must be a positive duration: %w", w.AsDuration(), errkind.Invalid)
		}
		window = min(w.AsDuration(), metrics.MaxWindow)
	}
	now := s.now()
	resp := &proxyv1.GetStatsResponse{At: timestamppb.New(now), Window: durationpb.New(window)}
	for _, e := range s.routes.Load().Entries {
		snap := e.Stats.Snapshot(now, window)
		resp.Endpoints = append(resp.Endpoints, &proxyv1.EndpointStats{
			Deployment:    e.Deployment,
			Service:       e.Service,
			Endpoint:      e.Endpoint,
			Rps:           snap.RPS,
			RequestsTotal: snap.Total,
			Responses: &proxyv1.StatusClasses{
				Informational: snap.Class[1],
				Success:       snap.Class[2],
				Redirection:   snap.Class[3],
				ClientError:   snap.Class[4],
				ServerError:   snap.Class[5],
			},
			Active:           snap.Active,
			EligibleBackends: uint32(e.Pool.Eligible()),
		})
	}
	return resp, nil
}
