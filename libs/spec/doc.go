// Package spec reads, validates and writes ZLayer deployment files (format
// v1, described in SPEC.md): one YAML file naming a deployment and its
// services, jobs and cron jobs.
//
// Parse and Load decode a file strictly (unknown or duplicate keys and
// values of the wrong type are errors), validate it, and fill in every
// default. Problems come back together as Errors, each a FieldError printed
// as FILE:LINE:COL: path.to.field: message, in file order. The types hold
// typed values (Duration, Memory, Percent, Cron, enums) ready for the
// scheduler and the agent; Service.Hash gives the scheduler a canonical hash
// of a service's spec, ResolveEnv gives the agent a service's environment
// with $E: references read from the node, and Cron.Next gives the agent's
// cron runner the next run time.
//
// The struct tags of the types are the single source of truth of the
// format: the decoder, the validator, the defaults and the JSON Schema
// (JSONSchema, checked in as schema/deployment.schema.json) all read them.
//
// The package is pure: it never touches the network or a cluster, never
// reads the process environment itself (ResolveEnv takes a lookup
// function), and does not know what is running; rules that need the state
// of a cluster (is the image pullable, is a public port free on the nodes)
// belong to the scheduler.
package spec
