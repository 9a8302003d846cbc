package routes

import (
	"errors"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"zlayer.dev/libs/errkind"
	"zlayer.dev/services/proxy/internal/balance"
	"zlayer.dev/services/proxy/internal/metrics"
)

func httpRoute(svc, host, path string) Route {
	return Route{Key: Key{"app", svc, "http"}, Protocol: HTTP, Host: host, Path: path, Public: true,
		Backends: []Backend{{ReplicaID: svc + "-1", Addr: "10.0.0.1:80", Healthy: true, Ready: true}}}
}

func TestValidate(t *testing.T) {
	tcp := func(svc string, port uint16) Route {
		return Route{Key: Key{"app", svc, "tcp"}, Protocol: TCP, PublicPort: port, Public: true}
	}
	tests := []struct {
		name    string
		rs      []Route
		wantErr []string // substrings; nil = valid
	}{
		{name: "valid", rs: []Route{httpRoute("a", "", "/"), httpRoute("b", "x.test", "/api"), tcp("db", 5432)}},
		{name: "collisions are not errors", rs: []Route{httpRoute("a", "x.test", "/"), httpRoute("b", "x.test", "/"), tcp("a", 5432), tcp("b", 5432)}},
		{name: "same endpoint twice", rs: []Route{httpRoute("a", "", "/"), httpRoute("a", "", "/x")},
			wantErr: []string{"routes[1] (app/a/http): same endpoint as routes[0]"}},
		{name: "tcp and udp may share a port", rs: []Route{tcp("a", 53), {Key: Key{"app", "a", "udp"}, Protocol: UDP, PublicPort: 53, Public: true}}},
		{name: "everything at once", rs: []Route{
			{Key: Key{"app", "a", "x"}, Path: "/"},
			{Key: Key{"app", "b", "http"}, Protocol: HTTP, Path: "api"},
			tcp("c", 0),
			{Key: Key{"app", "d", "http"}, Protocol: HTTP, Path: "/", Backends: []Backend{{ReplicaID: "d1", Addr: "nowhere"}}},
		}, wantErr: []string{
			"routes[0] (app/a/x): protocol is not set",
			`routes[1] (app/b/http): path "api" must start with /`,
			"routes[2] (app/c/tcp): public tcp endpoint needs a public_port",
			`routes[3] (app/d/http): backends[0]: address "nowhere" is not ip:port`,
		}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			for i := range tt.rs {
				tt.rs[i].Normalize()
			}
			err := Validate(tt.rs)
			if tt.wantErr == nil {
				if err != nil {
					t.Fatal(err)
				}
				return
			}
			if !errors.Is(err, errkind.Invalid) {
				t.Fatalf("got %v, want Invalid", err)
			}
			for _, w := range tt.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q\nlacks %q", err, w)
				}
			}
		})
	}
}

func TestPathMatches(t *testing.T) {
	for _, tt := range []struct {
		prefix, path string
		want         bool
	}{
		{"/", "/", true}, {"/", "/a/b", true},
		{"/api", "/api", true}, {"/api", "/api/v1", true}, {"/api", "/apis", false}, {"/api", "/", false},
		{"/api/", "/api/x", true}, {"/api/", "/api", false},
	} {
		if got := PathMatches(tt.prefix, tt.path); got != tt.want {
			t.Errorf("PathMatches(%q, %q) = %v", tt.prefix, tt.path, got)
		}
	}
}

func newStore() *Store {
	return NewStore(balance.RoundRobin, time.Second, time.Now, metrics.New(prometheus.NewRegistry(), time.Now))
}

func TestMatchHTTP(t *testing.T) {
	s := newStore()
	internal := httpRoute("internal", "", "/internal")
	internal.Public = false
	if _, err := s.Set(1, []Route{
		httpRoute("root", "", "/"), httpRoute("api", "API.example.test.", "/"), httpRoute("v2", "api.example.test", "/v2"), internal,
	}); err != nil {
		t.Fatal(err)
	}
	tb := s.Load()
	for _, tt := range []struct{ host, path, want string }{
		{"a.test", "/x", "root"},
		{"api.example.test", "/x", "api"},
		{"api.example.test:443", "/v2/a", "v2"},
		{"Api.Example.Test", "/v2", "v2"},
		{"a.test", "/internal", "root"}, // internal endpoints are not served publicly
		{"[::1]:80", "/", "root"},
	} {
		if e := tb.MatchHTTP(tt.host, tt.path); e == nil || e.Service != tt.want {
			t.Errorf("MatchHTTP(%q, %q) = %v, want %s", tt.host, tt.path, e, tt.want)
		}
	}
	if hosts := tb.PublicHosts(); len(hosts) != 0 {
		t.Errorf("PublicHosts = %v without https routes", hosts)
	}
}

