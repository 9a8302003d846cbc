package store

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/opencontainers/go-digest"
	"go.uber.org/zap/zaptest"

	"zlayer.dev/libs/errkind"
)

func TestPutBlobChecksDigest(t *testing.T) {
	s, err := Open(t.TempDir(), zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	good := []byte("content")
	d := digest.FromBytes(good)
	if err := s.PutBlob(d, []byte("other")); !errors.Is(err, ErrDigestMismatch) {
		t.Fatalf("PutBlob with wrong content = %v, want a digest mismatch", err)
	}
	if s.HasBlob(d) {
		t.Fatal("a mismatching blob was stored")
	}
	if err := s.PutBlob(d, good); err != nil {
		t.Fatal(err)
	}
	if b, err := s.ReadBlob(d); err != nil || string(b) != "content" {
		t.Fatalf("ReadBlob = %q, %v", b, err)
	}
	// Bit rot on disk is detected on read.
	if err := os.WriteFile(s.BlobPath(d), []byte("rotten!"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := s.ReadBlob(d); !errors.Is(err, errkind.Invalid) {
		t.Fatalf("ReadBlob of a damaged blob = %v", err)
	}
	if _, err := s.ReadBlob(digest.FromString("absent")); !errors.Is(err, errkind.NotFound) {
		t.Fatalf("ReadBlob of an absent blob = %v", err)
	}
}

func TestOpenRemovesLeftoversAndKeepsRecords(t *testing.T) {
	root := t.TempDir()
	s, err := Open(root, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	cfg := []byte("{}")
	d := digest.FromBytes(cfg)
	if err := s.PutBlob(d, cfg); err != nil {
		t.Fatal(err)
	}
	img := Image{Name: "example.com/a:1", Digest: d, ManifestDigest: d, ConfigDigest: d}
	if err := s.Put(img); err != nil {
		t.Fatal(err)
	}
	// What a killed pull leaves: a half-written layer in tmp.
	if err := os.MkdirAll(filepath.Join(root, "tmp", "layer-123", "fs", "bin"), 0o755); err != nil {
		t.Fatal(err)
	}
	s2, err := Open(root, zaptest.NewLogger(t))
	if err != nil {
		t.Fatal(err)
	}
	if ents, _ := os.ReadDir(filepath.Join(root, "tmp")); len(ents) != 0 {
		t.Errorf("tmp not cleaned: %v", ents)
	}
	if got, err := s2.Get(img.Name); err != nil || got.Digest != d {
		t.Errorf("record lost: %v %v", got, err)
	}
	// A record naming a missing layer is refused.
	bad := img
	bad.Name = "example.com/b:1"
	bad.Layers = []Layer{{Digest: d, DiffID: digest.FromString("missing")}}
	if err := s2.Put(bad); !errors.Is(err, errkind.Precondition) {
		t.Errorf("Put with a missing layer = %v", err)
	}
}
