package spec

import (
	"fmt"
	"math/bits"
	"strconv"
	"strings"
	"time"

	"gopkg.in/yaml.v3"
)

// Cron is a parsed schedule: five fields (minute hour day-of-month month
// day-of-week, with *, ranges a-b, steps /n, lists a,b and the names
// jan…dec, sun…sat), or one of @hourly, @daily, @weekly, @every <duration>.
// The zero Cron is unset. Build one with ParseCron.
type Cron struct {
	expr    string
	every   time.Duration
	minute  uint64 // bit i: minute i (0-59)
	hour    uint64 // 0-23
	dom     uint64 // 1-31
	month   uint64 // 1-12
	dow     uint64 // 0-6, Sunday is 0
	domStar bool   // day-of-month field starts with *
	dowStar bool   // day-of-week field starts with *
}

var cronMacros = map[string]string{
	"@hourly": "0 * * * *",
	"@daily":  "0 0 * * *",
	"@weekly": "0 0 * * 0",
}

type cronField struct {
	name     string
	min, max int
	names    []string // names[i] is value min+i
}

var cronFields = [5]cronField{
	{name: "minute", min: 0, max: 59},
	{name: "hour", min: 0, max: 23},
	{name: "day-of-month", min: 1, max: 31},
	{name: "month", min: 1, max: 12, names: []string{"jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec"}},
	{name: "day-of-week", min: 0, max: 7, names: []string{"sun", "mon", "tue", "wed", "thu", "fri", "sat"}},
}

// ParseCron parses a schedule. It rejects schedules that never run, such as
// "0 0 30 2 *".
func ParseCron(s string) (Cron, error) {
	expr := strings.Join(strings.Fields(s), " ")
	if expr == "" {
		return Cron{}, fmt.Errorf("empty schedule (write five fields such as \"*/5 * * * *\" or @hourly, @daily, @weekly, @every 10m)")
	}
	if strings.HasPrefix(expr, "@") {
		if rest, ok := strings.CutPrefix(expr, "@every "); ok {
			d, err := ParseDuration(rest)
			if err != nil {
				return Cron{}, fmt.Errorf("invalid schedule %q: %v", s, err)
			}
			if d < Duration(time.Second) {
				return Cron{}, fmt.Errorf("invalid schedule %q: @every needs at least 1s", s)
			}
			return Cron{expr: expr, every: d.D()}, nil
		}
		five, ok := cronMacros[expr]
		if !ok {
			return Cron{}, fmt.Errorf("unknown schedule %q (allowed: @hourly, @daily, @weekly, @every <duration>, or five fields such as \"0 0 1 * *\")", expr)
		}
		c, err := parseFive(five)
		c.expr = expr
		return c, err
	}
	c, err := parseFive(expr)
	if err != nil {
		return Cron{}, fmt.Errorf("invalid schedule %q: %v", s, err)
	}
	c.expr = expr
	// A schedule that never fires in eight years (two leap cycles) never fires.
	start := time.Date(2000, 1, 1, 0, 0, 0, 0, time.UTC)
	if c.next(start, time.UTC, 8).IsZero() {
		return Cron{}, fmt.Errorf("invalid schedule %q: it never runs (no such date)", s)
	}
	return c, nil
}

func parseFive(expr string) (Cron, error) {
	f := strings.Fields(expr)
	if len(f) != 5 {
		hint := ""
		if len(f) == 6 {
			hint = "; seconds are not supported"
		}
		return Cron{}, fmt.Errorf("expected 5 fields (minute hour day-of-month month day-of-week), got %d%s", len(f), hint)
	}
	var c Cron
	sets := [5]*uint64{&c.minute, &c.hour, &c.dom, &c.month, &c.dow}
	for i, text := range f {
		set, err := parseCronField(text, cronFields[i])
		if err != nil {
			return Cron{}, err
		}
		*sets[i] = set
	}
	if c.dow&(1<<7) != 0 { // 7 is Sunday too
		c.dow = c.dow&^(1<<7) | 1
	}
	c.domStar = strings.HasPrefix(f[2], "*")
	c.dowStar = strings.HasPrefix(f[4], "*")
	return c, nil
}

