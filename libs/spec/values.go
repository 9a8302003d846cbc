package spec

import (
	"fmt"
	"math"
	"regexp"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// scalar is implemented by the pointer of every value type that is read from
// a single YAML node with a syntax of its own (durations, memory sizes, …).
// decodeNode returns "" on success, or a message for the user.
type scalar interface {
	decodeNode(n *yaml.Node) string
	encodeNode() *yaml.Node
}

// schemaType is implemented by value types that describe their own JSON
// Schema.
type schemaType interface {
	jsonSchema() map[string]any
}

func strNode(s string) *yaml.Node {
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!str", Value: s}
}

// kindName names a node's kind the way a user reads it.
func kindName(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	case yaml.ScalarNode:
		switch n.Tag {
		case "!!int":
			return "the integer " + n.Value
		case "!!float":
			return "the number " + n.Value
		case "!!bool":
			return "the boolean " + n.Value
		case "!!null":
			return "nothing"
		}
		return strconv.Quote(n.Value)
	}
	return "an unsupported YAML value"
}

// ---- Duration ----

// Duration is a length of time written as a number and a unit (ms, s, m, h),
// combinable: "500ms", "15s", "1m30s". Its resolution is one millisecond.
type Duration time.Duration

var durationRE = regexp.MustCompile(`^([0-9]+(\.[0-9]+)?(ms|h|m|s))+$`)

// ParseDuration parses the file's duration syntax.
func ParseDuration(s string) (Duration, error) {
	if !durationRE.MatchString(s) {
		if _, err := strconv.ParseFloat(s, 64); err == nil {
			return 0, fmt.Errorf("missing unit; write %q (units: ms, s, m, h)", s+"s")
		}
		return 0, fmt.Errorf("invalid duration %q (write a number and a unit ms, s, m or h, e.g. 500ms, 15s, 1m30s)", s)
	}
	d, err := time.ParseDuration(s)
	if err != nil {
		return 0, fmt.Errorf("invalid duration %q: too long", s)
	}
	if d%time.Millisecond != 0 {
		return 0, fmt.Errorf("invalid duration %q: the smallest unit is 1ms", s)
	}
	return Duration(d), nil
}

// D returns d as a time.Duration.
func (d Duration) D() time.Duration { return time.Duration(d) }

// String formats d in the file's syntax, e.g. "1m30s" or "500ms"; zero is "0s".
func (d Duration) String() string {
	if d == 0 {
		return "0s"
	}
	var b strings.Builder
	rest := time.Duration(d)
	if rest < 0 {
		b.WriteByte('-')
		rest = -rest
	}
	for _, u := range []struct {
		unit time.Duration
		name string
	}{{time.Hour, "h"}, {time.Minute, "m"}, {time.Second, "s"}, {time.Millisecond, "ms"}} {
		if n := rest / u.unit; n > 0 {
			fmt.Fprintf(&b, "%d%s", n, u.name)
			rest -= n * u.unit
		}
	}
	return b.String()
}

func (d *Duration) decodeNode(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode {
		return "expected a duration such as 15s, got " + kindName(n)
	}
	v, err := ParseDuration(n.Value)
	if err != nil {
		return err.Error()
	}
	*d = v
	return ""
}

func (d *Duration) encodeNode() *yaml.Node { return strNode(d.String()) }

func (Duration) jsonSchema() map[string]any {
	return map[string]any{"type": "string", "pattern": durationRE.String()}
}

// ---- Memory ----

// Memory is a number of bytes, written as an integer with an optional unit:
// K, M, G, T (powers of 1000) or Ki, Mi, Gi, Ti (powers of 1024).
type Memory int64

var memoryUnits = []struct {
	name string
	mult int64
}{
	{"Ti", 1 << 40}, {"Gi", 1 << 30}, {"Mi", 1 << 20}, {"Ki", 1 << 10},
	{"T", 1e12}, {"G", 1e9}, {"M", 1e6}, {"K", 1e3},
}

var memoryRE = regexp.MustCompile(`^([0-9]+)([A-Za-z]*)$`)

// ParseMemory parses the file's memory syntax ("512Mi", "1G", "1048576").
func ParseMemory(s string) (Memory, error) {
	m := memoryRE.FindStringSubmatch(s)
	if m == nil {
		return 0, fmt.Errorf("invalid memory size %q (write an integer and a unit, e.g. 512Mi or 1G)", s)
	}
	n, err := strconv.ParseInt(m[1], 10, 64)
	if err != nil {
		return 0, fmt.Errorf("memory size %q is too large", s)
	}
	if m[2] == "" {
		return Memory(n), nil
	}
	for _, u := range memoryUnits {
		if u.name == m[2] {
			if n > math.MaxInt64/u.mult {
				return 0, fmt.Errorf("memory size %q is too large", s)
			}
			return Memory(n * u.mult), nil
		}
	}
	return 0, fmt.Errorf("unknown memory unit %q in %q (use K, M, G, T for powers of 1000 or Ki, Mi, Gi, Ti for powers of 1024)", m[2], s)
}

