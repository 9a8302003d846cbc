package spec

import (
	"fmt"
	"slices"
	"strings"

	"zlayer.dev/libs/errkind"
)

// EnvRefPrefix starts an env value read from the node's environment when the
// container starts: "$E:DB_PASSWORD".
const EnvRefPrefix = "$E:"

// MissingEnvError is returned by ResolveEnv when the node's environment
// lacks variables a service's env refers to. errors.Is(err,
// errkind.Precondition) is true for it.
type MissingEnvError struct {
	Service string   // the service being started
	Vars    []string // the missing variables, sorted
	Keys    []string // the env keys that refer to them, in the same order
}

// Error names the service and every missing variable.
func (e *MissingEnvError) Error() string {
	parts := make([]string, len(e.Vars))
	for i := range e.Vars {
		parts[i] = fmt.Sprintf("%s (for env %s)", e.Vars[i], e.Keys[i])
	}
	noun := "variable"
	if len(e.Vars) > 1 {
		noun = "variables"
	}
	return fmt.Sprintf("service %s: environment %s not set on this node: %s", e.Service, noun, strings.Join(parts, ", "))
}

// Is makes errors.Is(err, errkind.Precondition) true.
func (e *MissingEnvError) Is(target error) bool { return target == errkind.Precondition }

// ResolveEnv returns the service's environment with every $E:NAME value
// replaced by NAME's value from lookup (os.LookupEnv on the node). A
// variable that is set but empty resolves to "". When variables are
// missing it returns a *MissingEnvError naming all of them and the service.
// s.Env is not modified.
func ResolveEnv(s *Service, lookup func(string) (string, bool)) (map[string]string, error) {
	out := make(map[string]string, len(s.Env))
	var missing []struct{ v, k string }
	for k, v := range s.Env {
		name, ok := strings.CutPrefix(v, EnvRefPrefix)
		if !ok {
			out[k] = v
			continue
		}
		val, found := lookup(name)
		if !found {
			missing = append(missing, struct{ v, k string }{name, k})
			continue
		}
		out[k] = val
	}
	if len(missing) > 0 {
		slices.SortFunc(missing, func(a, b struct{ v, k string }) int {
			return strings.Compare(a.v+"\x00"+a.k, b.v+"\x00"+b.k)
		})
		e := &MissingEnvError{Service: s.Name}
		for _, m := range missing {
			e.Vars = append(e.Vars, m.v)
			e.Keys = append(e.Keys, m.k)
		}
		return nil, e
	}
	return out, nil
}
