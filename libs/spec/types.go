package spec

// The struct tags below are the single source of truth of the format. The
// decoder, the validator, the defaults and the JSON Schema all read them:
//
//	yaml:"name"          the key in the file
//	doc:"…"              the description shown by editors
//	default:"…"          the default, in the file's syntax ("{}": an empty object)
//	required:""          always required; required:"mode=fixed": required when mode is fixed
//	when:"a=x,y;b=z"     allowed only when sibling a is x or y and b is z
//	                     (^a: the field a of the enclosing object)
//	alt:"…"              the fix to suggest when the when-condition fails
//	min:"…" max:"…"      inclusive bounds (for maps and lists: the number of entries)
//	gt:"0"               an exclusive lower bound
//	format:"name"        a string syntax: name, image, path, host, urlpath, httpurl
//	keyformat:"name"     the syntax of a map's keys: name or envname
//	alias:"a,b"          keys other tools use for the field, suggested when met
//	eg:"…"               an example value, shown in "required" messages

// Deployment is one deployment file: a named set of services.
//
// Values returned by Parse and Load have every default applied, so optional
// pointers (Scale, Scale.Min, …) are non-nil where SPEC.md gives a default.
type Deployment struct {
	Version    Version             `yaml:"version" required:"" eg:"v1" doc:"Format version of the file; only v1 exists."`
	Deployment string              `yaml:"deployment" required:"" format:"name" eg:"my-app" doc:"The deployment's name (a DNS label), unique in the cluster."`
	Services   map[string]*Service `yaml:"services" required:"" min:"1" keyformat:"name" doc:"The workloads, by name (each a DNS label)."`

	file string             // the name errors are reported against
	pos  map[string]nodePos // where each path was written; nil when built in code
	bad  map[string]bool    // paths whose values failed to decode
}

// Service is one workload: a long-running service, a job or a cron job.
type Service struct {
	// Name is the service's key in Deployment.Services, filled in by Parse.
	Name string `yaml:"-"`

	RType     RType             `yaml:"rtype" default:"service" alias:"type,kind" doc:"service: long-running and load-balanced; job: runs to completion on a trigger; cron: runs to completion on a schedule."`
	Schedule  Cron              `yaml:"schedule" when:"rtype=cron" required:"rtype=cron" alt:"only rtype: cron takes a schedule" eg:"0 3 * * *" doc:"When a cron job runs: five cron fields, @hourly, @daily, @weekly or @every <duration>."`
	Image     Image             `yaml:"image" required:"" eg:"{name: nginx:latest}" doc:"The container image."`
	Command   []string          `yaml:"command" alias:"entrypoint" doc:"Replaces the image's ENTRYPOINT."`
	Args      []string          `yaml:"args" alias:"cmd,arguments" doc:"Replaces the image's CMD."`
	Resources Resources         `yaml:"resources" alias:"limits,resource" doc:"Upper bounds on CPU and memory; unlimited when absent."`
	Env       map[string]string `yaml:"env" keyformat:"envname" alias:"environment,envs,variables" doc:"Environment variables. A value $E:NAME is read from the node's environment when the container starts."`
	Network   Network           `yaml:"network" alias:"networks,networking" doc:"Overlays and join policy."`
	Endpoints []Endpoint        `yaml:"endpoints" alias:"ports,endpoint,expose" doc:"Where traffic is bound."`
	Scale     *Scale            `yaml:"scale" when:"rtype=service" default:"{}" alt:"a job or cron job runs once per trigger; remove scale" alias:"scaling,autoscale,autoscaling" doc:"How many replicas run (services only)."`
	Depends   []Dependency      `yaml:"depends" alias:"depends_on,dependencies,requires" doc:"Services that must reach a condition before this one starts."`
	Health    *Health           `yaml:"health" alias:"healthcheck,health_check" doc:"Health checking."`
	Init      Init              `yaml:"init" doc:"Pre-start actions."`
	Errors    ErrorPolicy       `yaml:"errors" alias:"restart,on_error" doc:"Failure policies."`
}

// Image is a service's container image.
type Image struct {
	Name       string     `yaml:"name" required:"" format:"image" eg:"nginx:latest" doc:"Any OCI/Docker reference: nginx, nginx:1.27, host:5000/team/app@sha256:…"`
	PullPolicy PullPolicy `yaml:"pull_policy" default:"if_not_present" alias:"pull" doc:"When the node pulls the image."`
}

// Resources are a service's upper bounds. Zero means unlimited.
type Resources struct {
	CPU    float64 `yaml:"cpu" gt:"0" alias:"cpus" doc:"Upper bound in CPUs (0.5 = half a core)."`
	Memory Memory  `yaml:"memory" gt:"0" alias:"mem,memory_limit" doc:"Upper bound on memory, e.g. 512Mi or 1G; exceeding it kills the process."`
}

// Network holds a service's overlays and join policy.
type Network struct {
	Overlays Overlays `yaml:"overlays" alias:"overlay" doc:"The service and global overlay networks."`
	Join     Join     `yaml:"join" doc:"Who may enrol a node for this service."`
}

