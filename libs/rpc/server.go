package rpc

import (
	"context"
	"errors"
	"time"

	"go.uber.org/zap"
	"google.golang.org/grpc"
	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/health"
	healthpb "google.golang.org/grpc/health/grpc_health_v1"
	"google.golang.org/grpc/reflection"
	"google.golang.org/grpc/status"

	"zlayer.dev/libs/errkind"
)

// NewServer returns a gRPC server with the standard health service,
// reflection, and interceptors that turn errkind classes into status codes
// and log every failed call once. The health service starts NOT_SERVING; the
// caller flips it when the daemon is ready.
func NewServer(log *zap.Logger, opts ...grpc.ServerOption) (*grpc.Server, *health.Server) {
	opts = append([]grpc.ServerOption{
		grpc.ChainUnaryInterceptor(unaryInterceptor(log)),
		grpc.ChainStreamInterceptor(streamInterceptor(log)),
	}, opts...)
	s := grpc.NewServer(opts...)
	hs := health.NewServer()
	hs.SetServingStatus("", healthpb.HealthCheckResponse_NOT_SERVING)
	healthpb.RegisterHealthServer(s, hs)
	reflection.Register(s)
	return s, hs
}

// ToStatus converts an error into a gRPC status error. Errors that already
// carry a status keep it; errkind classes get their code; anything else is
// Unknown. The message is the error's text, which is written for people.
func ToStatus(err error) error {
	if err == nil {
		return nil
	}
	if _, ok := status.FromError(err); ok {
		return err
	}
	return status.Error(Code(err), err.Error())
}

// Code returns the gRPC code for err's class.
func Code(err error) codes.Code {
	switch {
	case err == nil:
		return codes.OK
	case errors.Is(err, errkind.NotFound):
		return codes.NotFound
	case errors.Is(err, errkind.Invalid):
		return codes.InvalidArgument
	case errors.Is(err, errkind.Conflict):
		return codes.AlreadyExists
	case errors.Is(err, errkind.Precondition):
		return codes.FailedPrecondition
	case errors.Is(err, errkind.Unavailable):
		return codes.Unavailable
	case errors.Is(err, errkind.Unauthenticated):
		return codes.Unauthenticated
	case errors.Is(err, errkind.Denied):
		return codes.PermissionDenied
	case errors.Is(err, errkind.Exhausted):
		return codes.ResourceExhausted
	case errors.Is(err, context.DeadlineExceeded):
		return codes.DeadlineExceeded
	case errors.Is(err, context.Canceled):
		return codes.Canceled
	}
	if s, ok := status.FromError(err); ok {
		return s.Code()
	}
	return codes.Unknown
}

func logFailure(log *zap.Logger, method string, start time.Time, err error) {
	code := status.Code(err)
	if code == codes.Canceled {
		return
	}
	log.Info("rpc failed", zap.String("method", method), zap.String("code", code.String()),
		zap.Duration("took", time.Since(start)), zap.Error(err))
}

func unaryInterceptor(log *zap.Logger) grpc.UnaryServerInterceptor {
	return func(ctx context.Context, req any, info *grpc.UnaryServerInfo, handler grpc.UnaryHandler) (any, error) {
		start := time.Now()
		resp, err := handler(ctx, req)
		if err != nil {
			err = ToStatus(err)
			logFailure(log, info.FullMethod, start, err)
		}
		return resp, err
	}
}

func streamInterceptor(log *zap.Logger) grpc.StreamServerInterceptor {
	return func(srv any, ss grpc.ServerStream, info *grpc.StreamServerInfo, handler grpc.StreamHandler) error {
		start := time.Now()
		err := handler(srv, ss)
		if err != nil {
			err = ToStatus(err)
			logFailure(log, info.FullMethod, start, err)
		}
		return err
	}
}
