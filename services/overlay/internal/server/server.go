// Package server adapts zlayer-overlay's domain code to the OverlayService gRPC
// contract: it translates between proto and domain types, nothing more.
package server

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"

	"go.uber.org/zap"
	"google.golang.org/protobuf/types/known/timestamppb"

	overlayv1 "zlayer.dev/libs/api/zlayer/overlay/v1"
	typesv1 "zlayer.dev/libs/api/zlayer/types/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/overlay/internal/wg"
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
	mesh *wg.Mesh
	log  *zap.Logger
}

// New returns a Server describing itself with info and running mesh.
func New(info Info, mesh *wg.Mesh, log *zap.Logger) *Server {
	return &Server{info: info, mesh: mesh, log: log}
}

// GetInfo returns the daemon's version, node and uptime.
func (s *Server) GetInfo(context.Context, *overlayv1.GetInfoRequest) (*overlayv1.GetInfoResponse, error) {
	return &overlayv1.GetInfoResponse{Info: s.info.Info()}, nil
}

// GetIdentity returns the device's public key, port and name.
func (s *Server) GetIdentity(context.Context, *overlayv1.GetIdentityRequest) (*overlayv1.GetIdentityResponse, error) {
	return &overlayv1.GetIdentityResponse{PublicKey: s.mesh.PublicKey(), Port: uint32(s.mesh.Port()), Device: s.mesh.Device()}, nil
}

// SetPeers sets the mesh. A peer that cannot be used (a bad key, endpoint
// or subnet) is left out and logged, naming it: one bad node must not keep
// the others out of the mesh.
func (s *Server) SetPeers(_ context.Context, req *overlayv1.SetPeersRequest) (*overlayv1.SetPeersResponse, error) {
	var addr netip.Addr
	if len(req.GetPeers()) > 0 {
		a, err := netip.ParseAddr(req.GetAddress())
		if err != nil {
			return nil, fmt.Errorf("address %q: %w", req.GetAddress(), errkind.Invalid)
		}
		addr = a
	}
	peers := make([]wg.Peer, 0, len(req.GetPeers()))
	for i, p := range req.GetPeers() {
		where := fmt.Sprintf("peers[%d] (node %q)", i, p.GetNode())
		key, err := base64.StdEncoding.DecodeString(p.GetPublicKey())
		if err != nil || len(key) != 32 {
			s.skip(where, fmt.Errorf("public key %q is not a base64 WireGuard key: %w", p.GetPublicKey(), errkind.Invalid))
			continue
		}
		ep, err := netip.ParseAddrPort(p.GetEndpoint())
		if err != nil {
			// A host name: resolved now, as WireGuard's own tools do.
			ua, rerr := net.ResolveUDPAddr("udp", p.GetEndpoint())
			if rerr != nil {
				s.skip(where, fmt.Errorf("endpoint %q: %v: %w", p.GetEndpoint(), rerr, errkind.Invalid))
				continue
			}
			ep = netip.AddrPortFrom(ua.AddrPort().Addr().Unmap(), ua.AddrPort().Port())
		}
		cidr, err := netip.ParsePrefix(p.GetContainerCidr())
		if err != nil || !cidr.Addr().Is4() {
			s.skip(where, fmt.Errorf("container subnet %q: want an IPv4 CIDR: %w", p.GetContainerCidr(), errkind.Invalid))
			continue
		}
		wp := wg.Peer{Node: p.GetNode(), Endpoint: ep, CIDR: cidr.Masked()}
		copy(wp.PublicKey[:], key)
		peers = append(peers, wp)
	}
	if err := s.mesh.Set(addr, peers); err != nil {
		return nil, err
	}
	return &overlayv1.SetPeersResponse{}, nil
}

func (s *Server) skip(peer string, err error) {
	s.log.Warn("peer left out of the mesh", zap.String("peer", peer), zap.Error(err))
}

// ListPeers returns the device's peers with their latest handshakes.
func (s *Server) ListPeers(context.Context, *overlayv1.ListPeersRequest) (*overlayv1.ListPeersResponse, error) {
	st, err := s.mesh.Status()
	if err != nil {
		return nil, err
	}
	resp := &overlayv1.ListPeersResponse{}
	for _, p := range st {
		ps := &overlayv1.PeerStatus{Node: p.Node, PublicKey: base64.StdEncoding.EncodeToString(p.PublicKey[:]), RxBytes: p.RxBytes, TxBytes: p.TxBytes}
		if !p.LastHandshake.IsZero() {
			ps.LastHandshake = timestamppb.New(p.LastHandshake)
		}
		resp.Peers = append(resp.Peers, ps)
	}
	return resp, nil
}
