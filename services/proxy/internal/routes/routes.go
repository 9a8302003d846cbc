// Package routes holds the proxy's route table: the scheduler's routes,
// validated and compiled into an immutable Table for lookups by host and
// path (HTTP) or by public port (TCP, UDP), each route bound to its live
// load balancing pool and counters. A Store swaps whole tables atomically,
// so a request sees either the old table or the new one, never a mix. It
// does not listen, dial or proxy anything.
package routes

import (
	"cmp"
	"errors"
	"fmt"
	"net/netip"
	"slices"
	"strings"

	"zlayer.dev/libs/errkind"
)

// Protocol is an endpoint's protocol.
type Protocol uint8

// The protocols of SPEC.md's endpoints.
const (
	HTTP Protocol = iota + 1
	HTTPS
	TCP
	UDP
	WebSocket
)

func (p Protocol) String() string {
	switch p {
	case HTTP:
		return "http"
	case HTTPS:
		return "https"
	case TCP:
		return "tcp"
	case UDP:
		return "udp"
	case WebSocket:
		return "websocket"
	}
	return fmt.Sprintf("Protocol(%d)", uint8(p))
}

// IsHTTP reports whether p is served on the HTTP and HTTPS listeners.
func (p Protocol) IsHTTP() bool { return p == HTTP || p == HTTPS || p == WebSocket }

// Kind is the service's rtype.
type Kind uint8

// The rtypes of SPEC.md.
const (
	Service Kind = iota + 1
	Job
	Cron
)

func (k Kind) String() string {
	switch k {
	case Service:
		return "service"
	case Job:
		return "job"
	case Cron:
		return "cron"
	}
	return fmt.Sprintf("Kind(%d)", uint8(k))
}

// Key names an endpoint: deployment, service, endpoint.
type Key struct {
	Deployment, Service, Endpoint string
}

func (k Key) String() string { return k.Deployment + "/" + k.Service + "/" + k.Endpoint }

func (k Key) compare(o Key) int {
	return cmp.Or(strings.Compare(k.Deployment, o.Deployment),
		strings.Compare(k.Service, o.Service), strings.Compare(k.Endpoint, o.Endpoint))
}

// Backend is one replica serving a route.
type Backend struct {
	ReplicaID string
	Addr      string // ip:port
	Node      string
	Healthy   bool
	Ready     bool
}

// Route is one endpoint as the scheduler pushes it.
type Route struct {
	Key
	Protocol   Protocol
	Host       string // lower case; "" = any host
	Path       string // prefix, "/" = everything
	PublicPort uint16 // tcp, udp
	Public     bool
	Kind       Kind
	Backends   []Backend
}

// Normalize fills defaults: an empty path is "/", hosts are lower case
// without a trailing dot, an unset kind is Service.
func (r *Route) Normalize() {
	if r.Path == "" {
		r.Path = "/"
	}
	r.Host = strings.TrimSuffix(strings.ToLower(r.Host), ".")
	if r.Kind == 0 {
		r.Kind = Service
	}
}

// Validate returns every problem with rs, joined and wrapped in
// errkind.Invalid; nil when the table can be served. rs must be normalized.
// Routes that collide with others (same host and path, same public port)
// are not errors: a valid deployment must never make the proxy refuse a
// whole table. The table serves the first of them and lists the others as
// shadowed.
func Validate(rs []Route) error {
	var errs []error
	bad := func(i int, format string, args ...any) {
		errs = append(errs, fmt.Errorf("routes[%d] (%s): %s", i, rs[i].Key, fmt.Sprintf(format, args...)))
	}
	keys := map[Key]int{}
	for i, r := range rs {
		if r.Deployment == "" || r.Service == "" || r.Endpoint == "" {
			bad(i, "deployment, service and endpoint must all be set")
		}
		if j, ok := keys[r.Key]; ok {
			bad(i, "same endpoint as routes[%d]", j)
		}
		keys[r.Key] = i
		switch {
		case r.Protocol.IsHTTP():
			if !strings.HasPrefix(r.Path, "/") {
				bad(i, "path %q must start with /", r.Path)
			}
			if strings.ContainsAny(r.Host, "/: ") {
				bad(i, "host %q is not a hostname", r.Host)
			}
		case r.Protocol == TCP || r.Protocol == UDP:
			if r.Public && r.PublicPort == 0 {
				bad(i, "public %s endpoint needs a public_port", r.Protocol)
			}
		default:
			bad(i, "protocol is not set")
		}
		if r.Kind != Service && r.Kind != Job && r.Kind != Cron {
			bad(i, "rtype is not set")
		}
		seen := map[string]bool{}
		for j, b := range r.Backends {
			if b.ReplicaID == "" {
				bad(i, "backends[%d]: replica id must be set", j)
			}
			if _, err := netip.ParseAddrPort(b.Addr); err != nil {
				bad(i, "backends[%d]: address %q is not ip:port", j, b.Addr)
			}
			if seen[b.ReplicaID+" "+b.Addr] {
				bad(i, "backends[%d]: replica %s at %s listed twice", j, b.ReplicaID, b.Addr)
			}
			seen[b.ReplicaID+" "+b.Addr] = true
		}
	}
	if len(errs) == 0 {
		return nil
	}
	return fmt.Errorf("%w: %w", errkind.Invalid, errors.Join(errs...))
}

// Sort orders rs by key, the order every listing uses.
func Sort(rs []Route) {
	slices.SortFunc(rs, func(a, b Route) int { return a.Key.compare(b.Key) })
}

// PathMatches reports whether prefix routes path: "/" routes everything;
// "/api" routes "/api" and "/api/..." but not "/apis"; "/api/" routes
// "/api/..." only.
func PathMatches(prefix, path string) bool {
	if !strings.HasPrefix(path, prefix) {
		return false
	}
	return len(path) == len(prefix) || prefix[len(prefix)-1] == '/' || path[len(prefix)] == '/'
}
