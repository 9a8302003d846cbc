package app

import (
	"crypto/x509"
	"errors"
	"flag"
	"fmt"
	"net"
	"os"
	"runtime"
	"time"

	"zlayer.dev/services/proxy/internal/balance"
)

// config is zlayer-proxy's own configuration; the node-wide settings come
// from libs/daemon.
type config struct {
	HTTPAddr          string
	HTTPSAddr         string
	L4Host            string
	ACMECA            string
	ACMEEmail         string
	ACMECARoot        string
	TLSCertDir        string
	AccessLog         bool
	LB                string
	EjectTime         time.Duration
	ConnectTimeout    time.Duration
	RequestTimeout    time.Duration
	ReadHeaderTimeout time.Duration
	IdleTimeout       time.Duration
	BackendIdleConns  int
	UDPFlowTimeout    time.Duration
	TrustForwarded    bool
	JobOutputLimit    int64
	ShutdownTimeout   time.Duration
	EventLoops        int
}

func (c *config) register(fs *flag.FlagSet) {
	fs.StringVar(&c.HTTPAddr, "http-addr", ":80", "HTTP listener (HTTP/1.1 and h2c)")
	fs.StringVar(&c.HTTPSAddr, "https-addr", ":443", "HTTPS listener (HTTP/1.1 and HTTP/2 by ALPN)")
	fs.StringVar(&c.L4Host, "l4-host", "", "address the public tcp/udp ports listen on (empty = every address)")
	fs.StringVar(&c.ACMECA, "acme-ca", "", "ACME directory URL for public https hosts (empty = no ACME; self-signed or static certificates only)")
	fs.StringVar(&c.ACMEEmail, "acme-email", "", "ACME account contact address")
	fs.StringVar(&c.ACMECARoot, "acme-ca-root", "", "PEM file of the roots to trust for the ACME server (e.g. pebble's); empty = system roots")
	fs.StringVar(&c.TLSCertDir, "tls-cert-dir", "", "directory of static certificates: NAME.crt with NAME.key, each serving the names it carries")
	fs.BoolVar(&c.AccessLog, "access-log", true, "log every request (structured, logger \"proxy.access\")")
	fs.StringVar(&c.LB, "lb", "round_robin", "load balancing: round_robin or least_outstanding")
	fs.DurationVar(&c.EjectTime, "eject-time", 10*time.Second, "how long a replica that refused or reset a connection gets no new traffic")
	fs.DurationVar(&c.ConnectTimeout, "connect-timeout", 5*time.Second, "timeout to connect to a replica")
	fs.DurationVar(&c.RequestTimeout, "request-timeout", 60*time.Second, "timeout for a replica's response headers (then 504)")
	fs.DurationVar(&c.ReadHeaderTimeout, "read-header-timeout", 10*time.Second, "timeout to read a client's request headers")
	fs.DurationVar(&c.IdleTimeout, "idle-timeout", 120*time.Second, "close client keep-alive connections idle this long")
	fs.IntVar(&c.BackendIdleConns, "backend-idle-conns", 256, "idle connections kept per replica")
	fs.DurationVar(&c.UDPFlowTimeout, "udp-flow-timeout", 60*time.Second, "end a UDP flow idle this long")
	fs.BoolVar(&c.TrustForwarded, "trust-forwarded", false, "append to clients' X-Forwarded-For/Forwarded instead of replacing them")
	fs.Int64Var(&c.JobOutputLimit, "job-output-limit", 8<<20, "bytes of a job run's output returned to the client")
	fs.DurationVar(&c.ShutdownTimeout, "shutdown-timeout", 15*time.Second, "how long in-flight requests may finish at shutdown")
	fs.IntVar(&c.EventLoops, "event-loops", runtime.GOMAXPROCS(0), "event loops serving HTTP/1.1 on both listeners (0 = a goroutine per connection)")
}

// validate names every bad setting.
func (c *config) validate() error {
	var errs []error
	for name, addr := range map[string]string{"http-addr": c.HTTPAddr, "https-addr": c.HTTPSAddr} {
		if _, _, err := net.SplitHostPort(addr); err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", name, err))
		}
	}
	if _, err := balance.ParsePolicy(c.LB); err != nil {
		errs = append(errs, fmt.Errorf("lb: %w", err))
	}
	for name, d := range map[string]time.Duration{
		"eject-time": c.EjectTime, "connect-timeout": c.ConnectTimeout, "request-timeout": c.RequestTimeout,
		"read-header-timeout": c.ReadHeaderTimeout, "idle-timeout": c.IdleTimeout, "udp-flow-timeout": c.UDPFlowTimeout,
		"shutdown-timeout": c.ShutdownTimeout,
	} {
		if d <= 0 {
			errs = append(errs, fmt.Errorf("%s: must be positive", name))
		}
	}
	if c.EventLoops < 0 {
		errs = append(errs, errors.New("event-loops: must not be negative"))
	}
	if c.BackendIdleConns < 0 {
		errs = append(errs, errors.New("backend-idle-conns: must not be negative"))
	}
	if c.JobOutputLimit <= 0 {
		errs = append(errs, errors.New("job-output-limit: must be positive"))
	}
	if c.ACMECARoot != "" && c.ACMECA == "" {
		errs = append(errs, errors.New("acme-ca-root: needs --acme-ca"))
	}
	return errors.Join(errs...)
}

// acmeRoots reads --acme-ca-root; nil when unset.
func (c *config) acmeRoots() (*x509.CertPool, error) {
	if c.ACMECARoot == "" {
		return nil, nil
	}
	pem, err := os.ReadFile(c.ACMECARoot)
	if err != nil {
		return nil, fmt.Errorf("acme-ca-root: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("acme-ca-root %s: no PEM certificate", c.ACMECARoot)
	}
	return pool, nil
}