// refuser is an Applier that refuses every table, as l4 does when a port is taken.
type refuser struct{ aborted, committed int }

func (r *refuser) Prepare(*Table) (func(), func(), error) {
	return func() { r.committed++ }, func() { r.aborted++ }, errkind.Unavailable
}

// recorder accepts every table.
type recorder struct{ aborted, committed int }

func (r *recorder) Prepare(*Table) (func(), func(), error) {
	return func() { r.committed++ }, func() { r.aborted++ }, nil
}

func TestStoreGenerationsAndRefusal(t *testing.T) {
	s := newStore()
	rec := &recorder{}
	s.AddApplier(rec)
	if _, err := s.Set(5, []Route{httpRoute("a", "", "/")}); err != nil {
		t.Fatal(err)
	}
	pool := s.Load().Entries[0].Pool
	if _, err := s.Set(5, []Route{httpRoute("a", "", "/")}); err != nil {
		t.Fatalf("same generation again: %v", err)
	}
	if s.Load().Entries[0].Pool != pool {
		t.Error("pool not kept across updates")
	}
	if _, err := s.Set(4, []Route{httpRoute("a", "", "x")}); !errors.Is(err, errkind.Invalid) {
		t.Fatalf("invalid table: %v", err)
	}
	ref := &refuser{}
	s.AddApplier(ref)
	if _, err := s.Set(6, []Route{httpRoute("b", "", "/")}); !errors.Is(err, errkind.Unavailable) {
		t.Fatalf("refused table: %v", err)
	}
	if tb := s.Load(); tb.Generation != 5 || tb.Entries[0].Service != "a" {
		t.Fatalf("table in force changed to %d", tb.Generation)
	}
	if rec.committed != 2 || rec.aborted != 1 || ref.committed != 0 {
		t.Fatalf("recorder %+v refuser %+v", rec, ref)
	}
}

func TestCollidingRoutesAreShadowedNotRefused(t *testing.T) {
	s := newStore()
	other := httpRoute("web", "", "/")
	other.Deployment = "blog"
	tcp := func(dep string) Route {
		return Route{Key: Key{dep, "db", "pg"}, Protocol: TCP, PublicPort: 5432, Public: true}
	}
	job := Route{Key: Key{"app", "cron", "tcp"}, Protocol: TCP, PublicPort: 9, Public: true, Kind: Job}
	tb, err := s.Set(1, []Route{httpRoute("web", "", "/"), other, tcp("app"), tcp("blog"), job})
	if err != nil {
		t.Fatal(err)
	}
	if e := tb.MatchHTTP("x", "/"); e == nil || e.Deployment != "app" {
		t.Fatalf("/ served by %v, want app (first in key order)", e)
	}
	if e := tb.TCP(5432); e == nil || e.Deployment != "app" {
		t.Fatalf("5432 served by %v", e)
	}
	if tb.TCP(9) != nil {
		t.Fatal("a job's tcp endpoint is served")
	}
	want := []string{
		`blog/db/pg: public port tcp/5432 is taken by app/db/pg`,
		`blog/web/http: host "" path "/" is taken by app/web/http`,
		`app/cron/tcp: tcp endpoints of a job are not served (http, https and websocket ones start runs)`,
	}
	for _, w := range want {
		if !slices.Contains(tb.Shadowed, w) {
			t.Errorf("shadowed %q lacks %q", tb.Shadowed, w)
		}
	}
}

func TestLowerGenerationApplies(t *testing.T) {
	s := newStore()
	if _, err := s.Set(500, []Route{httpRoute("a", "", "/")}); err != nil {
		t.Fatal(err)
	}
	// A restarted scheduler counts from 1 again.
	tb, err := s.Set(1, []Route{httpRoute("b", "", "/")})
	if err != nil || tb.Generation != 1 || s.Load().Entries[0].Service != "b" {
		t.Fatalf("lower generation: %v %v", tb, err)
	}
}
