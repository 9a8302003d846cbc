package spec

import "slices"

// enum is implemented by every string enumeration of the format. The
// decoder, the validator and the JSON Schema generator all read the allowed
// values from Values, so a new value is added in one place.
type enum interface {
	Values() []string
}

// Version is the format version of a deployment file.
type Version string

// The supported format versions.
const (
	V1 Version = "v1"
)

// Values lists the supported versions.
func (Version) Values() []string { return []string{string(V1)} }

// RType is what kind of workload a service is.
type RType string

// The workload kinds.
const (
	RTypeService RType = "service" // long-running and load-balanced
	RTypeJob     RType = "job"     // runs to completion on a trigger
	RTypeCron    RType = "cron"    // runs to completion on a schedule
)

// Values lists the workload kinds.
func (RType) Values() []string { return []string{"service", "job", "cron"} }

// PullPolicy says when a node pulls the image.
type PullPolicy string

// The pull policies.
const (
	PullAlways       PullPolicy = "always"
	PullIfNotPresent PullPolicy = "if_not_present"
	PullNever        PullPolicy = "never"
)

// Values lists the pull policies.
func (PullPolicy) Values() []string { return []string{"always", "if_not_present", "never"} }

// Protocol is an endpoint's protocol.
type Protocol string

// The endpoint protocols.
const (
	ProtocolHTTP      Protocol = "http"
	ProtocolHTTPS     Protocol = "https"
	ProtocolTCP       Protocol = "tcp"
	ProtocolUDP       Protocol = "udp"
	ProtocolWebSocket Protocol = "websocket"
)

// Values lists the endpoint protocols.
func (Protocol) Values() []string { return []string{"http", "https", "tcp", "udp", "websocket"} }

// IsHTTP reports whether the proxy routes p by host and path (http, https
// and websocket).
func (p Protocol) IsHTTP() bool {
	return p == ProtocolHTTP || p == ProtocolHTTPS || p == ProtocolWebSocket
}

// Expose says where an endpoint is served.
type Expose string

// The exposure levels.
const (
	ExposePublic   Expose = "public"   // served by the proxy on every node
	ExposeInternal Expose = "internal" // only on the overlays
)

// Values lists the exposure levels.
func (Expose) Values() []string { return []string{"public", "internal"} }

// ScaleMode is how the number of replicas is chosen.
type ScaleMode string

// The scaling modes.
const (
	ScaleAdaptive ScaleMode = "adaptive" // follow load between min and max
	ScaleFixed    ScaleMode = "fixed"    // exactly replicas
	ScaleManual   ScaleMode = "manual"   // replicas at first, then zlctl scale
)

// Values lists the scaling modes.
func (ScaleMode) Values() []string { return []string{"adaptive", "fixed", "manual"} }

// Condition is what a dependency must reach before the dependent starts.
type Condition string

// The dependency conditions.
const (
	ConditionStarted Condition = "started" // the process exists
	ConditionHealthy Condition = "healthy" // its health check passes
	ConditionReady   Condition = "ready"   // the proxy routes to it
)

// Values lists the dependency conditions.
func (Condition) Values() []string { return []string{"started", "healthy", "ready"} }

// FailureMode is what happens when a dependency times out or an init step
// fails.
type FailureMode string

// The failure modes.
const (
	FailureFail     FailureMode = "fail"     // the replica fails
	FailureWarn     FailureMode = "warn"     // log a warning and go on
	FailureContinue FailureMode = "continue" // go on silently
)

// Values lists the failure modes.
func (FailureMode) Values() []string { return []string{"fail", "warn", "continue"} }

// CheckType is the kind of health check.
type CheckType string

// The health check kinds.
const (
	CheckTCP     CheckType = "tcp"
	CheckHTTP    CheckType = "http"
	CheckCommand CheckType = "command"
)

// Values lists the health check kinds.
func (CheckType) Values() []string { return []string{"tcp", "http", "command"} }

// Action is an init step's action.
type Action string

// The init actions.
const (
	ActionWaitTCP  Action = "init.wait_tcp"  // wait until host:port accepts a connection
	ActionWaitHTTP Action = "init.wait_http" // wait until url answers expect_status
	ActionRun      Action = "init.run"       // run command inside the container's filesystem
)

// Values lists the init actions.
func (Action) Values() []string { return []string{"init.wait_tcp", "init.wait_http", "init.run"} }

// InitFailureAction is what happens when a replica's init steps fail.
type InitFailureAction string

// The init failure actions.
const (
	InitFail    InitFailureAction = "fail"    // mark the replica failed and stop
	InitRestart InitFailureAction = "restart" // try again at once
	InitBackoff InitFailureAction = "backoff" // try again after 1s, 2s, 4s … capped at 5m
)

// Values lists the init failure actions.
func (InitFailureAction) Values() []string { return []string{"fail", "restart", "backoff"} }

// PanicAction is what happens when a replica's process dies unexpectedly or
// is OOM-killed.
type PanicAction string

// The panic actions.
const (
	PanicRestart  PanicAction = "restart"  // restart it in place
	PanicShutdown PanicAction = "shutdown" // leave it stopped
	PanicIsolate  PanicAction = "isolate"  // keep it for inspection, start a replacement
)

// Values lists the panic actions.
func (PanicAction) Values() []string { return []string{"restart", "shutdown", "isolate"} }

// JoinMode is who may enrol a node for a service.
type JoinMode string

// The join modes.
const (
	JoinOpen   JoinMode = "open"   // any trusted node may enrol itself
	JoinToken  JoinMode = "token"  // a node needs a join token <key>:<service>
	JoinClosed JoinMode = "closed" // only the scheduler places replicas
)

// Values lists the join modes.
func (JoinMode) Values() []string { return []string{"open", "token", "closed"} }

// JoinScope is the scope of a join token.
type JoinScope string

// The join scopes.
const (
	ScopeService JoinScope = "service"
	ScopeGlobal  JoinScope = "global"
)

// Values lists the join scopes.
func (JoinScope) Values() []string { return []string{"service", "global"} }

// validEnum reports whether s is one of e's values.
func validEnum(e enum, s string) bool { return slices.Contains(e.Values(), s) }
