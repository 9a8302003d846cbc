package spec

import (
	"fmt"
	"slices"
	"strings"
)

// The rules that involve more than one field: bounds between fields,
// uniqueness, references between services and cycles.

func orDefault[T ~string](v, def T) T {
	if v == "" {
		return def
	}
	return v
}

func (c *checker) semantic() {
	d := c.d
	names := d.ServiceNames()
	for _, name := range names {
		s := d.Services[name]
		if s == nil {
			continue
		}
		sp := joinPath("services", name)
		c.checkScale(s, sp)
		c.checkEndpoints(s, sp)
		c.checkDepends(s, sp, name)
		c.checkSteps(s, sp)
		c.checkEnv(s, sp)
		c.checkHealthPort(s, sp)
	}
	c.checkPublicPorts(names)
	c.checkCycles(names)
}

func (c *checker) checkScale(s *Service, sp string) {
	sc := s.Scale
	if sc == nil || orDefault(s.RType, RTypeService) != RTypeService || orDefault(sc.Mode, ScaleAdaptive) != ScaleAdaptive {
		return
	}
	p := sp + ".scale"
	if c.d.isBad(p) || c.d.isBad(p+".min") || c.d.isBad(p+".max") {
		return
	}
	lo, hi := 1, 10
	if sc.Min != nil {
		lo = *sc.Min
	}
	if sc.Max != nil {
		hi = *sc.Max
	}
	if lo > hi && lo >= 0 && hi >= 0 {
		switch {
		case sc.Max == nil:
			c.add(p+".min", true, fmt.Sprintf("min (%d) is greater than the default max (10); set max to at least %d", lo, lo))
		case sc.Min == nil:
			c.add(p+".max", true, fmt.Sprintf("max (%d) is less than the default min (1); set min: 0 or raise max", hi))
		default:
			c.add(p+".min", true, fmt.Sprintf("min (%d) is greater than max (%d)", lo, hi))
		}
	}
	t := sc.Targets
	if t == nil {
		return
	}
	if t.Memory != 0 && s.Resources.Memory == 0 && !c.d.isBad(sp+".resources.memory") {
		c.add(p+".targets.memory", false, "needs resources.memory (the target is a percent of the memory limit); set resources.memory or use targets.cpu")
	}
	if t.CPU > 100 {
		limit := s.Resources.CPU
		switch {
		case limit <= 1:
			c.add(p+".targets.cpu", true, fmt.Sprintf("%s is above 100%%, which needs a multi-cpu limit (set resources.cpu to at least %g)", t.CPU, float64(t.CPU)/100))
		case float64(t.CPU) > limit*100:
			c.add(p+".targets.cpu", true, fmt.Sprintf("%s is above the cpu limit (resources.cpu: %g allows up to %g%%)", t.CPU, limit, limit*100))
		}
	}
}

func (c *checker) checkEndpoints(s *Service, sp string) {
	names := map[string]int{}
	ports := map[string]int{}
	for i, e := range s.Endpoints {
		ep := indexPath(sp+".endpoints", i)
		if e.Name != "" {
			if j, dup := names[e.Name]; dup {
				c.add(ep+".name", true, fmt.Sprintf("duplicate endpoint name %q (also endpoints[%d]); names must be unique in the service", e.Name, j))
			} else {
				names[e.Name] = i
			}
		}
		if e.Port != 0 && e.Protocol != "" {
			key := fmt.Sprintf("%d/%s", e.Port, e.Protocol)
			if j, dup := ports[key]; dup {
				c.add(ep+".port", true, fmt.Sprintf("port %s is already used by endpoints[%d] (%s); each port is used once per protocol", key, j, s.Endpoints[j].Name))
			} else {
				ports[key] = i
			}
		}
	}
}

// checkPublicPorts finds two public tcp/udp endpoints that would need the
// same proxy port on every node.
func (c *checker) checkPublicPorts(names []string) {
	type use struct{ path string }
	seen := map[string]use{}
	for _, name := range names {
		s := c.d.Services[name]
		if s == nil {
			continue
		}
		for i, e := range s.Endpoints {
			if e.Expose != ExposePublic || (e.Protocol != ProtocolTCP && e.Protocol != ProtocolUDP) {
				continue
			}
			port := e.PublicPort
			field := "public_port"
			if port == 0 {
				port, field = e.Port, "port"
			}
			if port == 0 {
				continue
			}
			ep := indexPath(joinPath("services", name)+".endpoints", i)
			key := fmt.Sprintf("%d/%s", port, e.Protocol)
			if u, dup := seen[key]; dup {
				c.add(ep+"."+field, true, fmt.Sprintf("public port %s is already taken by %s; set a different public_port", key, u.path))
				continue
			}
			seen[key] = use{ep}
		}
	}
}

