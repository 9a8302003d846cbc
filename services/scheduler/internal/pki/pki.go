// Package pki is the scheduler cluster's certificate authority: it creates
// the cluster CA (ECDSA P-256), issues member certificates that name a
// member's Raft ID and peer address, stores both under the scheduler's data
// dir with atomic writes, and builds the mutual-TLS 1.3 configurations the
// peer transport uses. It does not talk to the network or to Raft, and it
// never rotates or revokes certificates: a removed member is refused by its
// Raft ID, not by its certificate.
package pki

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/hex"
	"encoding/pem"
	"errors"
	"fmt"
	"io/fs"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"strconv"
	"time"

	"zlayer.dev/libs/errkind"
)

// File names under a PKI directory (the scheduler uses <data-dir>/pki).
const (
	CACertFile     = "ca.crt"
	CAKeyFile      = "ca.key"
	MemberCertFile = "member.crt"
	MemberKeyFile  = "member.key"
)

// memberURIScheme is the scheme of the URI SAN naming a member's Raft ID:
// zlayer-member:<id in hex>.
const memberURIScheme = "zlayer-member"

// Validity periods. Certificates are long-lived because there is no rotation
// yet; the CA outlives every certificate it signs.
const (
	caValidity     = 20 * 365 * 24 * time.Hour
	memberValidity = 10 * 365 * 24 * time.Hour
)

// CA is the cluster certificate authority.
type CA struct {
	Cert    *x509.Certificate
	Key     *ecdsa.PrivateKey
	CertPEM []byte
	KeyPEM  []byte
}

