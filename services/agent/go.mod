module zlayer.dev/services/agent

go 1.26.0

require (
	github.com/containerd/console v1.0.5
	github.com/containerd/go-runc v1.2.1
	github.com/containernetworking/cni v1.3.1
	github.com/opencontainers/runtime-spec v1.3.0
	github.com/prometheus/client_golang v1.25.0
	go.uber.org/zap v1.28.0
	golang.org/x/sys v0.50.0
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
	zlayer.dev/libs/api v0.0.0
	zlayer.dev/libs/daemon v0.0.0
	zlayer.dev/libs/errkind v0.0.0
	zlayer.dev/libs/obs v0.0.0
	zlayer.dev/libs/rpc v0.0.0
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/klauspost/compress v1.20.4 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	go.opentelemetry.io/otel v1.45.0 // indirect
	go.opentelemetry.io/otel/trace v1.45.0 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	golang.org/x/crypto v0.58.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261019180522-ce908d29299b // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
)

replace (
	zlayer.dev/libs/api => ../../libs/api
	zlayer.dev/libs/daemon => ../../libs/daemon
	zlayer.dev/libs/errkind => ../../libs/errkind
	zlayer.dev/libs/obs => ../../libs/obs
	zlayer.dev/libs/rpc => ../../libs/rpc
)

require (
	github.com/vishvananda/netlink v1.3.1
	zlayer.dev/libs/testkit v0.0.0
)

replace zlayer.dev/libs/testkit => ../../libs/testkit
