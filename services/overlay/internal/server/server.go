// Package server adapts zlayer-overlay's domain code to the OverlayService gRPC
// contract: it translates between proto and domain types, nothing more.
package server

import (
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"net/netip"

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
}

// New returns a Server describing itself with info and running mesh.
func New(info Info, mesh *wg.Mesh) *Server {
	return &Server{info: info, mesh: mesh}
}

// GetInfo returns the daemon's version, node and uptime.
func (s *Server) GetInfo(context.Context, *overlayv1.GetInfoRequest) (*overlayv1.GetInfoResponse, error) {
	return &overlayv1.GetInfoResponse{Info: s.info.Info()}, nil
}

// GetIdentity returns the device's public key, port and name.
func (s *Server) GetIdentity(context.Context, *overlayv1.GetIdentityRequest) (*overlayv1.GetIdentityResponse, error) {
	return &overlayv1.GetIdentityResponse{PublicKey: s.mesh.PublicKey(), Port: uint32(s.mesh.Port()), Device: s.mesh.Device()}, nil
}

// SetPeers checks the whole request, then sets the mesh.
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
			return nil, fmt.Errorf("%s: public key %q is not a base64 WireGuard key: %w", where, p.GetPublicKey(), errkind.Invalid)
		}
		ep, err := netip.ParseAddrPort(p.GetEndpoint())
		if err != nil {
			// A host name: resolved now, as WireGuard's own tools do.
			ua, rerr := net.ResolveUDPAddr("udp", p.GetEndpoint())
			if rerr != nil {
				return nil, fmt.Errorf("%s: endpoint %q: %v: %w", where, p.GetEndpoint(), rerr, errkind.Invalid)
			}
			ep = ua.AddrPort()
		}
		cidr, err := netip.ParsePrefix(p.GetContainerCidr())
		if err != nil || !cidr.Addr().Is4() {
			return nil, fmt.Errorf("%s: container subnet %q: want an IPv4 CIDR: %w", where, p.GetContainerCidr(), errkind.Invalid)
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
