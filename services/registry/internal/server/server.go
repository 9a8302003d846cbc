// Package server adapts zlayer-registry's domain packages (pull, store,
// rootfs) to the RegistryService contract. It translates messages and
// nothing more: errors keep their errkind class and are turned into status
// codes by the interceptor in libs/rpc.
package server

import (
	"context"
	"fmt"

	"google.golang.org/protobuf/types/known/timestamppb"

	registryv1 "zlayer.dev/libs/api/zlayer/registry/v1"
	typesv1 "zlayer.dev/libs/api/zlayer/types/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/registry/internal/pull"
	"zlayer.dev/services/registry/internal/rootfs"
	"zlayer.dev/services/registry/internal/store"
)

var _ registryv1.RegistryServiceServer = (*Server)(nil)

// Server implements RegistryService.
type Server struct {
	registryv1.UnimplementedRegistryServiceServer
	info   func() *typesv1.DaemonInfo
	puller *pull.Puller
	store  *store.Store
	rootfs *rootfs.Manager
}

// New returns a Server over the given parts; info describes the daemon.
func New(info func() *typesv1.DaemonInfo, p *pull.Puller, st *store.Store, m *rootfs.Manager) *Server {
	return &Server{info: info, puller: p, store: st, rootfs: m}
}

// GetInfo implements RegistryService.
func (s *Server) GetInfo(context.Context, *registryv1.GetInfoRequest) (*registryv1.GetInfoResponse, error) {
	return &registryv1.GetInfoResponse{Info: s.info()}, nil
}

func policyFromProto(p registryv1.PullPolicy) (pull.Policy, error) {
	switch p {
	case registryv1.PullPolicy_PULL_POLICY_UNSPECIFIED, registryv1.PullPolicy_PULL_POLICY_IF_NOT_PRESENT:
		return pull.IfNotPresent, nil
	case registryv1.PullPolicy_PULL_POLICY_ALWAYS:
		return pull.Always, nil
	case registryv1.PullPolicy_PULL_POLICY_NEVER:
		return pull.Never, nil
	}
	return 0, fmt.Errorf("pull_policy %v: %w", p, errkind.Invalid)
}

func stateToProto(s pull.LayerState) registryv1.LayerState {
	switch s {
	case pull.LayerWaiting:
		return registryv1.LayerState_LAYER_STATE_WAITING
	case pull.LayerDownloading:
		return registryv1.LayerState_LAYER_STATE_DOWNLOADING
	case pull.LayerDone:
		return registryv1.LayerState_LAYER_STATE_DONE
	case pull.LayerCached:
		return registryv1.LayerState_LAYER_STATE_CACHED
	}
	return registryv1.LayerState_LAYER_STATE_UNSPECIFIED
}

func progressToProto(ls []pull.LayerProgress) []*registryv1.LayerProgress {
	out := make([]*registryv1.LayerProgress, len(ls))
	for i, l := range ls {
		out[i] = &registryv1.LayerProgress{Digest: l.Digest.String(), Size: l.Size, Current: l.Current, State: stateToProto(l.State)}
	}
	return out
}

func imageToProto(img store.Image) *registryv1.Image {
	out := &registryv1.Image{
		Name:           img.Name,
		Digest:         img.Digest.String(),
		ManifestDigest: img.ManifestDigest.String(),
		ConfigDigest:   img.ConfigDigest.String(),
		Size:           img.Size(),
		PulledAt:       timestamppb.New(img.PulledAt),
		Platform:       img.Platform,
		LayerCount:     int32(len(img.Layers)),
	}
	if !img.Created.IsZero() {
		out.Created = timestamppb.New(img.Created)
	}
	return out
}

func configToProto(c store.Config) *registryv1.ImageConfig {
	return &registryv1.ImageConfig{
		Entrypoint:   c.Entrypoint,
		Cmd:          c.Cmd,
		Env:          c.Env,
		WorkingDir:   c.WorkingDir,
		User:         c.User,
		ExposedPorts: c.ExposedPorts,
		Labels:       c.Labels,
		StopSignal:   c.StopSignal,
	}
}

