package spec

import (
	"errors"
	"testing"
	"time"

	"zlayer.dev/libs/errkind"
)

func TestParseDuration(t *testing.T) {
	tests := []struct {
		in      string
		want    time.Duration
		wantErr bool
	}{
		{in: "500ms", want: 500 * time.Millisecond},
		{in: "15s", want: 15 * time.Second},
		{in: "1m30s", want: 90 * time.Second},
		{in: "1.5h", want: 90 * time.Minute},
		{in: "2h45m10s250ms", want: 2*time.Hour + 45*time.Minute + 10*time.Second + 250*time.Millisecond},
		{in: "0s", want: 0},
		{in: "30", wantErr: true},
		{in: "1d", wantErr: true},
		{in: "10us", wantErr: true},
		{in: "0.5ms", wantErr: true},
		{in: "-5s", wantErr: true},
		{in: " 5s", wantErr: true},
		{in: "", wantErr: true},
		{in: "99999999999h", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseDuration(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseDuration(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if err == nil && got.D() != tt.want {
				t.Errorf("ParseDuration(%q) = %v, want %v", tt.in, got.D(), tt.want)
			}
			if err == nil {
				back, err := ParseDuration(got.String())
				if err != nil || back != got {
					t.Errorf("String() %q does not parse back: %v, %v", got.String(), back, err)
				}
			}
		})
	}
}

func TestDurationString(t *testing.T) {
	for d, want := range map[time.Duration]string{
		0:                       "0s",
		500 * time.Millisecond:  "500ms",
		90 * time.Second:        "1m30s",
		5 * time.Minute:         "5m",
		time.Hour + time.Second: "1h1s",
		1500 * time.Millisecond: "1s500ms",
	} {
		if got := Duration(d).String(); got != want {
			t.Errorf("Duration(%v).String() = %q, want %q", d, got, want)
		}
	}
}

func TestParseMemory(t *testing.T) {
	tests := []struct {
		in      string
		want    int64
		str     string
		wantErr bool
	}{
		{in: "512Mi", want: 512 << 20, str: "512Mi"},
		{in: "1G", want: 1e9, str: "1G"},
		{in: "1048576", want: 1 << 20, str: "1Mi"},
		{in: "1000", want: 1000, str: "1K"},
		{in: "1500", want: 1500, str: "1500"},
		{in: "2Ti", want: 2 << 40, str: "2Ti"},
		{in: "3K", want: 3000, str: "3K"},
		{in: "1Ki", want: 1024, str: "1Ki"},
		{in: "512MB", wantErr: true},
		{in: "512mi", wantErr: true},
		{in: "1.5Gi", wantErr: true},
		{in: "-1", wantErr: true},
		{in: "9999999999999999999", wantErr: true},
		{in: "9999999999T", wantErr: true},
		{in: "", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParseMemory(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParseMemory(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if err != nil {
				return
			}
			if got.Bytes() != tt.want {
				t.Errorf("ParseMemory(%q) = %d, want %d", tt.in, got.Bytes(), tt.want)
			}
			if got.String() != tt.str {
				t.Errorf("String() = %q, want %q", got.String(), tt.str)
			}
		})
	}
}

func TestParsePercent(t *testing.T) {
	tests := []struct {
		in      string
		want    Percent
		wantErr bool
	}{
		{in: "70%", want: 70},
		{in: "70", want: 70},
		{in: "62.5%", want: 62.5},
		{in: "250%", want: 250},
		{in: "seventy", wantErr: true},
		{in: "1e2%", wantErr: true},
		{in: "NaN%", wantErr: true},
		{in: "%", wantErr: true},
	}
	for _, tt := range tests {
		t.Run(tt.in, func(t *testing.T) {
			got, err := ParsePercent(tt.in)
			if (err != nil) != tt.wantErr {
				t.Fatalf("ParsePercent(%q) error = %v, wantErr %v", tt.in, err, tt.wantErr)
			}
			if err == nil && got != tt.want {
				t.Errorf("ParsePercent(%q) = %v, want %v", tt.in, got, tt.want)
			}
		})
	}
}

func TestCronNext(t *testing.T) {
	utc := func(s string) time.Time {
		t.Helper()
		v, err := time.Parse("2006-01-02 15:04:05", s)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	berlin, err := time.LoadLocation("Europe/Berlin")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name  string
		expr  string
		after string
		loc   *time.Location
		want  string // UTC
	}{
		{"every five minutes", "*/5 * * * *", "2026-03-10 10:02:30", nil, "2026-03-10 10:05:00"},
		{"strictly after", "*/5 * * * *", "2026-03-10 10:05:00", nil, "2026-03-10 10:10:00"},
		{"hourly", "@hourly", "2026-03-10 10:00:00", nil, "2026-03-10 11:00:00"},
		{"daily", "@daily", "2026-03-10 10:00:00", nil, "2026-03-11 00:00:00"},
		{"weekly is sunday", "@weekly", "2026-03-10 10:00:00", nil, "2026-03-15 00:00:00"},
		{"every", "@every 90s", "2026-03-10 10:00:00", nil, "2026-03-10 10:01:30"},
		{"weekdays by name", "30 9 * * mon-fri", "2026-03-13 10:00:00", nil, "2026-03-16 09:30:00"},
		{"month names and lists", "0 0 1 jan,jul *", "2026-03-10 10:00:00", nil, "2026-07-01 00:00:00"},
		{"range with step", "10-30/10 8 * * *", "2026-03-10 08:15:00", nil, "2026-03-10 08:20:00"},
		{"next year", "0 0 1 1 *", "2026-03-10 10:00:00", nil, "2027-01-01 00:00:00"},
		{"leap day", "0 12 29 2 *", "2026-03-10 10:00:00", nil, "2028-02-29 12:00:00"},
		{"sunday as 7", "0 0 * * 7", "2026-03-10 10:00:00", nil, "2026-03-15 00:00:00"},
		{"dom or dow when both set", "0 0 13 * fri", "2026-03-10 10:00:00", nil, "2026-03-13 00:00:00"},
		{"dom or dow, dow first", "0 0 20 * mon", "2026-03-10 10:00:00", nil, "2026-03-16 00:00:00"},
		{"in a time zone", "0 9 * * *", "2026-03-10 10:00:00", berlin, "2026-03-11 08:00:00"},
		// 02:30 does not exist in Berlin on 2026-03-29: that run is skipped.
		{"across a dst gap", "30 2 * * *", "2026-03-28 12:00:00", berlin, "2026-03-30 00:30:00"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c, err := ParseCron(tt.expr)
			if err != nil {
				t.Fatal(err)
			}
			got := c.Next(utc(tt.after), tt.loc).UTC()
			if want := utc(tt.want); !got.Equal(want) {
				t.Errorf("ParseCron(%q).Next(%s) = %s, want %s", tt.expr, tt.after, got, want)
			}
		})
	}
	// 02:30 happens twice in Berlin on 2026-10-25: the job runs once.
	c, _ := ParseCron("30 2 * * *")
	first := c.Next(utc("2026-10-24 12:00:00"), berlin)
	if h, m, _ := first.In(berlin).Clock(); first.In(berlin).Day() != 25 || h != 2 || m != 30 {
		t.Errorf("first run in the fold = %s, want 02:30 on the 25th", first.In(berlin))
	}
	if second := c.Next(first, berlin); second.In(berlin).Day() != 26 {
		t.Errorf("run after %s = %s, want the 26th", first.In(berlin), second.In(berlin))
	}
	if !(Cron{}).Next(time.Now(), nil).IsZero() {
		t.Errorf("unset Cron has a next run")
	}
}

func TestResolveEnv(t *testing.T) {
	s := &Service{Name: "api", Env: map[string]string{
		"PLAIN":  "value",
		"PASS":   "$E:DB_PASS",
		"EMPTY":  "$E:EMPTY_ON_NODE",
		"TOKEN":  "$E:API_TOKEN",
		"TOKEN2": "$E:API_TOKEN",
	}}
	node := map[string]string{"DB_PASS": "s3cret", "EMPTY_ON_NODE": ""}
	lookup := func(k string) (string, bool) { v, ok := node[k]; return v, ok }

	_, err := ResolveEnv(s, lookup)
	var me *MissingEnvError
	if !errors.As(err, &me) {
		t.Fatalf("ResolveEnv error = %v, want *MissingEnvError", err)
	}
	if !errors.Is(err, errkind.Precondition) {
		t.Errorf("errors.Is(err, errkind.Precondition) = false")
	}
	want := "service api: environment variables not set on this node: API_TOKEN (for env TOKEN), API_TOKEN (for env TOKEN2)"
	if err.Error() != want {
		t.Errorf("error = %q\nwant    %q", err, want)
	}

	node["API_TOKEN"] = "t"
	got, err := ResolveEnv(s, lookup)
	if err != nil {
		t.Fatal(err)
	}
	wantEnv := map[string]string{"PLAIN": "value", "PASS": "s3cret", "EMPTY": "", "TOKEN": "t", "TOKEN2": "t"}
	for k, v := range wantEnv {
		if got[k] != v {
			t.Errorf("env %s = %q, want %q", k, got[k], v)
		}
	}
	if s.Env["PASS"] != "$E:DB_PASS" {
		t.Errorf("ResolveEnv modified the service")
	}
}

func TestHash(t *testing.T) {
	parse := func(body string) *Service {
		t.Helper()
		d, err := Parse("h.yaml", []byte("version: v1\ndeployment: a\nservices:\n  web:\n"+body))
		if err != nil {
			t.Fatal(err)
		}
		return d.Services["web"]
	}
	base := parse("    image: {name: nginx}\n    resources: {memory: 512Mi}\n    env: {A: x, B: y}\n")
	same := []string{
		// Key order, defaults written out, another spelling of the same size.
		"    env: {B: y, A: x}\n    resources: {memory: 536870912}\n    image: {pull_policy: if_not_present, name: nginx}\n",
		"    image: {name: nginx}\n    resources: {memory: 512Mi}\n    env: {A: x, B: y}\n    scale: {mode: adaptive, min: 1, max: 10, targets: {cpu: 70}}\n",
	}
	for _, body := range same {
		if got := parse(body).Hash(); got != base.Hash() {
			t.Errorf("same spec, different hash:\n%s", body)
		}
	}
	different := []string{
		"    image: {name: nginx:1.27}\n    resources: {memory: 512Mi}\n    env: {A: x, B: y}\n",
		"    image: {name: nginx}\n    resources: {memory: 512Mi}\n    env: {A: x, B: z}\n",
		"    image: {name: nginx}\n    resources: {memory: 512Mi}\n    env: {A: x, B: y}\n    scale: {max: 11}\n",
		"    image: {name: nginx}\n    resources: {memory: 512Mi}\n    env: {A: x, B: y}\n    health: {start_grace: 0s, check: {type: command, command: x}}\n",
		"    image: {name: nginx}\n    resources: {memory: 512Mi}\n    env: {A: x, B: y}\n    health: {check: {type: command, command: x}}\n",
	}
	seen := map[string]string{base.Hash(): "base"}
	for _, body := range different {
		h := parse(body).Hash()
		if prev, dup := seen[h]; dup {
			t.Errorf("different specs, same hash as %s:\n%s", prev, body)
		}
		seen[h] = body
	}
}