func parseCronField(text string, f cronField) (uint64, error) {
	var set uint64
	for item := range strings.SplitSeq(text, ",") {
		bad := func(why string) error {
			return fmt.Errorf("%s field %q: %s", f.name, item, why)
		}
		rng, stepText, hasStep := strings.Cut(item, "/")
		step := 1
		if hasStep {
			n, err := strconv.Atoi(stepText)
			if err != nil || n < 1 || n > f.max {
				return 0, bad(fmt.Sprintf("step must be a number 1-%d", f.max))
			}
			step = n
		}
		lo, hi := f.min, f.max
		switch {
		case rng == "*":
		case strings.Contains(rng, "-"):
			a, b, _ := strings.Cut(rng, "-")
			var err error
			if lo, err = cronValue(a, f); err != nil {
				return 0, bad(err.Error())
			}
			if hi, err = cronValue(b, f); err != nil {
				return 0, bad(err.Error())
			}
			if lo > hi {
				return 0, bad(fmt.Sprintf("range start %d is after its end %d", lo, hi))
			}
		default:
			v, err := cronValue(rng, f)
			if err != nil {
				return 0, bad(err.Error())
			}
			lo = v
			if !hasStep {
				hi = v
			}
		}
		for v := lo; v <= hi; v += step {
			set |= 1 << v
		}
	}
	return set, nil
}

func cronValue(s string, f cronField) (int, error) {
	for i, n := range f.names {
		if strings.EqualFold(s, n) {
			return f.min + i, nil
		}
	}
	v, err := strconv.Atoi(s)
	if err != nil || v < f.min || v > f.max {
		if f.names != nil {
			return 0, fmt.Errorf("expected %d-%d or a name (%s…%s)", f.min, f.max, f.names[0], f.names[len(f.names)-1])
		}
		return 0, fmt.Errorf("expected %d-%d", f.min, f.max)
	}
	return v, nil
}

// String returns the schedule as written (with whitespace normalized).
func (c Cron) String() string { return c.expr }

// IsZero reports whether c is unset.
func (c Cron) IsZero() bool { return c.expr == "" }

// Equal reports whether c and o are the same schedule as written.
func (c Cron) Equal(o Cron) bool { return c.expr == o.expr }

// Every returns the interval of an @every schedule, or 0.
func (c Cron) Every() time.Duration { return c.every }

// Next returns the first time strictly after after at which the schedule
// runs, evaluating the fields in loc (nil means UTC). An @every schedule runs
// every interval from after. Next returns the zero time for an unset Cron.
// When both day-of-month and day-of-week are restricted, a day matching
// either runs (as in Vixie cron). A wall-clock time that a daylight-saving
// change skips does not run that day; one it repeats runs once.
func (c Cron) Next(after time.Time, loc *time.Location) time.Time {
	if loc == nil {
		loc = time.UTC
	}
	if c.expr == "" {
		return time.Time{}
	}
	if c.every > 0 {
		return after.Add(c.every)
	}
	return c.next(after, loc, 8)
}

func (c Cron) next(after time.Time, loc *time.Location, years int) time.Time {
	t := after.In(loc)
	t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), t.Minute(), 0, 0, loc).Add(time.Minute)
	limit := t.Year() + years
	for t.Year() <= limit {
		prev := t
		switch {
		case c.month&(1<<uint(t.Month())) == 0:
			t = time.Date(t.Year(), t.Month()+1, 1, 0, 0, 0, 0, loc)
		case !c.dayMatches(t):
			t = time.Date(t.Year(), t.Month(), t.Day()+1, 0, 0, 0, 0, loc)
		case c.hour&(1<<uint(t.Hour())) == 0:
			t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour()+1, 0, 0, 0, loc)
		case c.minute&(1<<uint(t.Minute())) == 0:
			// Jump to the next allowed minute in this hour, if any.
			rest := c.minute >> uint(t.Minute()+1) << uint(t.Minute()+1)
			if rest == 0 {
				t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour()+1, 0, 0, 0, loc)
			} else {
				t = time.Date(t.Year(), t.Month(), t.Day(), t.Hour(), bits.TrailingZeros64(rest), 0, 0, loc)
			}
		default:
			return t
		}
		if !t.After(prev) { // a daylight-saving jump folded time back
			t = prev.Add(time.Minute)
		}
	}
	return time.Time{}
}

func (c Cron) dayMatches(t time.Time) bool {
	dom := c.dom&(1<<uint(t.Day())) != 0
	dow := c.dow&(1<<uint(t.Weekday())) != 0
	if c.domStar || c.dowStar {
		return dom && dow
	}
	return dom || dow
}

func (c *Cron) decodeNode(n *yaml.Node) string {
	if n.Kind != yaml.ScalarNode || n.Tag != "!!str" {
		return "expected a schedule such as \"*/5 * * * *\" or \"@every 10m\", got " + kindName(n)
	}
	v, err := ParseCron(n.Value)
	if err != nil {
		return err.Error()
	}
	*c = v
	return ""
}

func (c *Cron) encodeNode() *yaml.Node { return strNode(c.expr) }

func (Cron) jsonSchema() map[string]any {
	field := `[0-9A-Za-z*,/-]+`
	return map[string]any{
		"type":    "string",
		"pattern": `^(@hourly|@daily|@weekly|@every ([0-9]+(\.[0-9]+)?(ms|h|m|s))+|\s*` + field + `(\s+` + field + `){4}\s*)$`,
	}
}
