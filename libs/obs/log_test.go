package obs

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"

	"go.uber.org/zap"
)

func TestNewLogger(t *testing.T) {
	tests := []struct {
		name, format, level string
		wantErr             string
	}{
		{name: "json", format: "json", level: "info"},
		{name: "console", format: "console", level: "debug"},
		{name: "bad format", format: "xml", level: "info", wantErr: `log format "xml": want json or console`},
		{name: "bad level", format: "json", level: "loud", wantErr: `log level "loud"`},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var buf bytes.Buffer
			log, err := NewLogger(&buf, tt.format, tt.level)
			if tt.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tt.wantErr) {
					t.Fatalf("NewLogger error = %v, want %q", err, tt.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			log.Info("replica started", zap.String(KeyReplica, "r1"))
			out := buf.String()
			if !strings.Contains(out, "replica started") || !strings.Contains(out, "r1") {
				t.Fatalf("log output %q lacks message or field", out)
			}
			if tt.format == "json" {
				var m map[string]any
				if err := json.Unmarshal(buf.Bytes(), &m); err != nil {
					t.Fatalf("json log line does not parse: %v: %q", err, out)
				}
				if m[KeyReplica] != "r1" || m["level"] != "info" {
					t.Fatalf("json fields = %v", m)
				}
			}
		})
	}
}
