module zlayer.dev/services/proxy

go 1.26.0

require (
	github.com/caddyserver/certmagic v0.25.6
	github.com/mholt/acmez/v3 v3.1.7
	github.com/prometheus/client_golang v1.25.0
	go.uber.org/zap v1.28.0
	golang.org/x/net v0.60.0
	golang.org/x/sync v0.25.0
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
	github.com/caddyserver/zerossl v0.1.6 // indirect
	github.com/cespare/xxhash/v2 v2.3.0 // indirect
	github.com/klauspost/cpuid/v2 v2.4.0 // indirect
	github.com/kylelemons/godebug v1.1.0 // indirect
	github.com/libdns/libdns v1.1.1 // indirect
	github.com/miekg/dns v1.1.73 // indirect
	github.com/munnerz/goautoneg v0.0.0-20191010083416-a7dc8b61c822 // indirect
	github.com/prometheus/client_model v0.6.3 // indirect
	github.com/prometheus/common v0.72.0 // indirect
	github.com/prometheus/procfs v0.22.0 // indirect
	github.com/zeebo/blake3 v0.2.4 // indirect
	go.uber.org/multierr v1.11.0 // indirect
	go.uber.org/zap/exp v0.3.0 // indirect
	golang.org/x/crypto v0.57.0 // indirect
	golang.org/x/sys v0.48.0
	golang.org/x/text v0.42.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	gopkg.in/yaml.v3 v3.0.1 // indirect
	zlayer.dev/libs/runs v0.0.0
)

replace (
	zlayer.dev/libs/api => ../../libs/api
	zlayer.dev/libs/daemon => ../../libs/daemon
	zlayer.dev/libs/errkind => ../../libs/errkind
	zlayer.dev/libs/obs => ../../libs/obs
	zlayer.dev/libs/rpc => ../../libs/rpc
)

replace zlayer.dev/libs/runs => ../../libs/runs
