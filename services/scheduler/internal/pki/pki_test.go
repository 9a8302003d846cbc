package pki

import (
	"crypto/tls"
	"errors"
	"io"
	"os"
	"path/filepath"
	"testing"

	"zlayer.dev/libs/errkind"
)

func mustCreds(t *testing.T, ca *CA, id uint64, addr string) *Credentials {
	t.Helper()
	certPEM, keyPEM, err := ca.Issue(id, addr)
	if err != nil {
		t.Fatalf("Issue: %v", err)
	}
	c, err := NewCredentials(ca.CertPEM, certPEM, keyPEM)
	if err != nil {
		t.Fatalf("NewCredentials: %v", err)
	}
	return c
}

func mustCA(t *testing.T) *CA {
	t.Helper()
	ca, err := NewCA()
	if err != nil {
		t.Fatalf("NewCA: %v", err)
	}
	return ca
}

func TestIssue(t *testing.T) {
	ca := mustCA(t)
	tests := []struct {
		name    string
		addr    string
		wantIP  bool
		wantDNS string
	}{
		{name: "ip and port", addr: "10.1.2.3:7946", wantIP: true},
		{name: "hostname", addr: "node-a.example:7946", wantDNS: "node-a.example"},
		{name: "bare ip", addr: "127.0.0.1", wantIP: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			c := mustCreds(t, ca, 0xabc, tt.addr)
			leaf := c.pair.Leaf
			if c.MemberID() != 0xabc {
				t.Fatalf("MemberID = %x", c.MemberID())
			}
			if got := len(leaf.IPAddresses) == 1; got != tt.wantIP {
				t.Fatalf("IP SANs = %v", leaf.IPAddresses)
			}
			names := map[string]bool{}
			for _, n := range leaf.DNSNames {
				names[n] = true
			}
			if !names[MemberName(0xabc)] || (tt.wantDNS != "" && !names[tt.wantDNS]) {
				t.Fatalf("DNS SANs = %v", leaf.DNSNames)
			}
		})
	}
	if _, _, err := ca.Issue(0, "127.0.0.1:1"); !errors.Is(err, errkind.Invalid) {
		t.Fatalf("Issue(0) err = %v, want Invalid", err)
	}
}

func TestForeignCertificateRejected(t *testing.T) {
	a, b := mustCA(t), mustCA(t)
	certPEM, keyPEM, err := b.Issue(7, "127.0.0.1:1")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := NewCredentials(a.CertPEM, certPEM, keyPEM); !errors.Is(err, errkind.Invalid) {
		t.Fatalf("NewCredentials with another CA's certificate: %v, want Invalid", err)
	}
	if _, err := ParseCA(a.CertPEM, b.KeyPEM); !errors.Is(err, errkind.Invalid) {
		t.Fatalf("ParseCA with another key: %v, want Invalid", err)
	}
}

func TestSaveLoad(t *testing.T) {
	dir := filepath.Join(t.TempDir(), "pki")
	if _, err := LoadCredentials(dir); !errors.Is(err, errkind.NotFound) {
		t.Fatalf("LoadCredentials(empty) = %v, want NotFound", err)
	}
	ca := mustCA(t)
	c := mustCreds(t, ca, 9, "127.0.0.1:7946")
	if err := SaveCA(dir, ca); err != nil {
		t.Fatal(err)
	}
	if err := SaveCredentials(dir, c); err != nil {
		t.Fatal(err)
	}
	got, err := LoadCredentials(dir)
	if err != nil || got.MemberID() != 9 || got.CAFingerprint() != ca.Fingerprint() {
		t.Fatalf("LoadCredentials = %v, %v", got, err)
	}
	ca2, err := LoadCA(dir)
	if err != nil || ca2.Fingerprint() != ca.Fingerprint() {
		t.Fatalf("LoadCA = %v", err)
	}
	for name, want := range map[string]os.FileMode{CAKeyFile: 0o600, MemberKeyFile: 0o600, CACertFile: 0o644} {
		fi, err := os.Stat(filepath.Join(dir, name))
		if err != nil || fi.Mode().Perm() != want {
			t.Fatalf("%s: mode %v, %v; want %v", name, fi.Mode().Perm(), err, want)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(dir, ".*tmp*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
}

// handshake runs one TLS exchange between a server and a client over
// loopback TCP and returns the client's and the server's errors.
func handshake(t *testing.T, server, client *tls.Config) (clientErr, serverErr error) {
	t.Helper()
	l, err := tls.Listen("tcp", "127.0.0.1:0", server)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	done := make(chan error, 1)
	go func() {
		c, err := l.Accept()
		if err != nil {
			done <- err
			return
		}
		defer c.Close()
		if err := c.(*tls.Conn).Handshake(); err != nil {
			done <- err
			return
		}
		_, err = c.Write([]byte("ok"))
		done <- err
	}()
	client = client.Clone()
	client.ServerName = "127.0.0.1"
	c, err := tls.Dial("tcp", l.Addr().String(), client)
	if err == nil {
		_, err = io.ReadFull(c, make([]byte, 2))
		c.Close()
	}
	return err, <-done
}

func TestMutualTLS(t *testing.T) {
	a, b := mustCA(t), mustCA(t)
	srv := mustCreds(t, a, 1, "127.0.0.1:7946")
	good := mustCreds(t, a, 2, "127.0.0.1:7947")
	foreign := mustCreds(t, b, 2, "127.0.0.1:7947")

	if cerr, serr := handshake(t, srv.ServerTLS(), good.ClientTLS()); cerr != nil || serr != nil {
		t.Fatalf("same CA: client %v, server %v", cerr, serr)
	}
	if _, serr := handshake(t, srv.ServerTLS(), foreign.ClientTLS()); serr == nil {
		t.Fatal("server accepted a client certificate from another CA")
	}
	if cerr, _ := handshake(t, foreign.ServerTLS(), good.ClientTLS()); cerr == nil {
		t.Fatal("client accepted a server certificate from another CA")
	}
	noCert := &tls.Config{RootCAs: good.pool, MinVersion: tls.VersionTLS13}
	if _, serr := handshake(t, srv.ServerTLS(), noCert); serr == nil {
		t.Fatal("server accepted a client without a certificate")
	}
	old := good.ClientTLS()
	old.MinVersion, old.MaxVersion = tls.VersionTLS12, tls.VersionTLS12
	if cerr, _ := handshake(t, srv.ServerTLS(), old); cerr == nil {
		t.Fatal("server accepted TLS 1.2")
	}
}
