package certs

import (
	"crypto/ecdsa"
	"crypto/tls"
	"crypto/x509"
	"encoding/pem"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"go.uber.org/zap/zaptest"
)

func writePair(t *testing.T, dir, file, name string) *tls.Certificate {
	t.Helper()
	c, err := SelfSigned(name, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	key, err := x509.MarshalECPrivateKey(c.PrivateKey.(*ecdsa.PrivateKey))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, file+".crt"), pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: c.Certificate[0]}), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, file+".key"), pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: key}), 0o600); err != nil {
		t.Fatal(err)
	}
	return c
}

func TestChoosesStaticThenSelfSigned(t *testing.T) {
	dir := t.TempDir()
	shop := writePair(t, dir, "shop", "shop.example.test")
	wild := writePair(t, dir, "wild", "*.apps.example.test")
	m, err := New(Config{StaticDir: dir, Log: zaptest.NewLogger(t)})
	if err != nil {
		t.Fatal(err)
	}
	defer m.Close()
	for _, tt := range []struct {
		sni  string
		want *tls.Certificate // nil: self-signed for the name
	}{
		{"shop.example.test", shop},
		{"SHOP.example.test.", shop},
		{"a.apps.example.test", wild},
		{"other.example.test", nil},
		{"", nil},
	} {
		got, err := m.GetCertificate(&tls.ClientHelloInfo{ServerName: tt.sni})
		if err != nil {
			t.Fatal(err)
		}
		if tt.want != nil {
			if got.Leaf.SerialNumber.Cmp(tt.want.Leaf.SerialNumber) != 0 {
				t.Errorf("%q: served %v, want the static certificate", tt.sni, got.Leaf.DNSNames)
			}
			continue
		}
		name := tt.sni
		if name == "" {
			name = "localhost"
		}
		if err := got.Leaf.VerifyHostname(name); err != nil || !strings.Contains(got.Leaf.Subject.Organization[0], "self-signed") {
			t.Errorf("%q: served %v (%v), want self-signed for it", tt.sni, got.Leaf.Subject, err)
		}
		again, _ := m.GetCertificate(&tls.ClientHelloInfo{ServerName: tt.sni})
		if again != got {
			t.Errorf("%q: self-signed certificate made twice", tt.sni)
		}
	}
}

func TestBadStaticDirectory(t *testing.T) {
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "broken.crt"), []byte("not pem"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := New(Config{StaticDir: dir, Log: zaptest.NewLogger(t)}); err == nil || !strings.Contains(err.Error(), "broken.crt") {
		t.Fatalf("got %v, want an error naming broken.crt", err)
	}
	if _, err := New(Config{StaticDir: filepath.Join(dir, "missing"), Log: zaptest.NewLogger(t)}); err == nil {
		t.Fatal("missing directory accepted")
	}
}
