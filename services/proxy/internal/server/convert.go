package server

import (
	"errors"
	"fmt"
	"math"

	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/proxy/internal/routes"
)

var protocols = map[proxyv1.Protocol]routes.Protocol{
	proxyv1.Protocol_PROTOCOL_HTTP:      routes.HTTP,
	proxyv1.Protocol_PROTOCOL_HTTPS:     routes.HTTPS,
	proxyv1.Protocol_PROTOCOL_TCP:       routes.TCP,
	proxyv1.Protocol_PROTOCOL_UDP:       routes.UDP,
	proxyv1.Protocol_PROTOCOL_WEBSOCKET: routes.WebSocket,
}

var kinds = map[proxyv1.ResourceType]routes.Kind{
	proxyv1.ResourceType_RESOURCE_TYPE_UNSPECIFIED: routes.Service,
	proxyv1.ResourceType_RESOURCE_TYPE_SERVICE:     routes.Service,
	proxyv1.ResourceType_RESOURCE_TYPE_JOB:         routes.Job,
	proxyv1.ResourceType_RESOURCE_TYPE_CRON:        routes.Cron,
}

// routesFromProto converts a pushed table; unknown enum values and ports
// out of range are errkind.Invalid, all reported at once.
func routesFromProto(in []*proxyv1.Route) ([]routes.Route, error) {
	out := make([]routes.Route, 0, len(in))
	var errs []error
	for i, r := range in {
		p, ok := protocols[r.GetProtocol()]
		if !ok {
			errs = append(errs, fmt.Errorf("routes[%d]: protocol %v is not served", i, r.GetProtocol()))
		}
		k, ok := kinds[r.GetRtype()]
		if !ok {
			errs = append(errs, fmt.Errorf("routes[%d]: rtype %v is not known", i, r.GetRtype()))
		}
		if r.GetPublicPort() > math.MaxUint16 {
			errs = append(errs, fmt.Errorf("routes[%d]: public_port %d is not 1-65535", i, r.GetPublicPort()))
		}
		rt := routes.Route{
			Key:        routes.Key{Deployment: r.GetDeployment(), Service: r.GetService(), Endpoint: r.GetEndpoint()},
			Protocol:   p,
			Host:       r.GetHost(),
			Path:       r.GetPath(),
			PublicPort: uint16(r.GetPublicPort()),
			Public:     r.GetExpose() == proxyv1.Expose_EXPOSE_PUBLIC,
			Kind:       k,
		}
		for _, b := range r.GetBackends() {
			rt.Backends = append(rt.Backends, routes.Backend{
				ReplicaID: b.GetReplicaId(), Addr: b.GetAddress(), Node: b.GetNode(),
				Healthy: b.GetHealthy(), Ready: b.GetReady(),
			})
		}
		out = append(out, rt)
	}
	if len(errs) > 0 {
		return nil, fmt.Errorf("%w: %w", errkind.Invalid, errors.Join(errs...))
	}
	return out, nil
}

func protocolToProto(p routes.Protocol) proxyv1.Protocol {
	for k, v := range protocols {
		if v == p {
			return k
		}
	}
	return proxyv1.Protocol_PROTOCOL_UNSPECIFIED
}

func kindToProto(k routes.Kind) proxyv1.ResourceType {
	switch k {
	case routes.Service:
		return proxyv1.ResourceType_RESOURCE_TYPE_SERVICE
	case routes.Job:
		return proxyv1.ResourceType_RESOURCE_TYPE_JOB
	case routes.Cron:
		return proxyv1.ResourceType_RESOURCE_TYPE_CRON
	}
	return proxyv1.ResourceType_RESOURCE_TYPE_UNSPECIFIED
}

func routeToProto(r routes.Route) *proxyv1.Route {
	expose := proxyv1.Expose_EXPOSE_INTERNAL
	if r.Public {
		expose = proxyv1.Expose_EXPOSE_PUBLIC
	}
	out := &proxyv1.Route{
		Deployment: r.Deployment, Service: r.Service, Endpoint: r.Endpoint,
		Protocol: protocolToProto(r.Protocol), Host: r.Host, Path: r.Path,
		PublicPort: uint32(r.PublicPort), Expose: expose, Rtype: kindToProto(r.Kind),
	}
	for _, b := range r.Backends {
		out.Backends = append(out.Backends, &proxyv1.Backend{
			ReplicaId: b.ReplicaID, Address: b.Addr, Node: b.Node, Healthy: b.Healthy, Ready: b.Ready,
		})
	}
	return out
}
