package daemon

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io"
	"os"
	"slices"
	"strings"

	"gopkg.in/yaml.v3"

	"zlayer.dev/libs/obs"
)

// Config is what every daemon reads at start, before its component's own
// settings. Values come from defaults, then the --config file, then the
// environment (ZLAYER_*), then flags.
type Config struct {
	Node        string
	RunDir      string
	DataDir     string
	LogFormat   string
	LogLevel    string
	MetricsAddr string
}

// Validate names every bad field.
func (c Config) Validate() error {
	var errs []error
	if c.Node == "" {
		errs = append(errs, errors.New("node: must not be empty"))
	}
	if c.RunDir == "" {
		errs = append(errs, errors.New("run-dir: must not be empty"))
	}
	if c.DataDir == "" {
		errs = append(errs, errors.New("data-dir: must not be empty"))
	}
	if !slices.Contains(obs.LogFormats, c.LogFormat) {
		errs = append(errs, fmt.Errorf("log-format: %q is not one of %s", c.LogFormat, strings.Join(obs.LogFormats, ", ")))
	}
	return errors.Join(errs...)
}

// parseConfig parses args into cfg and the component's own flags in fs.
// Precedence, lowest first: defaults, the --config file, the environment,
// the command line. The config file is YAML whose keys are flag names; a
// repeatable flag takes a list; unknown keys are errors. In the environment,
// every flag --foo-bar of component c can be set as ZLAYER_C_FOO_BAR, and
// the node-wide ones also as ZLAYER_NODE, ZLAYER_RUN_DIR, ZLAYER_LOG_FORMAT
// and ZLAYER_LOG_LEVEL (ZLAYER_DATA_DIR is the root of every data dir).
func parseConfig(fs *flag.FlagSet, args []string, getenv func(string) string, component string, cfg *Config) error {
	host, _ := os.Hostname()
	if host == "" {
		host = "local"
	}
	fs.StringVar(&cfg.Node, "node", host, "node name (systemd units pass the instance name %i)")
	fs.StringVar(&cfg.RunDir, "run-dir", "/run/zlayer", "directory of the node's sockets")
	fs.StringVar(&cfg.DataDir, "data-dir", "/var/lib/zlayer/"+component, "directory of this daemon's durable state")
	fs.StringVar(&cfg.LogFormat, "log-format", "json", "log format: json or console")
	fs.StringVar(&cfg.LogLevel, "log-level", "info", "log level: debug, info, warn or error")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", "", "serve Prometheus metrics on this host:port (off when empty)")
	configPath := fs.String("config", "", "YAML config file; keys are flag names")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	if *configPath != "" {
		if err := applyConfigFile(fs, *configPath, explicit); err != nil {
			return err
		}
	}
	if err := applyEnv(fs, getenv, component, explicit); err != nil {
		return err
	}
	// ZLAYER_DATA_DIR is the root of every daemon's data dir; the
	// daemon's own ZLAYER_<C>_DATA_DIR (applied above) wins over it.
	if root := getenv("ZLAYER_DATA_DIR"); root != "" && !explicit["data-dir"] && getenv(EnvName(component, "data-dir")) == "" {
		cfg.DataDir = root + "/" + component
	}
	return cfg.Validate()
}

// nodeWide are the flags that every daemon of a node shares, settable with
// one variable for all of them.
var nodeWide = map[string]string{
	"node":       "ZLAYER_NODE",
	"run-dir":    "ZLAYER_RUN_DIR",
	"log-format": "ZLAYER_LOG_FORMAT",
	"log-level":  "ZLAYER_LOG_LEVEL",
}

// EnvName is the environment variable that sets flag name of component.
func EnvName(component, name string) string {
	return "ZLAYER_" + strings.ToUpper(component) + "_" + strings.ToUpper(strings.ReplaceAll(name, "-", "_"))
}

func applyEnv(fs *flag.FlagSet, getenv func(string) string, component string, explicit map[string]bool) error {
	var errs []error
	fs.VisitAll(func(f *flag.Flag) {
		if explicit[f.Name] || f.Name == "config" {
			return
		}
		v := getenv(EnvName(component, f.Name))
		name := EnvName(component, f.Name)
		if v == "" && nodeWide[f.Name] != "" {
			v, name = getenv(nodeWide[f.Name]), nodeWide[f.Name]
		}
		if v == "" {
			return
		}
		if err := fs.Set(f.Name, v); err != nil {
			errs = append(errs, fmt.Errorf("$%s: %w", name, err))
		}
	})
	return errors.Join(errs...)
}

func applyConfigFile(fs *flag.FlagSet, path string, explicit map[string]bool) error {
	b, err := os.ReadFile(path)
	if err != nil {
		return fmt.Errorf("config %s: %w", path, err)
	}
	var m map[string]any
	dec := yaml.NewDecoder(bytes.NewReader(b))
	if err := dec.Decode(&m); err != nil && !errors.Is(err, io.EOF) {
		return fmt.Errorf("config %s: %w", path, err)
	}
	var errs []error
	for _, key := range sortedKeys(m) {
		f := fs.Lookup(key)
		if f == nil || key == "config" {
			errs = append(errs, fmt.Errorf("config %s: unknown key %q", path, key))
			continue
		}
		if explicit[key] {
			continue
		}
		values := []any{m[key]}
		if list, ok := m[key].([]any); ok {
			values = list
		}
		for _, v := range values {
			if err := fs.Set(key, fmt.Sprint(v)); err != nil {
				errs = append(errs, fmt.Errorf("config %s: %s: %w", path, key, err))
			}
		}
	}
	return errors.Join(errs...)
}

func sortedKeys(m map[string]any) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