// NewCA creates a fresh cluster CA.
func NewCA() (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("generate CA key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial,
		Subject:               pkix.Name{CommonName: "zlayer scheduler cluster CA", Organization: []string{"zlayer"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(caValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign | x509.KeyUsageDigitalSignature,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("create CA certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, fmt.Errorf("marshal CA key: %w", err)
	}
	return ParseCA(pemBlock("CERTIFICATE", der), pemBlock("EC PRIVATE KEY", keyDER))
}

// ParseCA reads a CA from its PEM certificate and key, checking that they
// belong together.
func ParseCA(certPEM, keyPEM []byte) (*CA, error) {
	cert, err := parseCert(certPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	if !cert.IsCA {
		return nil, fmt.Errorf("CA certificate: not a CA: %w", errkind.Invalid)
	}
	key, err := parseKey(keyPEM)
	if err != nil {
		return nil, fmt.Errorf("CA key: %w", err)
	}
	if !key.PublicKey.Equal(cert.PublicKey) {
		return nil, fmt.Errorf("CA key does not match the CA certificate: %w", errkind.Invalid)
	}
	return &CA{Cert: cert, Key: key, CertPEM: certPEM, KeyPEM: keyPEM}, nil
}

// Fingerprint is the SHA-256 of the CA certificate, lowercase hex.
func (ca *CA) Fingerprint() string { return Fingerprint(ca.Cert) }

// Fingerprint is the SHA-256 of cert's DER form, lowercase hex.
func Fingerprint(cert *x509.Certificate) string {
	sum := sha256.Sum256(cert.Raw)
	return hex.EncodeToString(sum[:])
}

// Issue creates a certificate and key for member id reachable at addr
// (host:port or host). Its SANs are the address's IP or DNS name and the URI
// zlayer-member:<id hex>; it is valid for both TLS server and client use.
func (ca *CA) Issue(id uint64, addr string) (certPEM, keyPEM []byte, err error) {
	if id == 0 {
		return nil, nil, fmt.Errorf("issue certificate: member id 0: %w", errkind.Invalid)
	}
	host := addr
	if h, _, err := net.SplitHostPort(addr); err == nil {
		host = h
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("generate member key: %w", err)
	}
	serial, err := newSerial()
	if err != nil {
		return nil, nil, err
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial,
		Subject:      pkix.Name{CommonName: MemberName(id), Organization: []string{"zlayer"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(memberValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{memberURI(id)},
		DNSNames:     []string{MemberName(id)},
	}
	switch ip := net.ParseIP(host); {
	case ip != nil:
		tmpl.IPAddresses = []net.IP{ip}
	case host != "":
		tmpl.DNSNames = append(tmpl.DNSNames, host)
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.Cert, &key.PublicKey, ca.Key)
	if err != nil {
		return nil, nil, fmt.Errorf("create member certificate: %w", err)
	}
	keyDER, err := x509.MarshalECPrivateKey(key)
	if err != nil {
		return nil, nil, fmt.Errorf("marshal member key: %w", err)
	}
	return pemBlock("CERTIFICATE", der), pemBlock("EC PRIVATE KEY", keyDER), nil
}

// MemberName is the DNS-style name a member's certificate carries besides
// its address: <id hex>.member.zlayer.
func MemberName(id uint64) string { return strconv.FormatUint(id, 16) + ".member.zlayer" }

func memberURI(id uint64) *url.URL {
	return &url.URL{Scheme: memberURIScheme, Opaque: strconv.FormatUint(id, 16)}
}

// MemberID returns the Raft member ID a member certificate names.
func MemberID(cert *x509.Certificate) (uint64, error) {
	for _, u := range cert.URIs {
		if u.Scheme != memberURIScheme {
			continue
		}
		id, err := strconv.ParseUint(u.Opaque, 16, 64)
		if err != nil || id == 0 {
			return 0, fmt.Errorf("certificate %q: bad member URI %q: %w", cert.Subject.CommonName, u, errkind.Unauthenticated)
		}
		return id, nil
	}
	return 0, fmt.Errorf("certificate %q names no member: %w", cert.Subject.CommonName, errkind.Unauthenticated)
}

// Credentials are what one member presents and trusts: the CA certificate
// and its own certificate and key.
type Credentials struct {
	CACertPEM []byte
	CertPEM   []byte
	KeyPEM    []byte

	ca   *x509.Certificate
	pool *x509.CertPool
	pair tls.Certificate
	id   uint64
}

// NewCredentials parses and checks a member's credentials: the certificate
// must be signed by the CA and name a member ID.
func NewCredentials(caCertPEM, certPEM, keyPEM []byte) (*Credentials, error) {
	ca, err := parseCert(caCertPEM)
	if err != nil {
		return nil, fmt.Errorf("CA certificate: %w", err)
	}
	pair, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, fmt.Errorf("member certificate and key: %w: %w", errkind.Invalid, err)
	}
	leaf := pair.Leaf
	if leaf == nil {
		if leaf, err = x509.ParseCertificate(pair.Certificate[0]); err != nil {
			return nil, fmt.Errorf("member certificate: %w: %w", errkind.Invalid, err)
		}
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca)
	if _, err := leaf.Verify(x509.VerifyOptions{Roots: pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		return nil, fmt.Errorf("member certificate is not signed by the cluster CA: %w: %w", errkind.Invalid, err)
	}
	id, err := MemberID(leaf)
	if err != nil {
		return nil, err
	}
	return &Credentials{CACertPEM: caCertPEM, CertPEM: certPEM, KeyPEM: keyPEM, ca: ca, pool: pool, pair: pair, id: id}, nil
}

// MemberID is the Raft ID the member certificate names.
func (c *Credentials) MemberID() uint64 { return c.id }

// CAFingerprint is the SHA-256 of the CA certificate, lowercase hex.
func (c *Credentials) CAFingerprint() string { return Fingerprint(c.ca) }

// ServerTLS is the configuration of the peer listener: TLS 1.3 only, and a
// client certificate signed by the cluster CA is required.
func (c *Credentials) ServerTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.pair},
		ClientAuth:   tls.RequireAndVerifyClientCert,
		ClientCAs:    c.pool,
	}
}

// ClientTLS is the configuration for dialling another member: TLS 1.3 only,
// the server's certificate must be signed by the cluster CA and match the
// dialled address, and this member's certificate is presented.
func (c *Credentials) ClientTLS() *tls.Config {
	return &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{c.pair},
		RootCAs:      c.pool,
	}
}

// LoadCA reads the CA from dir. NotFound if it has none.
func LoadCA(dir string) (*CA, error) {
	certPEM, err := readFile(dir, CACertFile)
	if err != nil {
		return nil, err
	}
	keyPEM, err := readFile(dir, CAKeyFile)
	if err != nil {
		return nil, err
	}
	return ParseCA(certPEM, keyPEM)
}

// SaveCA writes the CA into dir (key 0600, certificate 0644).
func SaveCA(dir string, ca *CA) error {
	if err := WriteFileAtomic(filepath.Join(dir, CAKeyFile), ca.KeyPEM, 0o600); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, CACertFile), ca.CertPEM, 0o644)
}

// LoadCredentials reads a member's credentials from dir. NotFound if the
// member certificate is absent.
func LoadCredentials(dir string) (*Credentials, error) {
	var pems [3][]byte
	for i, name := range []string{CACertFile, MemberCertFile, MemberKeyFile} {
		b, err := readFile(dir, name)
		if err != nil {
			return nil, err
		}
		pems[i] = b
	}
	c, err := NewCredentials(pems[0], pems[1], pems[2])
	if err != nil {
		return nil, fmt.Errorf("credentials in %s: %w", dir, err)
	}
	return c, nil
}

// SaveCredentials writes a member's credentials into dir (keys 0600). The CA
// certificate is written last, so a directory with a CA certificate but no
// member certificate never looks complete to LoadCredentials.
func SaveCredentials(dir string, c *Credentials) error {
	if err := WriteFileAtomic(filepath.Join(dir, MemberKeyFile), c.KeyPEM, 0o600); err != nil {
		return err
	}
	if err := WriteFileAtomic(filepath.Join(dir, MemberCertFile), c.CertPEM, 0o644); err != nil {
		return err
	}
	return WriteFileAtomic(filepath.Join(dir, CACertFile), c.CACertPEM, 0o644)
}

// WriteFileAtomic writes data to path through a temporary file that is
// fsynced and renamed, then fsyncs the directory, so that after a crash the
// file holds either the old or the new content.
func WriteFileAtomic(path string, data []byte, mode fs.FileMode) (err error) {
	dir := filepath.Dir(path)
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	f, err := os.CreateTemp(dir, "."+filepath.Base(path)+".tmp*")
	if err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if err := f.Chmod(mode); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if _, err := f.Write(data); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Sync(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("write %s: %w", path, err)
	}
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("write %s: sync dir: %w", path, err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("write %s: sync dir: %w", path, err)
	}
	return nil
}

func readFile(dir, name string) ([]byte, error) {
	b, err := os.ReadFile(filepath.Join(dir, name))
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("%s: %w", filepath.Join(dir, name), errkind.NotFound)
	}
	if err != nil {
		return nil, fmt.Errorf("read %s: %w", filepath.Join(dir, name), err)
	}
	return b, nil
}

func parseCert(certPEM []byte) (*x509.Certificate, error) {
	b, _ := pem.Decode(certPEM)
	if b == nil || b.Type != "CERTIFICATE" {
		return nil, fmt.Errorf("no PEM certificate: %w", errkind.Invalid)
	}
	c, err := x509.ParseCertificate(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errkind.Invalid, err)
	}
	return c, nil
}

func parseKey(keyPEM []byte) (*ecdsa.PrivateKey, error) {
	b, _ := pem.Decode(keyPEM)
	if b == nil {
		return nil, fmt.Errorf("no PEM key: %w", errkind.Invalid)
	}
	k, err := x509.ParseECPrivateKey(b.Bytes)
	if err != nil {
		return nil, fmt.Errorf("%w: %w", errkind.Invalid, err)
	}
	return k, nil
}

func pemBlock(typ string, der []byte) []byte {
	var buf bytes.Buffer
	_ = pem.Encode(&buf, &pem.Block{Type: typ, Bytes: der})
	return buf.Bytes()
}

func newSerial() (*big.Int, error) {
	s, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		return nil, fmt.Errorf("certificate serial: %w", err)
	}
	return s.Add(s, big.NewInt(1)), nil
}
