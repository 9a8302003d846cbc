module zlayer.dev/services/zlctl

go 1.26.0

require (
	zlayer.dev/libs/api v0.0.0
	zlayer.dev/libs/daemon v0.0.0
	zlayer.dev/libs/errkind v0.0.0 // indirect
	zlayer.dev/libs/rpc v0.0.0
	zlayer.dev/libs/spec v0.0.0
)

require gopkg.in/yaml.v3 v3.0.1

require (
	github.com/klauspost/compress v1.20.4 // indirect
	github.com/vishvananda/netlink v1.3.1 // indirect
	github.com/vishvananda/netns v0.0.5 // indirect
	go.uber.org/multierr v1.10.0 // indirect
	go.uber.org/zap v1.28.0 // indirect
	golang.org/x/crypto v0.58.0 // indirect
)

require (
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/spf13/cobra v1.10.2
	github.com/spf13/pflag v1.0.9 // indirect
	golang.org/x/net v0.60.0 // indirect
	golang.org/x/sys v0.49.0 // indirect
	golang.org/x/term v0.47.0
	golang.org/x/text v0.43.0 // indirect
	google.golang.org/genproto/googleapis/rpc v0.0.0-20260817212433-ac3dfec99bb1 // indirect
	google.golang.org/grpc v1.85.0
	google.golang.org/protobuf v1.36.12
	zlayer.dev/libs/runs v0.0.0
	zlayer.dev/libs/testkit v0.0.0
)

replace (
	zlayer.dev/libs/api => ../../libs/api
	zlayer.dev/libs/daemon => ../../libs/daemon
	zlayer.dev/libs/errkind => ../../libs/errkind
	zlayer.dev/libs/obs => ../../libs/obs
	zlayer.dev/libs/rpc => ../../libs/rpc
	zlayer.dev/libs/spec => ../../libs/spec
)

replace zlayer.dev/libs/testkit => ../../libs/testkit

replace zlayer.dev/libs/runs => ../../libs/runs