func (c *checker) checkDepends(s *Service, sp, self string) {
	seen := map[string]int{}
	for i, dep := range s.Depends {
		p := indexPath(sp+".depends", i) + ".service"
		if dep.Service == "" || c.d.isBad(p) || checkFormat("name", dep.Service) != "" {
			continue
		}
		switch _, ok := c.d.Services[dep.Service]; {
		case dep.Service == self:
			c.add(p, true, "a service cannot depend on itself")
		case !ok:
			msg := fmt.Sprintf("unknown service %q", dep.Service)
			if sug := closest(dep.Service, c.d.ServiceNames()); sug != "" {
				msg += fmt.Sprintf("; did you mean %q?", sug)
			} else {
				msg += " (services: " + strings.Join(c.d.ServiceNames(), ", ") + ")"
			}
			c.add(p, true, msg)
		default:
			if j, dup := seen[dep.Service]; dup {
				c.add(p, true, fmt.Sprintf("duplicate dependency on %q (also depends[%d])", dep.Service, j))
			}
			seen[dep.Service] = i
		}
	}
}

func (c *checker) checkSteps(s *Service, sp string) {
	ids := map[string]int{}
	for i, st := range s.Init.Steps {
		if st.ID == "" {
			continue
		}
		p := indexPath(sp+".init.steps", i) + ".id"
		if j, dup := ids[st.ID]; dup {
			c.add(p, true, fmt.Sprintf("duplicate step id %q (also steps[%d]); ids must be unique in the service", st.ID, j))
			continue
		}
		ids[st.ID] = i
	}
}

func (c *checker) checkEnv(s *Service, sp string) {
	keys := make([]string, 0, len(s.Env))
	for k := range s.Env {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for _, k := range keys {
		v := s.Env[k]
		name, ok := strings.CutPrefix(v, EnvRefPrefix)
		if !ok {
			continue
		}
		if !envNameRE.MatchString(name) {
			c.add(joinPath(sp+".env", k), true, fmt.Sprintf("invalid reference %q: write %sNAME, NAME a variable name of the node's environment", v, EnvRefPrefix))
		}
	}
}

// checkHealthPort makes sure a tcp or http check has a port, given or taken
// from an endpoint.
func (c *checker) checkHealthPort(s *Service, sp string) {
	h := s.Health
	if h == nil || h.Check.Port != 0 || c.d.isBad(sp+".health.check.port") {
		return
	}
	typ := h.Check.Type
	if typ != CheckTCP && typ != CheckHTTP {
		return
	}
	if _, ok := checkPortFromEndpoints(s); !ok {
		what := "tcp, http, https or websocket"
		if typ == CheckHTTP {
			what = "http"
		}
		c.add(sp+".health.check.port", false, fmt.Sprintf("required: the service has no %s endpoint to take the port from", what))
	}
}

// checkPortFromEndpoints is the default port of a tcp or http health check:
// the first http endpoint for http, the first endpoint that is not udp for
// tcp.
func checkPortFromEndpoints(s *Service) (int, bool) {
	for _, e := range s.Endpoints {
		if e.Port == 0 {
			continue
		}
		if s.Health.Check.Type == CheckHTTP && e.Protocol == ProtocolHTTP ||
			s.Health.Check.Type == CheckTCP && e.Protocol != ProtocolUDP && e.Protocol != "" {
			return e.Port, true
		}
	}
	return 0, false
}

// checkCycles reports every cycle among depends once, starting at the
// service written first, with the edges in order.
func (c *checker) checkCycles(names []string) {
	order := map[string]int{}
	for i, n := range names {
		order[n] = i
	}
	edges := func(n string) []int { // indexes into Depends of valid edges
		var out []int
		if c.d.Services[n] == nil {
			return nil
		}
		for i, dep := range c.d.Services[n].Depends {
			if _, ok := c.d.Services[dep.Service]; ok && dep.Service != n {
				out = append(out, i)
			}
		}
		return out
	}
	const (
		white = iota
		grey
		black
	)
	color := map[string]int{}
	var stack []string
	reported := map[string]bool{}
	var visit func(n string)
	visit = func(n string) {
		color[n] = grey
		stack = append(stack, n)
		for _, i := range edges(n) {
			m := c.d.Services[n].Depends[i].Service
			switch color[m] {
			case white:
				visit(m)
			case grey:
				at := slices.Index(stack, m)
				cyc := slices.Clone(stack[at:])
				// Start at the service written first.
				first := 0
				for k := range cyc {
					if order[cyc[k]] < order[cyc[first]] {
						first = k
					}
				}
				cyc = append(cyc[first:], cyc[:first]...)
				key := strings.Join(cyc, " ")
				if reported[key] {
					continue
				}
				reported[key] = true
				// Point at the first edge of the cycle.
				from, to := cyc[0], cyc[1%len(cyc)]
				p := joinPath("services", from) + ".depends"
				for j, dep := range c.d.Services[from].Depends {
					if dep.Service == to {
						p = indexPath(p, j) + ".service"
						break
					}
				}
				path := strings.Join(append(cyc, cyc[0]), " -> ")
				pos := c.d.posFor(p, true)
				c.errs = append(c.errs, &FieldError{File: c.d.file, Line: pos.Line, Col: pos.Col,
					Path: joinPath("services", from) + ".depends", Msg: "dependency cycle: " + path})
			}
		}
		stack = stack[:len(stack)-1]
		color[n] = black
	}
	for _, n := range names {
		if color[n] == white && c.d.Services[n] != nil {
			visit(n)
		}
	}
}