// Overlays configures the two overlay networks a service is on.
type Overlays struct {
	Service ServiceOverlay `yaml:"service" doc:"The overlay only this service's replicas share."`
	Global  GlobalOverlay  `yaml:"global" doc:"The overlay every service of the deployment shares (<service>.global)."`
}

// ServiceOverlay is the overlay only a service's own replicas share.
type ServiceOverlay struct {
	Enabled   *bool `yaml:"enabled" default:"true" doc:"Whether the overlay exists."`
	Encrypted *bool `yaml:"encrypted" default:"true" doc:"Whether traffic on it is encrypted."`
	Isolated  *bool `yaml:"isolated" default:"true" doc:"When true, nothing else can reach it."`
}

// GlobalOverlay is the overlay every service of a deployment shares.
type GlobalOverlay struct {
	Enabled   *bool `yaml:"enabled" default:"true" doc:"Whether the service is on the global overlay."`
	Encrypted *bool `yaml:"encrypted" default:"true" doc:"Whether traffic on it is encrypted."`
}

// Join is a service's join policy.
type Join struct {
	Mode  JoinMode  `yaml:"mode" default:"token" doc:"open: any trusted node may enrol itself; token: a node needs a join token <key>:<service>; closed: only the scheduler places replicas."`
	Scope JoinScope `yaml:"scope" default:"service" doc:"The scope of join tokens."`
}

// Endpoint is where a service's traffic is bound.
type Endpoint struct {
	Name       string   `yaml:"name" required:"" format:"name" eg:"http" doc:"The endpoint's name, unique in the service."`
	Protocol   Protocol `yaml:"protocol" required:"" eg:"http" alias:"proto" doc:"The endpoint's protocol."`
	Port       int      `yaml:"port" required:"" min:"1" max:"65535" eg:"8080" alias:"container_port,target,target_port" doc:"The port the container listens on, unique per protocol in the service."`
	Path       string   `yaml:"path" when:"protocol=http,https,websocket" default:"/" format:"path" alt:"only http, https and websocket endpoints route by path" alias:"prefix" doc:"Path prefix to route (http, https, websocket)."`
	Host       string   `yaml:"host" when:"protocol=http,https,websocket" format:"host" alt:"only http, https and websocket endpoints route by host" alias:"hostname,domain" doc:"Virtual host to route (http, https, websocket); any host when absent."`
	Expose     Expose   `yaml:"expose" default:"internal" alias:"visibility" doc:"public: served by the proxy on every node; internal: only on the overlays."`
	PublicPort int      `yaml:"public_port" when:"protocol=tcp,udp;expose=public" min:"1" max:"65535" alt:"http, https and websocket share the proxy's listeners; public_port is for public tcp and udp endpoints|only a public endpoint has a public port; set expose: public" alias:"published,host_port" doc:"The proxy's listening port for a public tcp/udp endpoint; defaults to port."`
}

// Scale says how many replicas of a service run.
type Scale struct {
	Mode     ScaleMode `yaml:"mode" default:"adaptive" doc:"adaptive: follow load between min and max; fixed: exactly replicas; manual: replicas at first, then changed by zlctl scale."`
	Min      *int      `yaml:"min" when:"mode=adaptive" default:"1" min:"0" alt:"use replicas" alias:"minimum,min_replicas" doc:"Fewest replicas (adaptive)."`
	Max      *int      `yaml:"max" when:"mode=adaptive" default:"10" min:"0" alt:"use replicas" alias:"maximum,max_replicas" doc:"Most replicas, at least min (adaptive)."`
	Cooldown Duration  `yaml:"cooldown" when:"mode=adaptive" default:"30s" alt:"only adaptive scaling has a cooldown" doc:"Least time between two scaling decisions (adaptive)."`
	Targets  *Targets  `yaml:"targets" when:"mode=adaptive" default:"{}" alt:"only adaptive scaling follows targets" alias:"target,metrics" doc:"The load each replica should carry (adaptive); cpu: 70% when none is given."`
	Replicas *int      `yaml:"replicas" when:"mode=fixed,manual" required:"mode=fixed" default:"1" min:"0" alt:"use min/max" eg:"3" alias:"count,instances" doc:"The number of replicas (fixed), or the initial number (manual)."`
}

// Targets are the adaptive scaler's targets per replica.
type Targets struct {
	CPU    Percent `yaml:"cpu" gt:"0" doc:"Percent of the CPU limit, or of one core without a limit."`
	Memory Percent `yaml:"memory" gt:"0" max:"100" alias:"mem" doc:"Percent of the memory limit; needs resources.memory."`
	RPS    float64 `yaml:"rps" gt:"0" alias:"requests,qps" doc:"Requests per second per replica, through the proxy."`
}

