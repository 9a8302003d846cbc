package httpproxy

import (
	"bufio"
	"bytes"
	"net/http"
	"strings"
	"testing"
)

func TestParseRequestHead(t *testing.T) {
	tests := []struct {
		name, head string
		fast       bool
		close      bool
	}{
		{"plain GET", "GET /a?b=c HTTP/1.1\r\nHost: x.test\r\nAccept: */*\r\n\r\n", true, false},
		{"HEAD", "HEAD / HTTP/1.1\r\nHost: x\r\n\r\n", true, false},
		{"close", "GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", true, true},
		{"keep-alive token", "GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive\r\n\r\n", true, false},
		{"empty body length", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n", true, false},
		{"POST", "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\n", false, false},
		{"GET with a body", "GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n", false, false},
		{"chunked", "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n", false, false},
		{"HTTP/1.0", "GET / HTTP/1.0\r\nHost: x\r\n\r\n", false, false},
		{"h2c preface", "PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n", false, false},
		{"absolute form", "GET http://x/ HTTP/1.1\r\nHost: x\r\n\r\n", false, false},
		{"escapes", "GET /a%2Fb HTTP/1.1\r\nHost: x\r\n\r\n", false, false},
		{"no host", "GET / HTTP/1.1\r\nAccept: */*\r\n\r\n", false, false},
		{"two hosts", "GET / HTTP/1.1\r\nHost: x\r\nHost: y\r\n\r\n", false, false},
		{"space before colon", "GET / HTTP/1.1\r\nHost : x\r\n\r\n", false, false},
		{"upgrade", "GET / HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n", false, false},
		{"named hop-by-hop", "GET / HTTP/1.1\r\nHost: x\r\nConnection: X-Secret\r\nX-Secret: 1\r\n\r\n", false, false},
		{"expect", "GET / HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n\r\n", false, false},
		{"bare LF", "GET / HTTP/1.1\nHost: x\n\n", false, false},
		{"bare CR in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\rb\r\n\r\n", false, false},
		{"NUL in a value", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x00b\r\n\r\n", false, false},
		{"folded line", "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\r\n b\r\n\r\n", false, false},
		{"lower-case names", "GET / HTTP/1.1\r\nhost: x\r\nconnection: CLOSE\r\n\r\n", true, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var r request
			got := r.parse([]byte(tt.head))
			if got != tt.fast || got && r.close != tt.close {
				t.Errorf("parse = %v (close %v), want %v (close %v)", got, r.close, tt.fast, tt.close)
			}
		})
	}
}

// FuzzParseRequestHead: whatever the fast path takes, net/http reads as
// the same request (method, target, host, connection), so the fast path
// never forwards a head net/http would refuse or read differently.
func FuzzParseRequestHead(f *testing.F) {
	f.Add("GET /a?b HTTP/1.1\r\nHost: x.test\r\nX-Forwarded-For: 1.2.3.4\r\n\r\n")
	f.Add("HEAD / HTTP/1.1\r\nHost: x\r\nConnection: close\r\nContent-Length: 0\r\n\r\n")
	f.Add("GET / HTTP/1.1\r\nHost: x\r\nConnection: keep-alive, close\r\nForwarded: for=1.2.3.4\r\n\r\n")
	f.Fuzz(func(t *testing.T, head string) {
		var r request
		if !r.parse([]byte(head)) {
			return
		}
		req, err := http.ReadRequest(bufio.NewReader(strings.NewReader(head)))
		if err != nil {
			t.Fatalf("fast path took %q, net/http refuses it: %v", head, err)
		}
		if req.Method != string(r.method) || req.RequestURI != string(r.target) || req.Host != string(r.host) {
			t.Fatalf("fast path read %q %q host %q, net/http %q %q host %q", r.method, r.target, r.host, req.Method, req.RequestURI, req.Host)
		}
		if req.Close != r.close {
			t.Fatalf("close: fast path %v, net/http %v", r.close, req.Close)
		}
		if !bytes.Equal(r.path, []byte(req.URL.Path)) {
			t.Fatalf("path: fast path %q, net/http %q", r.path, req.URL.Path)
		}
	})
}

// FuzzParseResponseHead: whatever head from a replica the fast path passes
// on, net/http reads with the same status and framing, so the proxy and
// the client find the answer's end at the same place.
func FuzzParseResponseHead(f *testing.F) {
	f.Add("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\n")
	f.Add("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nTrailer: X\r\n\r\n")
	f.Add("HTTP/1.0 404 Not Found\r\nConnection: keep-alive, X-Hop\r\nX-Hop: 1\r\n\r\n")
	f.Add("HTTP/1.1 204\r\n\r\n")
	f.Fuzz(func(t *testing.T, head string) {
		var resp response
		if err := resp.read(bufio.NewReader(strings.NewReader(head))); err != nil || resp.status < 200 {
			return
		}
		// What the client gets: the status line as the fast path writes
		// it, then the header lines it passes on.
		var b bytes.Buffer
		b.WriteString("HTTP/1.1 ")
		b.Write(resp.statusText)
		if len(resp.statusText) == 3 {
			b.WriteByte(' ')
		}
		b.WriteString("\r\n")
		for _, l := range resp.lines {
			b.Write(resp.head[l[0]:l[1]])
		}
		b.WriteString("\r\n")
		got, err := http.ReadResponse(bufio.NewReader(&b), &http.Request{Method: http.MethodGet})
		if err != nil {
			t.Fatalf("the fast path passes on %q, net/http refuses %q: %v", head, b.String(), err)
		}
		if got.StatusCode != resp.status {
			t.Fatalf("status: fast path %d, net/http %d", resp.status, got.StatusCode)
		}
		chunked := len(got.TransferEncoding) > 0 && got.TransferEncoding[0] == "chunked"
		if chunked != resp.chunked {
			t.Fatalf("chunked: fast path %v, net/http %v (%q)", resp.chunked, chunked, b.String())
		}
		bodiless := resp.status == http.StatusNoContent || resp.status == http.StatusNotModified
		if !resp.chunked && !bodiless && resp.length >= 0 && got.ContentLength != resp.length {
			t.Fatalf("length: fast path %d, net/http %d (%q)", resp.length, got.ContentLength, b.String())
		}
	})
}
