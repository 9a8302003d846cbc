module zlayer.dev/services/devctl

go 1.26.0

require (
	zlayer.dev/libs/api v0.0.0
	zlayer.dev/libs/errkind v0.0.0
	zlayer.dev/libs/obs v0.0.0
	zlayer.dev/libs/rpc v0.0.0
	zlayer.dev/libs/testkit v0.0.0
)

require (
	github.com/inconshreveable/mousetrap v1.1.0 // indirect
	github.com/spf13/cobra v1.10.2 // indirect
	github.com/spf13/pflag v1.0.9 // indirect
)

replace (
	zlayer.dev/libs/api => ../../libs/api
	zlayer.dev/libs/errkind => ../../libs/errkind
	zlayer.dev/libs/obs => ../../libs/obs
	zlayer.dev/libs/rpc => ../../libs/rpc
	zlayer.dev/libs/testkit => ../../libs/testkit
)
