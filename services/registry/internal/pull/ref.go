package pull

import (
	"fmt"
	"strings"

	"github.com/containers/image/v5/docker/reference"

	"zlayer.dev/libs/errkind"
)

// ParseReference normalizes an image reference the way Docker does:
// "nginx" is docker.io/library/nginx:latest, "team/app:1" is
// docker.io/team/app:1, "host:5000/app@sha256:…" stays as it is. A
// reference with both a tag and a digest keeps only the digest, which is
// what decides the content.
func ParseReference(s string) (reference.Named, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return nil, fmt.Errorf("image reference: %w: empty", errkind.Invalid)
	}
	named, err := reference.ParseNormalizedNamed(s)
	if err != nil {
		return nil, fmt.Errorf("image reference %q: %w: %w", s, errkind.Invalid, err)
	}
	if d, ok := named.(reference.Digested); ok {
		if _, tagged := named.(reference.Tagged); tagged {
			named, err = reference.WithDigest(reference.TrimNamed(named), d.Digest())
			if err != nil {
				return nil, fmt.Errorf("image reference %q: %w: %w", s, errkind.Invalid, err)
			}
		}
		return named, nil
	}
	return reference.TagNameOnly(named), nil
}

// Name returns the normalized form of reference s, the key images are
// recorded under.
func Name(s string) (string, error) {
	r, err := ParseReference(s)
	if err != nil {
		return "", err
	}
	return r.String(), nil
}
