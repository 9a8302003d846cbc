package server

import (
	"errors"
	"testing"

	"google.golang.org/protobuf/proto"

	proxyv1 "zlayer.dev/libs/api/zlayer/proxy/v1"
	"zlayer.dev/libs/errkind"
)

// Every proto protocol but UNSPECIFIED maps to a domain protocol and back;
// adding a value to the contract without mapping it fails here.
func TestEveryProtocolMaps(t *testing.T) {
	for v, name := range proxyv1.Protocol_name {
		p := proxyv1.Protocol(v)
		if p == proxyv1.Protocol_PROTOCOL_UNSPECIFIED {
			continue
		}
		d, ok := protocols[p]
		if !ok || protocolToProto(d) != p {
			t.Errorf("%s does not map both ways", name)
		}
	}
	for v, name := range proxyv1.ResourceType_name {
		k, ok := kinds[proxyv1.ResourceType(v)]
		if !ok {
			t.Errorf("%s not mapped", name)
			continue
		}
		if v != 0 && kindToProto(k) != proxyv1.ResourceType(v) {
			t.Errorf("%s does not map back", name)
		}
	}
}

func TestRouteRoundTrip(t *testing.T) {
	in := &proxyv1.Route{
		Deployment: "d", Service: "s", Endpoint: "e", Protocol: proxyv1.Protocol_PROTOCOL_HTTPS,
		Host: "x.test", Path: "/p", PublicPort: 0, Expose: proxyv1.Expose_EXPOSE_PUBLIC, Rtype: proxyv1.ResourceType_RESOURCE_TYPE_JOB,
		Backends: []*proxyv1.Backend{{ReplicaId: "r", Address: "10.0.0.1:80", Node: "n", Healthy: true, Ready: true}},
	}
	rs, err := routesFromProto([]*proxyv1.Route{in})
	if err != nil {
		t.Fatal(err)
	}
	if out := routeToProto(rs[0]); !proto.Equal(in, out) {
		t.Fatalf("round trip:\n in %v\nout %v", in, out)
	}
	_, err = routesFromProto([]*proxyv1.Route{{Protocol: 99, Rtype: 42, PublicPort: 70000}})
	if !errors.Is(err, errkind.Invalid) {
		t.Fatalf("got %v", err)
	}
}
