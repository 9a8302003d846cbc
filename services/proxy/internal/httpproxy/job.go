package httpproxy

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"

	"zlayer.dev/services/proxy/internal/routes"
)

// ExitCodeHeader carries a job run's exit code in the response.
const ExitCodeHeader = "X-Zlayer-Exit-Code"

// TruncatedHeader is "true" when a run's output was longer than the proxy
// returns.
const TruncatedHeader = "X-Zlayer-Output-Truncated"

// JobRunner starts runs of job (and cron) services. zlayer-agent implements
// it on the node; the proxy only needs to start a run, read its output and
// learn its exit code.
type JobRunner interface {
	// RunJob starts one run of the service with input as its standard
	// input. Cancelling ctx (the client went away) stops the run.
	RunJob(ctx context.Context, req JobRequest) (JobRun, error)
}

// JobRequest says which service to run and what to feed it.
type JobRequest struct {
	Deployment, Service, Endpoint string
	Input                         io.Reader
}

// JobRun is a started run.
type JobRun struct {
	// Output is the run's standard output and error, interleaved, until
	// the run ends. The proxy reads it to EOF, then calls Wait.
	Output io.ReadCloser
	// Wait returns the run's exit code, or an error when the run could not
	// be completed (the code is then unknown).
	Wait func() (int, error)
}

// serveJob starts a run and answers with its output and exit code: 200 on
// exit 0, 500 otherwise, the code in ExitCodeHeader. The status depends on
// the end of the run, so the output is collected first, up to the limit.
func (p *Proxy) serveJob(w http.ResponseWriter, r *http.Request, e *routes.Entry) {
	what := fmt.Sprintf("%s %q of deployment %q", e.Kind, e.Service, e.Deployment)
	if p.cfg.Jobs == nil {
		http.Error(w, "zlayer-proxy: "+what+": no job runner on this node", http.StatusServiceUnavailable)
		return
	}
	run, err := p.cfg.Jobs.RunJob(r.Context(), JobRequest{Deployment: e.Deployment, Service: e.Service, Endpoint: e.Endpoint, Input: r.Body})
	if err != nil {
		http.Error(w, fmt.Sprintf("zlayer-proxy: %s: start run: %v", what, err), http.StatusServiceUnavailable)
		return
	}
	var out bytes.Buffer
	_, readErr := io.Copy(&out, io.LimitReader(run.Output, p.cfg.JobOutputLimit))
	extra, _ := io.Copy(io.Discard, run.Output)
	run.Output.Close()
	code, err := run.Wait()
	if err != nil {
		http.Error(w, fmt.Sprintf("zlayer-proxy: %s: run: %v", what, err), http.StatusBadGateway)
		return
	}
	if readErr != nil {
		http.Error(w, fmt.Sprintf("zlayer-proxy: %s: read output: %v", what, readErr), http.StatusBadGateway)
		return
	}
	h := w.Header()
	h.Set("Content-Type", "text/plain; charset=utf-8")
	h.Set("Content-Length", strconv.Itoa(out.Len()))
	h.Set(ExitCodeHeader, strconv.Itoa(code))
	if extra > 0 {
		h.Set(TruncatedHeader, "true")
	}
	status := http.StatusOK
	if code != 0 {
		status = http.StatusInternalServerError
	}
	w.WriteHeader(status)
	_, _ = w.Write(out.Bytes())
}
