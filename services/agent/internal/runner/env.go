package runner

import (
	"fmt"
	"slices"
	"strings"

	"zlayer.dev/libs/errkind"
)

// envRef is the prefix of a value read from the node's environment.
const envRef = "$E:"

// resolveEnv replaces every "$E:NAME" value with NAME from lookup. A
// missing NAME is errkind.Invalid naming every one missing.
//
// This is a local copy of SPEC.md's rule: libs/spec had no resolver yet
// when this was written; switch to it once it has one.
func resolveEnv(env map[string]string, lookup func(string) (string, bool)) (map[string]string, error) {
	out := make(map[string]string, len(env))
	var missing []string
	for k, v := range env {
		name, ok := strings.CutPrefix(v, envRef)
		if !ok {
			out[k] = v
			continue
		}
		val, found := lookup(name)
		if !found {
			missing = append(missing, fmt.Sprintf("%s (for %s)", name, k))
			continue
		}
		out[k] = val
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return nil, fmt.Errorf("env: not set on this node: %s: %w", strings.Join(missing, ", "), errkind.Invalid)
	}
	return out, nil
}