// Dependency is a service that must reach a condition before the dependent
// service starts.
type Dependency struct {
	Service   string      `yaml:"service" required:"" format:"name" eg:"db" alias:"name" doc:"A service of this deployment."`
	Condition Condition   `yaml:"condition" default:"healthy" doc:"started: the process exists; healthy: its health check passes; ready: the proxy routes to it."`
	Timeout   Duration    `yaml:"timeout" default:"5m" gt:"0" doc:"How long to wait."`
	OnTimeout FailureMode `yaml:"on_timeout" default:"fail" doc:"What to do when the wait times out."`
}

// Health configures a service's health checking.
type Health struct {
	StartGrace Duration `yaml:"start_grace" default:"5s" alias:"grace,start_period,initial_delay" doc:"Failures inside it do not count."`
	Interval   Duration `yaml:"interval" default:"10s" gt:"0" alias:"period" doc:"Time between two checks."`
	Timeout    Duration `yaml:"timeout" default:"5s" gt:"0" doc:"How long one check may take."`
	Retries    int      `yaml:"retries" default:"3" min:"1" alias:"failure_threshold" doc:"Consecutive failures before the replica is unhealthy."`
	Check      Check    `yaml:"check" required:"" eg:"{type: http, url: /health}" doc:"What is checked."`
}

// Check is what a health check probes.
type Check struct {
	Type         CheckType `yaml:"type" required:"" eg:"http" doc:"tcp: connect to port; http: GET url; command: run command, exit 0 is healthy."`
	Port         int       `yaml:"port" when:"type=tcp,http" min:"1" max:"65535" alt:"only tcp and http checks use a port" doc:"The port to probe; defaults to the first endpoint of a matching protocol."`
	URL          string    `yaml:"url" when:"type=http" required:"type=http" format:"urlpath" alt:"only http checks use a url" eg:"/health" alias:"path" doc:"A path (/health) or an http:// URL."`
	ExpectStatus int       `yaml:"expect_status" when:"type=http" default:"200" min:"100" max:"599" alt:"only http checks expect a status" alias:"status,expected_status" doc:"The status a healthy replica answers."`
	Command      Command   `yaml:"command" when:"type=command" required:"type=command" alt:"only command checks run a command" eg:"pg_isready" alias:"cmd,exec" doc:"A string run with /bin/sh -c, or a list of arguments."`
}

// Init holds a service's pre-start steps.
type Init struct {
	Steps []Step `yaml:"steps" doc:"Run in order after the image is pulled and before the container's own process starts."`
}

// Step is one pre-start action.
type Step struct {
	ID        string      `yaml:"id" required:"" format:"name" eg:"wait-db" alias:"name" doc:"The step's id, unique in the service."`
	Uses      Action      `yaml:"uses" required:"" eg:"init.wait_tcp" alias:"action,run,type" doc:"The action to run."`
	With      StepInputs  `yaml:"with" required:"" alias:"inputs,args,params" doc:"The action's inputs."`
	Retry     int         `yaml:"retry" default:"0" min:"0" alias:"retries" doc:"How many times a failed attempt is retried."`
	Timeout   Duration    `yaml:"timeout" default:"30s" gt:"0" doc:"Time allowed per attempt."`
	OnFailure FailureMode `yaml:"on_failure" default:"fail" doc:"What to do when the step fails."`
}

// StepInputs are an init step's inputs; which ones are taken depends on the
// step's action.
type StepInputs struct {
	Host         string  `yaml:"host" when:"^uses=init.wait_tcp" required:"^uses=init.wait_tcp" format:"host" eg:"db.global" doc:"init.wait_tcp: the host to connect to."`
	Port         int     `yaml:"port" when:"^uses=init.wait_tcp" required:"^uses=init.wait_tcp" min:"1" max:"65535" eg:"5432" doc:"init.wait_tcp: the port to connect to."`
	URL          string  `yaml:"url" when:"^uses=init.wait_http" required:"^uses=init.wait_http" format:"httpurl" eg:"http://api.global:8080/ready" doc:"init.wait_http: the URL to poll."`
	ExpectStatus int     `yaml:"expect_status" when:"^uses=init.wait_http" default:"200" min:"100" max:"599" doc:"init.wait_http: the status that ends the wait."`
	Command      Command `yaml:"command" when:"^uses=init.run" required:"^uses=init.run" eg:"./migrate up" doc:"init.run: a string run with /bin/sh -c, or a list of arguments."`
}

// ErrorPolicy holds a service's failure policies.
type ErrorPolicy struct {
	OnInitFailure InitFailurePolicy `yaml:"on_init_failure" doc:"What happens when init steps fail."`
	OnPanic       PanicPolicy       `yaml:"on_panic" doc:"What happens when the process dies unexpectedly or is OOM-killed."`
}

// InitFailurePolicy is what happens when a replica's init steps fail.
type InitFailurePolicy struct {
	Action InitFailureAction `yaml:"action" default:"fail" doc:"fail: mark the replica failed; restart: try again at once; backoff: try again after 1s, 2s, 4s … capped at 5m."`
}

// PanicPolicy is what happens when a replica's process dies unexpectedly.
type PanicPolicy struct {
	Action PanicAction `yaml:"action" default:"restart" doc:"restart: restart in place; shutdown: leave it stopped; isolate: keep it for inspection and start a replacement."`
}