// PullImage implements RegistryService.
func (s *Server) PullImage(req *registryv1.PullImageRequest, stream registryv1.RegistryService_PullImageServer) error {
	pol, err := policyFromProto(req.GetPullPolicy())
	if err != nil {
		return err
	}
	var sendErr error
	img, cached, err := s.puller.Pull(stream.Context(), req.GetImage(), pol, func(ls []pull.LayerProgress) {
		if sendErr == nil {
			sendErr = stream.Send(&registryv1.PullImageResponse{Layers: progressToProto(ls)})
		}
	})
	if err != nil {
		return err
	}
	if sendErr != nil {
		return sendErr
	}
	return stream.Send(&registryv1.PullImageResponse{Image: imageToProto(img), Cached: cached})
}

// ListImages implements RegistryService.
func (s *Server) ListImages(context.Context, *registryv1.ListImagesRequest) (*registryv1.ListImagesResponse, error) {
	var out []*registryv1.Image
	for _, img := range s.store.List() {
		out = append(out, imageToProto(img))
	}
	return &registryv1.ListImagesResponse{Images: out}, nil
}

func (s *Server) lookup(ref string) (store.Image, error) {
	name, err := pull.Name(ref)
	if err != nil {
		return store.Image{}, err
	}
	return s.store.Get(name)
}

// InspectImage implements RegistryService.
func (s *Server) InspectImage(_ context.Context, req *registryv1.InspectImageRequest) (*registryv1.InspectImageResponse, error) {
	img, err := s.lookup(req.GetImage())
	if err != nil {
		return nil, err
	}
	resp := &registryv1.InspectImageResponse{Image: imageToProto(img), Config: configToProto(img.Config)}
	for _, l := range img.Layers {
		resp.Layers = append(resp.Layers, &registryv1.ImageLayer{Digest: l.Digest.String(), DiffId: l.DiffID.String(), Size: l.Size, MediaType: l.MediaType})
	}
	return resp, nil
}

// RemoveImage implements RegistryService.
func (s *Server) RemoveImage(_ context.Context, req *registryv1.RemoveImageRequest) (*registryv1.RemoveImageResponse, error) {
	name, err := pull.Name(req.GetImage())
	if err != nil {
		return nil, err
	}
	if err := s.store.Remove(name); err != nil {
		return nil, err
	}
	return &registryv1.RemoveImageResponse{Name: name}, nil
}

// PruneImages implements RegistryService.
func (s *Server) PruneImages(context.Context, *registryv1.PruneImagesRequest) (*registryv1.PruneImagesResponse, error) {
	res, err := s.store.Prune(s.rootfs.InUseLayers)
	if err != nil {
		return nil, err
	}
	out := &registryv1.PruneImagesResponse{FreedBytes: res.FreedBytes}
	for _, d := range res.Blobs {
		out.RemovedBlobs = append(out.RemovedBlobs, d.String())
	}
	for _, d := range res.Layers {
		out.RemovedLayers = append(out.RemovedLayers, d.String())
	}
	return out, nil
}

// Login implements RegistryService.
func (s *Server) Login(ctx context.Context, req *registryv1.LoginRequest) (*registryv1.LoginResponse, error) {
	server, err := s.puller.Login(ctx, req.GetServer(), req.GetUsername(), req.GetPassword())
	if err != nil {
		return nil, err
	}
	return &registryv1.LoginResponse{Server: server}, nil
}

// PrepareRootfs implements RegistryService.
func (s *Server) PrepareRootfs(_ context.Context, req *registryv1.PrepareRootfsRequest) (*registryv1.PrepareRootfsResponse, error) {
	img, err := s.lookup(req.GetImage())
	if err != nil {
		return nil, fmt.Errorf("prepare rootfs for %s: %w (pull it first)", req.GetContainerId(), err)
	}
	r, err := s.rootfs.Prepare(img, req.GetContainerId())
	if err != nil {
		return nil, err
	}
	return &registryv1.PrepareRootfsResponse{RootfsPath: r.Path, Config: configToProto(img.Config), ImageDigest: img.Digest.String()}, nil
}

// ReleaseRootfs implements RegistryService.
func (s *Server) ReleaseRootfs(_ context.Context, req *registryv1.ReleaseRootfsRequest) (*registryv1.ReleaseRootfsResponse, error) {
	if err := s.rootfs.Release(req.GetContainerId()); err != nil {
		return nil, err
	}
	return &registryv1.ReleaseRootfsResponse{}, nil
}
