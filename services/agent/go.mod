module zlayer.dev/services/agent

go 1.26.0

require (
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/containerd/console v1.0.5 // indirect
	go.opentelemetry.io/otel v1.45.0 // indirect
	go.opentelemetry.io/otel/trace v1.45.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto v0.0.0-20261026165753-2ffab32bce7e // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20261019180522-ce908d29299b // indirect
	google.golang.org/protobuf v1.36.12 // indirect
)

require zlayer.dev/libs/errkind v0.0.0

replace zlayer.dev/libs/errkind => ../../libs/errkind

require (
	github.com/containerd/go-runc v1.2.1
	github.com/containernetworking/cni v1.3.1
	github.com/opencontainers/runtime-spec v1.3.0
	golang.org/x/sys v0.50.0
	google.golang.org/grpc v1.85.0
	zlayer.dev/libs/api v0.0.0
)

replace zlayer.dev/libs/api => ../../libs/api
