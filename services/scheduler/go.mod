module zlayer.dev/services/scheduler

go 1.26.0

require (
	go.uber.org/goleak v1.3.0
	google.golang.org/grpc v1.85.0
	zlayer.dev/libs/api v0.0.0
	zlayer.dev/libs/daemon v0.0.0
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/coreos/go-semver v0.3.1 // indirect
	github.com/dustin/go-humanize v1.0.1 // indirect
	github.com/golang/protobuf v1.5.4 // indirect
	github.com/grpc-ecosystem/grpc-gateway/v2 v2.29.0 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/client_golang v1.25.0 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	go.etcd.io/bbolt v1.5.0
	go.etcd.io/etcd/api/v3 v3.7.3 // indirect
	go.etcd.io/etcd/client/pkg/v3 v3.7.3
	go.etcd.io/etcd/pkg/v3 v3.7.3 // indirect
	go.etcd.io/etcd/server/v3 v3.7.3
	go.etcd.io/raft/v3 v3.7.0
	go.uber.org/multierr v1.11.0 // indirect
	go.uber.org/zap v1.28.0
	golang.org/x/net v0.61.0 // indirect
	golang.org/x/sync v0.25.0
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/api v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1
	google.golang.org/protobuf v1.36.12
	gopkg.in/yaml.v3 v3.0.1 // indirect
	zlayer.dev/libs/errkind v0.0.0
	zlayer.dev/libs/obs v0.0.0
	zlayer.dev/libs/rpc v0.0.0
	zlayer.dev/libs/runs v0.0.0
	zlayer.dev/libs/spec v0.0.0
)

replace (
	zlayer.dev/libs/api => ../../libs/api
	zlayer.dev/libs/daemon => ../../libs/daemon
	zlayer.dev/libs/errkind => ../../libs/errkind
	zlayer.dev/libs/obs => ../../libs/obs
	zlayer.dev/libs/rpc => ../../libs/rpc
)

replace zlayer.dev/libs/spec => ../../libs/spec

replace zlayer.dev/libs/runs => ../../libs/runs
