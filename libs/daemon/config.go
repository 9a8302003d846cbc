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
// The config file is YAML whose keys are flag names (without dashes); a
// repeatable flag takes a list. Unknown keys are errors.
func parseConfig(fs *flag.FlagSet, args []string, getenv func(string) string, component string, cfg *Config) error {
	host, _ := os.Hostname()
	if host == "" {
		host = "local"
	}
	fs.StringVar(&cfg.Node, "node", envOr(getenv, "ZLAYER_NODE", host), "node name (systemd units pass the instance name %i) [$ZLAYER_NODE]")
	fs.StringVar(&cfg.RunDir, "run-dir", envOr(getenv, "ZLAYER_RUN_DIR", "/run/zlayer"), "directory of the node's sockets [$ZLAYER_RUN_DIR]")
	fs.StringVar(&cfg.DataDir, "data-dir", envOr(getenv, "ZLAYER_DATA_DIR", "/var/lib/zlayer")+"/"+component, "directory of this daemon's durable state [$ZLAYER_DATA_DIR/"+component+"]")
	fs.StringVar(&cfg.LogFormat, "log-format", envOr(getenv, "ZLAYER_LOG_FORMAT", "json"), "log format: json or console [$ZLAYER_LOG_FORMAT]")
	fs.StringVar(&cfg.LogLevel, "log-level", envOr(getenv, "ZLAYER_LOG_LEVEL", "info"), "log level: debug, info, warn or error [$ZLAYER_LOG_LEVEL]")
	fs.StringVar(&cfg.MetricsAddr, "metrics-addr", getenv("ZLAYER_"+strings.ToUpper(component)+"_METRICS_ADDR"), "serve Prometheus metrics on this host:port (off when empty)")
	configPath := fs.String("config", "", "YAML config file; keys are flag names")
	if err := fs.Parse(args); err != nil {
		return err
	}
	if fs.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q", fs.Arg(0))
	}
	if *configPath == "" {
		return cfg.Validate()
	}
	// Flags given on the command line win over the file: remember them.
	explicit := map[string]bool{}
	fs.Visit(func(f *flag.Flag) { explicit[f.Name] = true })
	if err := applyConfigFile(fs, *configPath, explicit); err != nil {
		return err
	}
	return cfg.Validate()
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

func envOr(getenv func(string) string, key, def string) string {
	if v := getenv(key); v != "" {
		return v
	}
	return def
}
