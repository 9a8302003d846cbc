package spec

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"reflect"
	"slices"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Marshal returns d as a deployment file. Fields that have a default are
// written even when they hold it, so the output of a parsed Deployment shows
// every default filled in; parsing the output gives d back.
func (d *Deployment) Marshal() ([]byte, error) {
	n := encodeValue(d, reflect.ValueOf(d).Elem(), reflect.Value{})
	var buf bytes.Buffer
	enc := yaml.NewEncoder(&buf)
	enc.SetIndent(2)
	if err := enc.Encode(n); err != nil {
		return nil, fmt.Errorf("encode deployment: %w", err)
	}
	if err := enc.Close(); err != nil {
		return nil, fmt.Errorf("encode deployment: %w", err)
	}
	return buf.Bytes(), nil
}

// Hash returns a canonical hash of the service's spec, "sha256:<hex>". Two
// services written differently but meaning the same (key order, a default
// written out or left implicit, 512Mi or 536870912) hash the same, provided
// both have their defaults applied, as Parse does. The name is not part of
// it. The scheduler compares hashes to know which services changed between
// two deploys.
func (s *Service) Hash() string {
	n := encodeValue(nil, reflect.ValueOf(s).Elem(), reflect.Value{})
	var v any
	if n != nil {
		if err := n.Decode(&v); err != nil {
			panic("spec: hash: " + err.Error()) // our own encoder's output
		}
	}
	b, err := json.Marshal(v) // map keys sorted
	if err != nil {
		panic("spec: hash: " + err.Error())
	}
	sum := sha256.Sum256(b)
	return "sha256:" + hex.EncodeToString(sum[:])
}

// encodeValue turns v into a YAML node, or nil when there is nothing to
// write. d orders the services; it may be nil.
func encodeValue(d *Deployment, v reflect.Value, parent reflect.Value) *yaml.Node {
	if !v.CanAddr() {
		c := reflect.New(v.Type()).Elem()
		c.Set(v)
		v = c
	}
	if s, ok := v.Addr().Interface().(scalar); ok {
		if v.IsZero() {
			return nil
		}
		return s.encodeNode()
	}
	switch v.Kind() {
	case reflect.Pointer:
		if v.IsNil() {
			return nil
		}
		return encodeValue(d, v.Elem(), parent)
	case reflect.Struct:
		m := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		for _, f := range fieldsOf(v.Type()) {
			fv := v.Field(f.index)
			if f.when != nil {
				if ok, _, _, _ := condsHold(f.when, v, parent); !ok {
					continue
				}
			}
			if fv.IsZero() && !f.hasDef {
				continue
			}
			var n *yaml.Node
			if fv.IsZero() && fv.Kind() != reflect.Pointer && !isStructType(fv.Type()) {
				n = zeroNode(fv)
			} else {
				n = encodeValue(d, fv, v)
			}
			if n == nil || n.Kind == yaml.MappingNode && len(n.Content) == 0 {
				continue
			}
			m.Content = append(m.Content, strNode(f.name), n)
		}
		return m
	case reflect.Map:
		if v.Len() == 0 {
			return nil
		}
		var keys []string
		if d != nil && v.Type() == reflect.TypeFor[map[string]*Service]() {
			keys = d.ServiceNames()
		} else {
			for _, k := range v.MapKeys() {
				keys = append(keys, k.String())
			}
			slices.Sort(keys)
		}
		m := &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
		for _, k := range keys {
			n := encodeValue(d, v.MapIndex(reflect.ValueOf(k)), parent)
			if n == nil {
				n = &yaml.Node{Kind: yaml.MappingNode, Tag: "!!map"}
				if v.Type().Elem().Kind() == reflect.String {
					n = strNode("")
				}
			}
			m.Content = append(m.Content, strNode(k), n)
		}
		return m
	case reflect.Slice:
		if v.Len() == 0 {
			return nil
		}
		seq := &yaml.Node{Kind: yaml.SequenceNode, Tag: "!!seq"}
		for i := range v.Len() {
			n := encodeValue(d, v.Index(i), parent)
			if n == nil {
				n = zeroNode(v.Index(i))
			}
			seq.Content = append(seq.Content, n)
		}
		return seq
	case reflect.String:
		if v.Len() == 0 {
			return nil
		}
		return strNode(v.String())
	case reflect.Int:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: strconv.FormatInt(v.Int(), 10)}
	case reflect.Float64:
		s := strconv.FormatFloat(v.Float(), 'f', -1, 64)
		tag := "!!float"
		if !strings.Contains(s, ".") {
			tag = "!!int" // cpu: 2, not cpu: !!float 2
		}
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: tag, Value: s}
	case reflect.Bool:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: strconv.FormatBool(v.Bool())}
	}
	panic("spec: no encoder for " + v.Type().String())
}

// zeroNode writes a zero value that was given explicitly (retry: 0,
// start_grace: 0s).
func zeroNode(v reflect.Value) *yaml.Node {
	switch v.Type() {
	case reflect.TypeFor[Duration]():
		return strNode("0s")
	case reflect.TypeFor[Memory](), reflect.TypeFor[Percent]():
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: "0"}
	}
	switch v.Kind() {
	case reflect.String:
		return strNode("")
	case reflect.Int, reflect.Float64:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!int", Value: "0"}
	case reflect.Bool:
		return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!bool", Value: "false"}
	}
	return &yaml.Node{Kind: yaml.ScalarNode, Tag: "!!null", Value: "null"}
}
