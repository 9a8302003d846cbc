package spec

import (
	"fmt"
	"net"
	"net/url"
	"regexp"
	"strings"
)

var (
	nameRE    = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	envNameRE = regexp.MustCompile(`^[A-Za-z_][A-Za-z0-9_]*$`)
	hostRE    = regexp.MustCompile(`^(\*\.)?[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$`)
	imageRE   = func() *regexp.Regexp {
		domainComp := `(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])`
		domain := domainComp + `(?:\.` + domainComp + `)*(?::[0-9]+)?`
		pathComp := `[a-z0-9]+(?:(?:[._]|__|-+)[a-z0-9]+)*`
		name := `(?:` + domain + `/)?` + pathComp + `(?:/` + pathComp + `)*`
		tag := `[\w][\w.-]{0,127}`
		digest := `[a-z0-9]+(?:[+._-][a-z0-9]+)*:[0-9a-fA-F]{32,}`
		return regexp.MustCompile(`^` + name + `(?::` + tag + `)?(?:@` + digest + `)?$`)
	}()
)

// formatPatterns are the JSON Schema patterns of the string formats.
var formatPatterns = map[string]string{
	"name":    nameRE.String(),
	"envname": envNameRE.String(),
	"host":    hostRE.String(),
	"image":   imageRE.String(),
	"path":    `^/`,
	"urlpath": `^(/|https?://)`,
	"httpurl": `^https?://`,
}

// checkFormat returns "" when s has the syntax format, else a message.
func checkFormat(format, s string) string {
	switch format {
	case "name":
		if nameRE.MatchString(s) {
			return ""
		}
		msg := fmt.Sprintf("invalid name %q: use a DNS label (lowercase letters, digits and '-', at most 63, starting and ending with a letter or digit)", s)
		if fix := nameFix(s); fix != "" && fix != s {
			msg += fmt.Sprintf("; try %q", fix)
		}
		return msg
	case "envname":
		if envNameRE.MatchString(s) {
			return ""
		}
		return fmt.Sprintf("invalid variable name %q: use letters, digits and '_', not starting with a digit", s)
	case "host":
		if hostRE.MatchString(s) && len(s) <= 253 || net.ParseIP(s) != nil {
			return ""
		}
		return fmt.Sprintf("invalid host name %q (e.g. api.example.com)", s)
	case "image":
		if s != "" && len(s) <= 1024 && imageRE.MatchString(s) {
			return ""
		}
		if strings.Contains(s, "://") {
			return fmt.Sprintf("invalid image reference %q: drop the scheme (e.g. registry.example.com/team/app:1.0)", s)
		}
		if s != strings.ToLower(s) {
			return fmt.Sprintf("invalid image reference %q: repository names are lowercase", s)
		}
		return fmt.Sprintf("invalid image reference %q (e.g. nginx, nginx:1.27, host:5000/team/app@sha256:…)", s)
	case "path":
		if strings.HasPrefix(s, "/") && !strings.ContainsAny(s, " \t\n") {
			return ""
		}
		return fmt.Sprintf("invalid path %q: must start with / (e.g. /api)", s)
	case "urlpath":
		if strings.HasPrefix(s, "/") && !strings.ContainsAny(s, " \t\n") {
			return ""
		}
		if httpURL(s) {
			return ""
		}
		return fmt.Sprintf("invalid url %q: write a path such as /health or an http:// URL", s)
	case "httpurl":
		if httpURL(s) {
			return ""
		}
		return fmt.Sprintf("invalid url %q: write an http:// or https:// URL (e.g. http://api.global:8080/ready)", s)
	case "":
		return ""
	}
	panic("spec: unknown format " + format)
}

func httpURL(s string) bool {
	u, err := url.Parse(s)
	return err == nil && (u.Scheme == "http" || u.Scheme == "https") && u.Host != ""
}

// nameFix turns s into a DNS label if it can: "My_App" → "my-app".
func nameFix(s string) string {
	var b strings.Builder
	for _, r := range strings.ToLower(s) {
		switch {
		case r >= 'a' && r <= 'z' || r >= '0' && r <= '9':
			b.WriteRune(r)
		case r == '-' || r == '_' || r == '.' || r == ' ':
			b.WriteByte('-')
		}
	}
	fix := strings.Trim(b.String(), "-")
	if !nameRE.MatchString(fix) {
		return ""
	}
	return fix
}
