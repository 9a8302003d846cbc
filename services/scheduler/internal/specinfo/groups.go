package specinfo

import "zlayer.dev/libs/spec"

// OverlayGroups returns the overlays a replica of service svc of
// deployment dep is on (SPEC.md network): "global/<dep>" unless the
// service is off the global overlay, "service/<dep>/<svc>" unless its
// service overlay is off. Replicas reach each other when they share one;
// the agent keeps the rest apart. A service whose spec cannot be read is
// on none.
func OverlayGroups(dep, svc string, s *spec.Service) []string {
	if s == nil {
		return nil
	}
	var out []string
	if on(s.Network.Overlays.Global.Enabled) {
		out = append(out, "global/"+dep)
	}
	if on(s.Network.Overlays.Service.Enabled) {
		out = append(out, "service/"+dep+"/"+svc)
	}
	return out
}

// on reads an overlay's enabled flag (unset is SPEC's default, true).
func on(b *bool) bool { return b == nil || *b }
