// Package obs builds ZLayer's loggers and holds the log field keys shared by
// every daemon, so logs can be searched across components.
package obs

// Log field keys. Use these, not ad-hoc strings, for the things they name.
const (
	KeyNode       = "node"
	KeyComponent  = "component"
	KeyDeployment = "deployment"
	KeyService    = "service"
	KeyReplica    = "replica"
	KeyContainer  = "container"
	KeyImage      = "image"
	KeyDigest     = "digest"
	KeySocket     = "socket"
)