// Bytes returns m as a number of bytes.
func (m Memory) Bytes() int64 { return int64(m) }

// String formats m with the largest unit that divides it exactly, e.g. "512Mi".
func (m Memory) String() string {
	if m > 0 {
		for _, u := range memoryUnits {
			if int64(m)%u.mult == 0 {
				return strconv.FormatInt(int64(m)/u.mult, 10) + u.name
			}
		}
	}
	return strconv.FormatInt(int64(m), 10)
}

func (m *Memory) decodeNode(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int") {
		return "expected a memory size such as 512Mi, got " + kindName(n)
	}
	v, err := ParseMemory(n.Value)
	if err != nil {
		return err.Error()
	}
	*m = v
	return ""
}

func (m *Memory) encodeNode() *yaml.Node { return strNode(m.String()) }

func (Memory) jsonSchema() map[string]any {
	return map[string]any{"anyOf": []any{
		map[string]any{"type": "string", "pattern": `^[0-9]+(K|M|G|T|Ki|Mi|Gi|Ti)?$`},
		map[string]any{"type": "integer", "minimum": 1},
	}}
}

// ---- Percent ----

// Percent is a percentage, written "70%" or as the number 70.
type Percent float64

var percentRE = regexp.MustCompile(`^[0-9]+(\.[0-9]+)?%$`)

// ParsePercent parses "70%" or "70".
func ParsePercent(s string) (Percent, error) {
	num := strings.TrimSuffix(s, "%")
	f, err := strconv.ParseFloat(num, 64)
	if err != nil || math.IsNaN(f) || math.IsInf(f, 0) || strings.ContainsAny(num, "eExXpP_") {
		return 0, fmt.Errorf("invalid percent %q (write e.g. 70%%)", s)
	}
	return Percent(f), nil
}

// String formats p as "70%".
func (p Percent) String() string {
	return strconv.FormatFloat(float64(p), 'f', -1, 64) + "%"
}

func (p *Percent) decodeNode(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode || (n.Tag != "!!str" && n.Tag != "!!int" && n.Tag != "!!float") {
		return "expected a percent such as 70%, got " + kindName(n)
	}
	v, err := ParsePercent(n.Value)
	if err != nil {
		return err.Error()
	}
	*p = v
	return ""
}

func (p *Percent) encodeNode() *yaml.Node { return strNode(p.String()) }

func (Percent) jsonSchema() map[string]any {
	return map[string]any{"anyOf": []any{
		map[string]any{"type": "string", "pattern": percentRE.String()},
		map[string]any{"type": "number", "exclusiveMinimum": 0},
	}}
}

// ---- Command ----

// Command is a command to run: either a shell string, run with /bin/sh -c,
// or a list of arguments run as is. Exactly one of Shell and Exec is set.
type Command struct {
	Shell string   // run as /bin/sh -c Shell
	Exec  []string // run as is
}

// Argv returns the argument vector to execute.
func (c Command) Argv() []string {
	if c.Shell != "" {
		return []string{"/bin/sh", "-c", c.Shell}
	}
	return append([]string(nil), c.Exec...)
}

// IsZero reports whether c is unset.
func (c Command) IsZero() bool { return c.Shell == "" && len(c.Exec) == 0 }

func (c *Command) decodeNode(n *yaml.Node) string {
	switch {
	case n.Kind == yaml.ScalarNode && n.Tag == "!!str":
		if strings.TrimSpace(n.Value) == "" {
			return "empty command"
		}
		*c = Command{Shell: n.Value}
		return ""
	case n.Kind == yaml.SequenceNode:
		var argv []string
		for _, it := range n.Content {
			if it.Kind != yaml.ScalarNode || it.Tag == "!!null" {
				return "expected a list of strings, got " + kindName(it) + " in the list"
			}
			argv = append(argv, it.Value)
		}
		if len(argv) == 0 || argv[0] == "" {
			return "empty command (give the program to run as the first item)"
		}
		*c = Command{Exec: argv}
		return ""
	}
	return "expected a command string or a list of strings, got " + kindName(n)
}

func (c *Command) encodeNode() *yaml.Node {
	if c.Shell != "" {
		return strNode(c.Shell)
	}
	seq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq", Style: yaml.FlowStyle}
	for _, a := range c.Exec {
		seq.Content = append(seq.Content, strNode(a))
	}
	return seq
}

func (Command) jsonSchema() map[string]any {
	return map[string]any{"anyOf": []any{
		map[string]any{"type": "string", "minLength": 1},
		map[string]any{"type": "array", "items": map[string]any{"type": "string"}, "minItems": 1},
	}}
}
