package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strings"

	"github.com/spf13/cobra"
	"gopkg.in/yaml.v3"

	"zlayer.dev/libs/spec"
)

// validateResult is one file's result in `zlctl validate -o json`.
type validateResult struct {
	File       string             `json:"file"`
	Valid      bool               `json:"valid"`
	Deployment string             `json:"deployment,omitempty"`
	Services   []validateService  `json:"services,omitempty"`
	Errors     []*spec.FieldError `json:"errors,omitempty"`
	// Resolved is the file with every default filled in (with --print).
	Resolved any `json:"resolved,omitempty"`

	printed []byte // Resolved as YAML
}

type validateService struct {
	Name  string `json:"name"`
	RType string `json:"rtype"`
	Hash  string `json:"hash"`
}

func newValidateCmd() *cobra.Command {
	var (
		printYAML bool
		output    string
	)
	cmd := &cobra.Command{
		Use:   "validate FILE...",
		Short: "Check deployment files without a cluster",
		Long: "Checks each deployment file (\"-\" reads stdin) against the format, offline, and\n" +
			"reports every problem as FILE:LINE:COL: path.to.field: message.\n" +
			"Exits 0 when every file is valid (one summary line each), 1 otherwise.\n" +
			"--print shows each valid file with all defaults filled in, as YAML.",
		Example: "  zlctl validate deploy.yaml\n" +
			"  zlctl validate --print deploy.yaml\n" +
			"  cat deploy.yaml | zlctl validate -o json -",
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if output != "text" && output != "json" {
				return fmt.Errorf("unknown output format %q (use text or json)", output)
			}
			stdout, stderr := cmd.OutOrStdout(), cmd.ErrOrStderr()
			var results []validateResult
			failed := false
			for i, path := range args {
				r := validateFile(cmd, path, printYAML)
				results = append(results, r)
				if !r.Valid {
					failed = true
				}
				if output == "text" {
					if err := printValidateText(stdout, stderr, r, printYAML, i, len(args)); err != nil {
						return err
					}
				}
			}
			if output == "json" {
				enc := json.NewEncoder(stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(results); err != nil {
					return err
				}
			}
			if failed {
				return &exitError{code: 1}
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&printYAML, "print", false, "print each valid file with all defaults filled in (YAML)")
	cmd.Flags().StringVarP(&output, "output", "o", "text", "output format: text or json")
	return cmd
}

// validateFile reads and checks one file. A file that cannot be read is
// invalid, with the reason as its one error.
func validateFile(cmd *cobra.Command, path string, printYAML bool) validateResult {
	name, data, err := readSpecFile(cmd, path)
	if err != nil {
		return validateResult{File: path, Errors: []*spec.FieldError{{File: path, Msg: readErrorMsg(err)}}}
	}
	r := validateResult{File: name}
	d, err := spec.Parse(name, data)
	if err != nil {
		var list spec.Errors
		if !errors.As(err, &list) {
			list = spec.Errors{{File: name, Msg: err.Error()}}
		}
		r.Errors = list
		return r
	}
	r.Valid = true
	r.Deployment = d.Deployment
	for _, n := range d.ServiceNames() {
		s := d.Services[n]
		r.Services = append(r.Services, validateService{Name: n, RType: string(s.RType), Hash: s.Hash()})
	}
	if printYAML {
		out, err := d.Marshal()
		if err != nil {
			r.Valid = false
			r.Errors = []*spec.FieldError{{File: name, Msg: err.Error()}}
			return r
		}
		var v any
		if err := yaml.Unmarshal(out, &v); err == nil {
			r.Resolved = v
		}
		r.printed = out
	}
	return r
}

// readErrorMsg shortens an os error: the file name is printed already.
func readErrorMsg(err error) string {
	msg := err.Error()
	if i := strings.LastIndex(msg, ": "); i >= 0 && strings.HasPrefix(msg, "open ") {
		msg = msg[i+2:]
	}
	return "cannot read: " + msg
}

func printValidateText(stdout, stderr io.Writer, r validateResult, printYAML bool, i, n int) error {
	if !r.Valid {
		for _, e := range r.Errors {
			if _, err := fmt.Fprintln(stderr, e.Error()); err != nil {
				return err
			}
		}
		noun := "problem"
		if len(r.Errors) != 1 {
			noun = "problems"
		}
		_, err := fmt.Fprintf(stderr, "%s: invalid, %d %s\n", r.File, len(r.Errors), noun)
		return err
	}
	if !printYAML {
		_, err := fmt.Fprintf(stdout, "%s: valid: deployment %s, %s\n", r.File, r.Deployment, summarize(r.Services))
		return err
	}
	if n > 1 {
		if i > 0 {
			if _, err := fmt.Fprintln(stdout, "---"); err != nil {
				return err
			}
		}
		if _, err := fmt.Fprintf(stdout, "# %s\n", r.File); err != nil {
			return err
		}
	}
	_, err := stdout.Write(r.printed)
	return err
}

// summarize counts services by rtype: "2 services (web, api), 1 cron job (backup)".
func summarize(svcs []validateService) string {
	kinds := []struct{ rtype, one, many string }{
		{"service", "service", "services"},
		{"job", "job", "jobs"},
		{"cron", "cron job", "cron jobs"},
	}
	var parts []string
	for _, k := range kinds {
		var names []string
		for _, s := range svcs {
			if s.RType == k.rtype {
				names = append(names, s.Name)
			}
		}
		if len(names) == 0 {
			continue
		}
		noun := k.many
		if len(names) == 1 {
			noun = k.one
		}
		parts = append(parts, fmt.Sprintf("%d %s (%s)", len(names), noun, strings.Join(names, ", ")))
	}
	return strings.Join(parts, ", ")
}
