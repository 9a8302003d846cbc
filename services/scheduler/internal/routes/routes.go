// Package routes computes the proxy's route table from the cluster state:
// every endpoint of every deployment's current version, with the replicas
// that serve it and that the proxy can reach as backends. It is pure; a
// small loop in app pushes the table to the local proxy whenever it
// changes.
package routes

import (
	"fmt"
	"slices"
	"strings"

	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	schedulerv1 "zlayer.dev/libs/api/zlayer/scheduler/v1"
	"zlayer.dev/libs/spec"
	"zlayer.dev/services/scheduler/internal/fsm"
	"zlayer.dev/services/scheduler/internal/specinfo"
)

var protocols = map[spec.Protocol]proxyv1.Protocol{
	spec.ProtocolHTTP:      proxyv1.Protocol_PROTOCOL_HTTP,
	spec.ProtocolHTTPS:     proxyv1.Protocol_PROTOCOL_HTTPS,
	spec.ProtocolTCP:       proxyv1.Protocol_PROTOCOL_TCP,
	spec.ProtocolUDP:       proxyv1.Protocol_PROTOCOL_UDP,
	spec.ProtocolWebSocket: proxyv1.Protocol_PROTOCOL_WEBSOCKET,
}

var rtypes = map[spec.RType]proxyv1.ResourceType{
	spec.RTypeService: proxyv1.ResourceType_RESOURCE_TYPE_SERVICE,
	spec.RTypeJob:     proxyv1.ResourceType_RESOURCE_TYPE_JOB,
	spec.RTypeCron:    proxyv1.ResourceType_RESOURCE_TYPE_CRON,
}

// Table returns the routes of every deployment in st, sorted by
// deployment, service and endpoint. Replicas on nodes for which reachable
// is false are left out (nil: every node).
func Table(st *fsm.State, specs *specinfo.Cache, reachable func(node string) bool) []*proxyv1.Route {
	var out []*proxyv1.Route
	for _, name := range sortedKeys(st.Deployments) {
		d := st.Deployments[name]
		v := fsm.Version(d, d.Current)
		if d.Deleting || v == nil {
			continue
		}
		parsed, err := specs.Get(v.FileName, v.SpecYaml)
		if err != nil {
			continue
		}
		replicas := st.ReplicasOf(d.Name)
		for _, svcName := range parsed.ServiceNames() {
			svc := parsed.Services[svcName]
			for _, e := range svc.Spec.Endpoints {
				r := &proxyv1.Route{
					Deployment: d.Name, Service: svcName, Endpoint: e.Name,
					Protocol: protocols[e.Protocol], Host: e.Host, Path: e.Path,
					Expose: proxyv1.Expose_EXPOSE_INTERNAL, Rtype: rtypes[svc.Spec.RType],
				}
				if e.Expose == spec.ExposePublic {
					r.Expose = proxyv1.Expose_EXPOSE_PUBLIC
				}
				if e.Protocol == spec.ProtocolTCP || e.Protocol == spec.ProtocolUDP {
					r.PublicPort = uint32(e.PublicPort)
					if r.PublicPort == 0 {
						r.PublicPort = uint32(e.Port)
					}
				}
				for _, rep := range replicas {
					if rep.Service != svcName || rep.Ip == "" || rep.Phase != schedulerv1.ReplicaPhase_REPLICA_PHASE_RUNNING {
						continue
					}
					if reachable != nil && !reachable(rep.Node) {
						continue
					}
					healthy := rep.Health == schedulerv1.Health_HEALTH_HEALTHY
					r.Backends = append(r.Backends, &proxyv1.Backend{
						ReplicaId: rep.Id, Address: fmt.Sprintf("%s:%d", rep.Ip, e.Port), Node: rep.Node,
						Healthy: healthy,
						// A replica being stopped takes no new requests.
						Ready: healthy && !rep.DesiredStop,
					})
				}
				out = append(out, r)
			}
		}
	}
	slices.SortFunc(out, func(a, b *proxyv1.Route) int {
		return strings.Compare(a.Deployment+"/"+a.Service+"/"+a.Endpoint, b.Deployment+"/"+b.Service+"/"+b.Endpoint)
	})
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
