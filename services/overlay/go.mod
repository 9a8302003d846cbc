module zlayer.dev/services/overlay

go 1.26.0

require (
	go.uber.org/zap v1.28.0
	golang.zx2c4.com/wireguard v0.0.0-20260522210424-ecfc5a8d5446
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
	zlayer.dev/libs/api v0.0.0
	zlayer.dev/libs/daemon v0.0.0
	zlayer.dev/libs/errkind v0.0.0
)

require (
	github.com/beorn7/perks v1.0.1 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/client_golang v1.25.0 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	golang.org/x/crypto v0.57.0 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sync v0.25.0 // indirect
	golang.org/x/sys v0.48.0 // indirect
	golang.org/x/text v0.42.0 // indirect
	golang.zx2c4.com/wintun v0.0.0-20230126152724-0fa3db229ce2 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
	zlayer.dev/libs/obs v0.0.0 // indirect
	zlayer.dev/libs/rpc v0.0.0 // indirect
)

replace (
	zlayer.dev/libs/api => ../../libs/api
	zlayer.dev/libs/daemon => ../../libs/daemon
	zlayer.dev/libs/errkind => ../../libs/errkind
	zlayer.dev/libs/obs => ../../libs/obs
	zlayer.dev/libs/rpc => ../../libs/rpc
)
